"""A graph index (faiss HNSW) over a face index at rest: searches without filters in about a millisecond.

LanceDB stays the store of record (rows, filters, deletes, exactly-once adds), but its IVF-PQ search costs some
20 ms of CPU at a million faces here, most of it fixed per query, and reads the re-ranked vectors from the object
store: 0.5 s on SeaweedFS (README, "Measured"). An HNSW graph of the same faces answers in about a millisecond.

The graph is derived data, rebuilt whole from one version of the LanceDB table when the index is optimized (after
each job that adds faces) and stored beside the table under ``indexes/<name>/graph/<table version>/``:
``graph.faiss`` (the graph and the unit vectors, position i = row i) and ``rows.parquet`` (each position's face:
id, key, box...). ``indexes/<name>/graph.json`` names the current one. A searching process copies it to its
local disk (in the background, never in a search's time), memory-maps the vectors and keeps the rows.

It answers only a search without filters, and only while the table is still at the version it was built from:
faces added or erased since, and every filtered search, go to LanceDB, whose answers are right, only slower.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.storage import LocalStorage, MissingKey, Storage

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)
logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # four lines a process on which CPU build it loads

# Below this many faces LanceDB's own search is fast enough (its brute force over 50,000 faces is a few ms).
GRAPH_MIN_FACES = 50_000
# faiss HNSW: each face linked to 32 others (64 on the bottom layer), 80 candidates kept while building. At a
# million LFW faces and lookalikes, efSearch 128 found 0.985 of the exact top 10 (bench.vector_stores); 256 is
# the default for the 0.99 the issue asks, and a search asking for more than a quarter of that widens it.
LINKS = 32
EF_CONSTRUCTION = 80
EF_SEARCH = 256
HIT_COLUMNS = ["id", "key", "face", "box", "landmarks", "detector_score", "main", "job"]
RECORD = "graph.json"
RELOOK_S = 2  # a stale or missing graph: how often a searching process reads graph.json again


def graph_prefix(index_prefix: str, version: int) -> str:
    return f"{index_prefix}/graph/{version}"


def build(storage: Storage, index_prefix: str, table, work: Path) -> dict:
    """Build the graph of the table's current version, store it and make it the current one; remove older
    graphs. Returns its record (version, faces, seconds)."""
    import faiss
    import pyarrow.parquet as pq

    started = time.perf_counter()
    version = table.version
    table.checkout(version)  # the rows of exactly this version, whatever another writer adds meanwhile
    try:
        rows = table.to_arrow().select(["vector", *HIT_COLUMNS])
    finally:
        table.checkout_latest()
    vectors = np.ascontiguousarray(rows["vector"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
                                   .reshape(rows.num_rows, -1), np.float32)
    graph = faiss.IndexHNSWFlat(vectors.shape[1], LINKS, faiss.METRIC_INNER_PRODUCT)
    graph.hnsw.efConstruction = EF_CONSTRUCTION
    graph.add(vectors)
    del vectors
    prefix = graph_prefix(index_prefix, version)
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as folder:
        faiss.write_index(graph, f"{folder}/graph.faiss")
        pq.write_table(rows.drop(["vector"]), f"{folder}/rows.parquet")
        storage.put_file(f"{prefix}/graph.faiss", f"{folder}/graph.faiss")
        storage.put_file(f"{prefix}/rows.parquet", f"{folder}/rows.parquet")
    record = {"version": version, "faces": rows.num_rows, "links": LINKS, "ef_construction": EF_CONSTRUCTION,
              "build_s": round(time.perf_counter() - started, 1),
              "built_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    table.checkout_latest()
    if table.version != version:
        # The table changed while this was built (faces added, or erased): this graph would name an old version
        # (and could hold erased faces). Dropped; the optimize after that change builds the next one.
        remove_version(storage, index_prefix, version)
        return {**record, "dropped": f"the table moved on to version {table.version} meanwhile"}
    storage.put_json(f"{index_prefix}/{RECORD}", record)
    remove_older(storage, index_prefix, keep=version)
    return record


def record(storage: Storage, index_prefix: str) -> dict | None:
    """The current graph's record, or None if the index has none."""
    try:
        return storage.get_json(f"{index_prefix}/{RECORD}")
    except MissingKey:
        return None


def remove(storage: Storage, index_prefix: str) -> None:
    """Remove every graph of the index (it has become too small for one, or its faces were erased)."""
    storage.delete(f"{index_prefix}/{RECORD}") if storage.exists(f"{index_prefix}/{RECORD}") else None
    remove_older(storage, index_prefix, keep=None)


def remove_version(storage: Storage, index_prefix: str, version: int) -> None:
    for key in list(storage.list(f"{graph_prefix(index_prefix, version)}/")):
        storage.delete(key)


def remove_older(storage: Storage, index_prefix: str, keep: int | None) -> None:
    """Delete the graphs other than version `keep` (a process still reading one has its local copy)."""
    for key in list(storage.list(f"{index_prefix}/graph/")):
        if keep is None or key.split("/")[-2] != str(keep):
            storage.delete(key)


@dataclass
class Found:
    rows: list[dict]
    similarities: list[float]


class SearchGraph:
    """One graph, loaded: the HNSW index (vectors memory-mapped) and its rows."""

    def __init__(self, folder: Path, version: int) -> None:
        import faiss
        import pyarrow.parquet as pq

        self.version = version
        self.graph = faiss.read_index(str(folder / "graph.faiss"), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
        # One chunk per column: taking 10 rows from a million split into a thousand chunks cost 20 ms a search.
        self.rows: pa.Table = pq.read_table(folder / "rows.parquet").combine_chunks()

    def search(self, vector: np.ndarray, k: int) -> Found:
        import faiss

        parameters = faiss.SearchParametersHNSW(efSearch=max(EF_SEARCH, 4 * k))
        similarities, positions = self.graph.search(np.asarray(vector, np.float32).reshape(1, -1), k,
                                                    params=parameters)
        keep = positions[0] >= 0
        return Found(self.rows.take(positions[0][keep]).to_pylist(), similarities[0][keep].tolist())


class GraphCache:
    """The current graph of one index in this process: loaded in a background thread when graph.json names
    a version not held yet; `usable(version)` is the graph if it was built from exactly that table version."""

    def __init__(self, storage: Storage, index_prefix: str, cache_dir: Path) -> None:
        self.storage = storage
        self.index_prefix = index_prefix
        self.cache_dir = cache_dir
        self.graph: SearchGraph | None = None
        self._looked = -float("inf")
        self._loading: threading.Thread | None = None
        self._lock = threading.Lock()

    def usable(self, table_version: int) -> SearchGraph | None:
        graph = self.graph
        if graph is not None and graph.version == table_version:
            return graph
        self._look()
        return None

    def ready(self, table_version: int, wait: float) -> bool:
        """Whether the graph of table_version is loaded, waiting up to `wait` seconds for one being loaded."""
        deadline = time.monotonic() + wait
        while self.usable(table_version) is None:
            loading = self._loading
            if time.monotonic() >= deadline:
                return False
            if loading is not None and loading.is_alive():
                loading.join(max(0.0, deadline - time.monotonic()))
            else:
                time.sleep(min(RELOOK_S, max(0.0, deadline - time.monotonic())))
        return True

    def _look(self) -> None:
        """Start loading the current graph if there is a newer one (at most every RELOOK_S seconds)."""
        with self._lock:
            if time.monotonic() - self._looked < RELOOK_S or (self._loading and self._loading.is_alive()):
                return
            self._looked = time.monotonic()
            current = record(self.storage, self.index_prefix)
            if current is None:
                self.graph = None
                return
            if self.graph is not None and self.graph.version == current["version"]:
                return
            self._loading = threading.Thread(target=self._load, args=(current["version"],), daemon=True,
                                             name=f"graph-{self.index_prefix}")
            self._loading.start()

    def _load(self, version: int) -> None:
        try:
            self.graph = SearchGraph(self._local_copy(version), version)
            log.info("search graph of %s version %s loaded", self.index_prefix, version)
        except Exception as err:  # a graph replaced while being copied: the next look finds the new one
            log.warning("search graph of %s version %s not loaded: %s", self.index_prefix, version, err)

    def _local_copy(self, version: int) -> Path:
        prefix = graph_prefix(self.index_prefix, version)
        if isinstance(self.storage, LocalStorage):
            return self.storage.path(f"{prefix}/graph.faiss").parent
        folder = self.cache_dir / prefix
        if not folder.exists():
            # Copied whole into a folder of its own, then renamed into place: another worker process on the
            # same machine may be copying the same graph, and neither ever reads half of one.
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            partial = Path(tempfile.mkdtemp(dir=self.cache_dir, prefix=".copying-"))
            try:
                for name in ("graph.faiss", "rows.parquet"):
                    self.storage.get_file(f"{prefix}/{name}", partial / name)
                folder.parent.mkdir(parents=True, exist_ok=True)
                partial.rename(folder)
            except OSError:
                if not folder.exists():
                    raise
            finally:
                shutil.rmtree(partial, ignore_errors=True)
        for older in folder.parent.iterdir():  # this process's older copies of the same index
            if older != folder:
                shutil.rmtree(older, ignore_errors=True)
        return folder
