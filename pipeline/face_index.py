"""The face index: every face that recognition jobs found, searchable by similarity (LanceDB).

An index lives in the same storage as everything else, under ``indexes/<name>/``: ``index.json`` (its
embedder and the threshold calibration it matches faces with, written once, create-if-absent) and a LanceDB
table ``faces.lance/`` that LanceDB reads and writes itself (local files, or S3 through its own client).
Each row is one face: its unit embedding, photo key, box, landmarks, detector score, whether it is the
photo's subject, the job and chunk that found it, and the embedder's name.

Why LanceDB (bench.vector_stores measures the candidates on the same faces): it is a store, not only an
index. Rows with columns, filters (job, key prefix) applied before the k nearest are taken, deletes,
versions, merge-insert for exactly-once adds, and files that live directly in object storage, so that an
index needs no server and no home-made persistence. faiss and usearch search faster in memory, but would
leave all of that to us.

Exactly once: a row's id is a hash of (job, photo key, face number), and a chunk's faces are added with one
merge-insert on that id (one LanceDB commit), so a chunk delivered twice adds nothing the second time.
Rows added since the ANN index was last built are searched by brute force alongside it (LanceDB does this
itself) until ``optimize`` folds them in; results are right either way, only slower.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from config import load_settings
from pipeline import registry, search_graph
from pipeline.registry import NAME_PATTERN
from pipeline.storage import LocalStorage, MissingKey, S3Storage, Storage

if TYPE_CHECKING:
    import pyarrow as pa

    from pipeline.faces import PhotoFaces

PREFIX = "indexes"
TABLE = "faces"
DIM = 128
# Below this many faces a brute-force scan takes about a millisecond: no ANN index is worth building.
ANN_MIN_FACES = 50_000
# IVF-PQ, tuned at 1,000,000 LFW faces and lookalikes (bench.vector_stores, README): 32 sub-vectors of 4
# dimensions (32 bytes a face), about sqrt(faces) partitions; a search probes PROBE_SHARE of them and
# re-ranks the best REFINE_FACTOR x k by their full vectors. dlib's descriptors fill a narrow cone, so a
# face's nearest neighbours spread over many partitions: 4% of them found 92% of the true top 10, 16% 99%.
SUB_VECTORS = 32
PROBE_SHARE = 0.16
REFINE_FACTOR = 10
# Rebuild the partitions once the faces have grown this much since they were trained: partitions trained on
# few faces become unbalanced as others are added to them.
RETRAIN_GROWTH = 2.0
COLUMNS = ["key", "face", "box", "landmarks", "detector_score", "main", "job", "chunk"]
# A table handle kept open (open_index) looks for other writers' commits at most this often.
REFRESH_S = 2
KEEP_VERSIONS = timedelta(hours=1)
MERGE_TIMEOUT = timedelta(minutes=5)  # one chunk's merge-insert: about 0.1 s at 1,000,000 faces here
S3_REQUEST_TIMEOUT = "120s"  # one request of LanceDB's S3 client (a data file's part, a manifest)
ANN_RECORD_S = 60
INDEXES_KEPT = 8


class IndexNotFound(LookupError):
    """No index of that name exists (nothing was ever added to it)."""


class EmbedderMismatch(ValueError):
    """Faces of one embedder asked to go into (or be searched in) an index of another."""


def check_index_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ValueError(f"invalid index name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return name


def list_indexes(storage: Storage) -> list[str]:
    """The names of the indexes that exist (that have an index.json)."""
    return sorted({key.split("/")[1] for key in storage.list(f"{PREFIX}/") if key.endswith("/index.json")
                   and key.count("/") == 2})


def face_id(job: str, key: str, face: int) -> str:
    """A face's row id: the same (job, photo, face) always gives the same id."""
    return hashlib.blake2b(f"{job}\n{key}\n{face}".encode(), digest_size=16).hexdigest()


@dataclass
class Hit:
    """A face found by a search."""

    key: str
    face: int
    box: list[float]
    landmarks: list[list[float]]
    detector_score: float
    main: bool
    job: str
    similarity: float

    def to_json(self) -> dict:
        return {"key": self.key, "face": self.face, "box": self.box, "landmarks": self.landmarks,
                "detector_score": self.detector_score, "main": self.main, "job": self.job,
                "similarity": round(self.similarity, 4)}


class FaceIndex:
    """One named index in a storage. Opening it costs nothing; the table is opened on first use and kept."""

    def __init__(self, storage: Storage, name: str, cache_dir: Path | None = None) -> None:
        self.storage = storage
        self.name = check_index_name(name)
        self.prefix = f"{PREFIX}/{name}"
        self.cache_dir = cache_dir
        self._graphs: search_graph.GraphCache | None = None
        self._table = None
        self._info: dict | None = None
        self._ann_record: tuple[float, dict] | None = None

    # -- what the index is ------------------------------------------------------------------------
    def info(self) -> dict:
        """index.json: name, embedder, dimension, calibration, who created it; IndexNotFound if none."""
        if self._info is None:
            try:
                self._info = self.storage.get_json(f"{self.prefix}/index.json")
            except MissingKey:
                raise IndexNotFound(f"no face index named {self.name!r}: a recognition job with "
                                    f'"index": "{self.name}" creates it') from None
        return self._info

    def exists(self) -> bool:
        return self.storage.exists(f"{self.prefix}/index.json")

    def ensure(self, embedder: str, calibration: dict | None, created_by: dict) -> dict:
        """The index's record, written now if the index is new (create-if-absent: of two jobs creating the
        same index at once, one record wins and both use it). EmbedderMismatch if it holds another
        embedder's faces: their similarities to this embedder's faces would mean nothing."""
        record = {"name": self.name, "embedder": embedder, "dim": DIM, "calibration": calibration,
                  "created_by": created_by, "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
        self.storage.put_new(f"{self.prefix}/index.json", json.dumps(record, indent=2).encode())
        self._info = None
        self.check_embedder(embedder)
        return self.info()

    def check_embedder(self, embedder: str | None) -> None:
        held = self.info()["embedder"]
        if embedder and embedder != held:
            raise EmbedderMismatch(f"face index {self.name!r} holds {held} embeddings, not {embedder}: "
                                   "use another index for this model, or a model of the same embedder")

    # -- the table --------------------------------------------------------------------------------
    def table(self):
        """The LanceDB table (created empty if the index has none yet)."""
        if self._table is None:
            import lancedb

            uri, options = lance_location(self.storage, self.prefix)
            db = lancedb.connect(uri, storage_options=options, read_consistency_interval=timedelta(seconds=REFRESH_S))
            try:
                self._table = db.open_table(TABLE)
            except ValueError:  # not created yet: another writer may create it at the same moment
                try:
                    self._table = db.create_table(TABLE, schema=schema())
                except (ValueError, OSError, RuntimeError):
                    self._table = db.open_table(TABLE)
        return self._table

    def count(self, where: str | None = None) -> int:
        return self.table().count_rows(where)

    def add(self, rows: pa.Table) -> int:
        """Add the faces of rows (see face_rows) that are not in the index yet, in one commit; returns how
        many rows were new."""
        if rows.num_rows == 0:
            return 0
        # Bounded: a merge-insert into an index on SeaweedFS, in the process that had just built it, once never
        # returned. A TimeoutError is transient to the tasks: the chunk is retried, and adds nothing twice.
        result = self.table().merge_insert("id").when_not_matched_insert_all().execute(rows, timeout=MERGE_TIMEOUT)
        return int(result.num_inserted_rows)

    def _ann(self) -> dict:
        """ann.json: how many faces the ANN index was trained on, in how many partitions ({} without one);
        read again after ANN_RECORD_S, as another process may have rebuilt the index meanwhile."""
        if self._ann_record is None or time.monotonic() - self._ann_record[0] > ANN_RECORD_S:
            key = f"{self.prefix}/ann.json"
            self._ann_record = (time.monotonic(), self.storage.get_json(key) if self.storage.exists(key) else {})
        return self._ann_record[1]

    def _partitions(self) -> int:
        return self._ann().get("partitions", 1)

    def vector_of(self, job: str, key: str, face: int) -> np.ndarray:
        """The embedding of a face a job added; LookupError naming it if the index does not hold it."""
        found = self._read(lambda table: table.search().where(f"id = '{face_id(job, key, face)}'")
                           .select(["vector"]).limit(1).to_arrow())
        if found.num_rows == 0:
            raise LookupError(f"face index {self.name!r} holds no face {face} of photo {key!r} from job {job}")
        return np.asarray(found["vector"][0].as_py(), np.float32)

    def search(self, vector: np.ndarray, k: int, jobs: Iterable[str] = (), key_prefix: str | None = None,
               exact: bool = False) -> list[Hit]:
        """The k faces most similar to vector (cosine), among those of the given jobs and under key_prefix
        when given; exact=True scans every face instead of using the ANN index."""
        return self.find(vector, k, jobs, key_prefix, exact)[0]

    def find(self, vector: np.ndarray, k: int, jobs: Iterable[str] = (), key_prefix: str | None = None,
             exact: bool = False) -> tuple[list[Hit], str]:
        """search(), and how it was searched: "graph" (an index at rest, no filters: pipeline.search_graph),
        "lancedb" (its ANN index where built, and a scan of the faces not in it) or "exact"."""
        where = filter_sql(jobs, key_prefix)
        if not exact and where is None:
            graph = self._graph_cache().usable(self.table().version)
            if graph is not None:
                found = graph.search(unit(vector)[0], k)
                return [_hit(row, similarity) for row, similarity in zip(found.rows, found.similarities)], "graph"
        def run(table) -> list[dict]:
            query = table.search(unit(vector)[0], vector_column_name="vector").distance_type("cosine")
            if where:
                query = query.where(where, prefilter=True)
            if exact:
                query = query.bypass_vector_index()
            else:
                query = query.nprobes(probes(self._partitions())).refine_factor(REFINE_FACTOR)
            return query.select([*COLUMNS, "_distance"]).limit(k).to_arrow().to_pylist()

        found = self._read(run)
        return [_hit(row, 1.0 - row["_distance"]) for row in found], "exact" if exact else "lancedb"

    def _read(self, read):
        """read(table), once more on the table's newest version if a file of the version this process holds was
        removed meanwhile (an erasure removes every older version's files at once)."""
        try:
            return read(self.table())
        except (RuntimeError, OSError) as err:
            if "Not found" not in str(err):
                raise
            self.table().checkout_latest()
            return read(self.table())

    def graph_ready(self, wait: float = 0.0) -> bool:
        """Whether searches without filters go through a search graph of the index as it is now, waiting up
        to `wait` seconds for this process to load one (a new graph loads in the background)."""
        return self._graph_cache().ready(self.table().version, wait)

    def _local_dir(self) -> Path:
        """Where this process keeps its copies of search graphs, and builds them."""
        return self.cache_dir or load_settings().cache_dir / "search-graphs"

    def _graph_cache(self) -> search_graph.GraphCache:
        if self._graphs is None:
            self._graphs = search_graph.GraphCache(self.storage, self.prefix, self._local_dir())
        return self._graphs

    def optimize(self, min_faces: int = ANN_MIN_FACES, graph_min_faces: int = search_graph.GRAPH_MIN_FACES,
                 keep_versions: timedelta = KEEP_VERSIONS, delete_unverified: bool = False) -> dict:
        """Fold new faces into the ANN index (building it once the index holds min_faces, and rebuilding its
        partitions after it has grown RETRAIN_GROWTH times), compact the table's files, remove the files of
        versions older than keep_versions, and build the search graph of the result once the index holds
        graph_min_faces. Returns what it did. delete_unverified also removes files no version refers to (a
        concurrent writer's, not committed yet, or one that lost its commit): an erasure must leave none."""
        table = self.table()
        faces = table.count_rows()
        vector_index = next((index for index in table.list_indices() if "vector" in index.columns), None)
        trained_on = self._ann().get("faces", 0) if vector_index else 0
        if faces >= min_faces and (vector_index is None or faces >= RETRAIN_GROWTH * trained_on):
            from lancedb.index import BTree, IvfPq

            config = IvfPq(distance_type="cosine", num_partitions=partitions(faces), num_sub_vectors=SUB_VECTORS)
            table.create_index("vector", config=config, replace=True)
            if not any(index.columns == ["id"] for index in table.list_indices()):
                # The merge-insert of every chunk joins on id: without an index it reads every id (0.4 to 1.5 s at
                # 1,000,000 faces here), with one it looks them up (3.6 times faster in the same conditions).
                table.create_index("id", config=BTree())
            self.storage.put_json(f"{self.prefix}/ann.json", {"faces": faces, "partitions": partitions(faces)})
            self._ann_record = None
            action = "built the ANN index"
        else:
            action = "kept the ANN index" if vector_index else "no ANN index yet (brute force is fast enough)"
        # Compacts files, adds the rows the ANN index lacks to it, and removes the files of versions older than
        # KEEP_VERSIONS (a search still reading one that old is long finished; LanceDB's default keeps a week).
        with warnings.catch_warnings():  # an erasure removes every older version on purpose
            warnings.filterwarnings("ignore", message="optimize.cleanup_older_than=0", category=UserWarning)
            table.optimize(cleanup_older_than=keep_versions, delete_unverified=delete_unverified)
        done = {"faces": faces, "action": action}
        graph = search_graph.record(self.storage, self.prefix)
        if faces < graph_min_faces:
            if graph is not None:
                search_graph.remove(self.storage, self.prefix)
        elif graph is None or graph["version"] != table.version:
            done["graph"] = search_graph.build(self.storage, self.prefix, table, self._local_dir() / "building")
        return done


_open: OrderedDict[tuple[int, str], FaceIndex] = OrderedDict()


def open_index(storage: Storage, name: str) -> FaceIndex:
    """The index, kept open in this process for the next searches (its table handle holds the ANN index's
    partitions and codebook in memory; it sees other writers' new faces within REFRESH_S seconds)."""
    key = (id(storage), check_index_name(name))
    if key not in _open:
        _open[key] = FaceIndex(storage, name)
        while len(_open) > INDEXES_KEPT:
            _open.popitem(last=False)
    _open.move_to_end(key)
    return _open[key]


def add_chunk_faces(storage: Storage, name: str, job: str, chunk: int, found: dict[str, PhotoFaces],
                    embedder: str, model: str, version: str) -> int:
    """Add the faces of one recognition chunk to the index `name`, creating the index on first use with the
    model version's face-pair calibration; returns how many faces were new (0 for a chunk added before).
    EmbedderMismatch if the index holds another embedder's faces."""
    index = FaceIndex(storage, name)
    if index.exists():
        index.check_embedder(embedder)
    else:
        calibration = registry.get_version(storage, model, version).get("face_pairs")
        if calibration is not None:
            calibration = {**calibration, "source": f"the validation photos of model {model} version {version}",
                           "figure": f"{registry.version_prefix(model, version)}/figures/roc_det.png"}
        index.ensure(embedder, calibration, {"job": job, "model": model, "model_version": version})
    return index.add(face_rows(job, chunk, found, embedder))


def partitions(faces: int) -> int:
    """The IVF partitions of an ANN index of this many faces: about sqrt(faces)."""
    return max(1, int(np.sqrt(faces)))


def probes(partitions: int) -> int:
    """The partitions a search probes: PROBE_SHARE of them."""
    return max(1, int(np.ceil(PROBE_SHARE * partitions)))


def face_rows(job: str, chunk: int, found: dict[str, PhotoFaces], embedder: str) -> pa.Table:
    """The rows of every face in a chunk's photos (PhotoFaces by key), embeddings made unit length."""
    import pyarrow as pa

    rows: dict[str, list[Any]] = {name: [] for name in ("id", "key", "face", "box", "landmarks",
                                                         "detector_score", "main", "job", "chunk")}
    vectors = []
    for key, photo in found.items():
        if photo.error:
            continue
        for number, face in enumerate(photo.faces):
            rows["id"].append(face_id(job, key, number))
            rows["key"].append(key)
            rows["face"].append(number)
            rows["box"].append([float(v) for v in face.box])
            rows["landmarks"].append(np.asarray(face.landmarks, np.float32).ravel().tolist())
            rows["detector_score"].append(float(face.score))
            rows["main"].append(number == photo.main_face)
            rows["job"].append(job)
            rows["chunk"].append(chunk)
            vectors.append(photo.embeddings[number])
    matrix = unit(np.asarray(vectors, np.float32).reshape(-1, DIM))
    columns = {name: pa.array(values, type=schema().field(name).type) for name, values in rows.items()}
    columns["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel(), pa.float32()), DIM)
    columns["embedder"] = pa.array([embedder] * len(vectors), pa.string())
    return pa.table(columns, schema=schema())


def schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([
        pa.field("id", pa.string(), nullable=False),
        pa.field("vector", pa.list_(pa.float32(), DIM)),
        pa.field("key", pa.string()),
        pa.field("face", pa.int32()),
        pa.field("box", pa.list_(pa.float32(), 4)),
        pa.field("landmarks", pa.list_(pa.float32(), 10)),
        pa.field("detector_score", pa.float32()),
        pa.field("main", pa.bool_()),
        pa.field("job", pa.string()),
        pa.field("chunk", pa.int32()),
        pa.field("embedder", pa.string()),
    ])


def filter_sql(jobs: Iterable[str], key_prefix: str | None) -> str | None:
    """The SQL filter for faces of the given jobs and photos under key_prefix (values quoted, never spliced)."""
    parts = []
    jobs = list(jobs)
    if jobs:
        parts.append("job IN (" + ", ".join(_quoted(job) for job in jobs) + ")")
    if key_prefix:
        parts.append(f"starts_with(key, {_quoted(key_prefix)})")
    return " AND ".join(parts) or None


def _quoted(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _hit(row: dict, similarity: float) -> Hit:
    return Hit(row["key"], row["face"], row["box"], _pairs(row["landmarks"]), row["detector_score"], row["main"],
               row["job"], similarity)


def _pairs(flat: list[float]) -> list[list[float]]:
    return [[round(flat[i], 1), round(flat[i + 1], 1)] for i in range(0, len(flat), 2)]


def unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.atleast_2d(np.asarray(vectors, np.float32))
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def lance_location(storage: Storage, prefix: str) -> tuple[str, dict[str, str]]:
    """Where LanceDB finds the folder `prefix` of storage: a path on local disk, or an s3:// URI and the
    options its own S3 client needs (the same endpoint and credentials as the storage's boto3 client)."""
    if isinstance(storage, LocalStorage):
        return str(Path(storage.root) / prefix), {}
    if isinstance(storage, S3Storage):
        # boto3 does not show a client's credentials publicly; _get_credentials is how botocore reads them.
        credentials = storage.client._get_credentials().get_frozen_credentials()
        options = {"aws_access_key_id": credentials.access_key, "aws_secret_access_key": credentials.secret_key,
                   "aws_region": storage.client.meta.region_name,
                   # Without these a request on a connection the server has closed waited forever: a merge-insert
                   # into a 1,000,000-face index on SeaweedFS hung that way. Now it fails and is retried.
                   "timeout": S3_REQUEST_TIMEOUT, "connect_timeout": "10s", "pool_idle_timeout": "15s"}
        if credentials.token:
            options["aws_session_token"] = credentials.token
        if storage.endpoint_url:
            options["aws_endpoint"] = storage.endpoint_url
            options["allow_http"] = str(storage.endpoint_url.startswith("http://")).lower()
        return f"s3://{storage.bucket}/{prefix}", options
    raise ValueError(f"a face index needs local or S3 storage, not {type(storage).__name__}")
