"""Erasure: remove one person from everything named, everywhere their face is stored, and say what was done.

A request names the person (or gives a photo of them) and the datasets, centroid models and face indexes to
erase them from. First the person's faces are gathered as reference vectors: their photos in the datasets,
their centroid in each model's current version, the photo given. Then:

- datasets: their folder's photos are deleted;
- models: a new current version without them is published, and every version that holds them is retired
  (its model files, photo lists, reports and figures deleted, its record marked ``retired``: it can no
  longer be loaded, made current or rolled back to);
- face indexes: every face at least `threshold` similar to a reference (the index's calibrated threshold by
  default) is deleted, the files holding deleted rows are rewritten and every older version's files removed,
  so the vectors are gone from storage, not only hidden; the ANN index and the search graph are rebuilt;
- single-photo requests (``interactive/``) answered with their name are deleted;
- job results that name them are listed, and rewritten with the name replaced by ``erased`` when asked.

The receipt (``receipts/<id>.json`` and ``.html``) lists every object deleted or rewritten, with its size and
SHA-256 before the change, every model version retired or published, and every index's faces removed.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np

from pipeline import registry
from pipeline.dataset import manifest_jsonl, read_manifest
from pipeline.face_index import FaceIndex, unit
from pipeline.faces import FacePipeline
from pipeline.models import IdentityModel, load_model_files, model_files
from pipeline.storage import MissingKey, Storage

ERASED = "erased"
RECEIPTS = "receipts"
INTERACTIVE = "interactive"
RESULT_FILES = (".jsonl",)  # job outputs that name people: predictions, results, people


@dataclass
class ErasureRequest:
    """Who to erase and from what. The person's name is required unless photo_keys are given."""

    person: str | None
    models: list[str] = field(default_factory=list)
    indexes: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    photo_keys: list[str] = field(default_factory=list)
    redact_results: bool = False
    threshold: float | None = None  # faces at least this similar to the person's are erased from indexes


def erase(storage: Storage, pipeline: FacePipeline, request: ErasureRequest, erasure_id: str, asked_by: str,
          result_prefixes: Sequence[str] = (), on_progress: Callable[[str], None] = lambda stage: None) -> dict:
    """Erase the person as the request says; returns the receipt (also written under receipts/).

    An erasure restarted after its worker died finishes the same erasure: what it is about to delete is
    written to the receipt before it is deleted (receipts/<id>.in-progress.json), and the person's faces are
    kept until the end (receipts/<id>.in-progress.npy), since their photos and centroids may be gone by then."""
    run = _Run(storage, erasure_id)
    if not run.resumed():
        on_progress("finding the person's faces")
        person, references = reference_faces(storage, pipeline, request)
        run.begin(references["vectors"], {
            "id": erasure_id, "person": person, "asked_by": asked_by, "started_at": _now(),
            "request": {"models": request.models, "indexes": request.indexes, "datasets": request.datasets,
                        "photo_keys": request.photo_keys, "redact_results": request.redact_results,
                        "threshold": request.threshold},
            "reference_faces": {"count": len(references["vectors"]), "from": references["sources"]},
            "deleted": [], "rewritten": [], "models": {}, "indexes": {}, "results_naming_them": []})
    receipt, person = run.receipt, run.receipt["person"]
    on_progress("datasets")
    for dataset in request.datasets:
        run.delete(list(storage.list(f"datasets/{dataset}/{person}/")), "dataset photo")
    on_progress("models")
    for model in request.models:
        erase_from_model(run, model, person)
    on_progress("face indexes")
    for name in request.indexes:
        erase_from_index(run, name, request.threshold)
    on_progress("single-photo requests")
    for request_id in _interactive_naming(storage, person):
        run.delete(list(storage.list(f"{INTERACTIVE}/{request_id}/")), "single-photo request")
    if request.photo_keys:  # the photos of them given to find them: their data too
        run.delete(list(request.photo_keys), "photo given to identify them")
    on_progress("job results")
    for prefix in ["jobs/", *result_prefixes]:
        for key in list(storage.list(prefix)):
            if key.endswith(RESULT_FILES) and not key.startswith(f"{RECEIPTS}/"):
                _results(run, key, person, request.redact_results)
    # A copy: the receipt in progress keeps its models and indexes by name, should this end be run again.
    receipt = {**receipt, "finished_at": _now(), "models": list(receipt["models"].values()),
               "indexes": list(receipt["indexes"].values())}
    receipt["counts"] = {"objects_deleted": len(receipt["deleted"]), "objects_rewritten": len(receipt["rewritten"]),
                         "model_versions_retired": sum(len(m["retired"]) for m in receipt["models"]),
                         "index_faces_removed": sum(i["faces_removed"] for i in receipt["indexes"]),
                         "results_naming_them": len(receipt["results_naming_them"])}
    storage.put_json(f"{RECEIPTS}/{erasure_id}.json", receipt)
    storage.put(f"{RECEIPTS}/{erasure_id}.html", receipt_html(receipt).encode())
    run.end()
    return receipt


class _Run:
    """One erasure's receipt as it is written, and the person's faces until it ends (see erase)."""

    def __init__(self, storage: Storage, erasure_id: str) -> None:
        self.storage = storage
        self.state_key = f"{RECEIPTS}/{erasure_id}.in-progress.json"
        self.faces_key = f"{RECEIPTS}/{erasure_id}.in-progress.npy"
        self.receipt: dict = {}
        self.references = np.zeros((0, 128), np.float32)

    def resumed(self) -> bool:
        if not self.storage.exists(self.state_key) or not self.storage.exists(self.faces_key):
            return False
        self.receipt = self.storage.get_json(self.state_key)
        self.references = np.load(io.BytesIO(self.storage.get(self.faces_key)))
        return True

    def begin(self, references: np.ndarray, receipt: dict) -> None:
        self.references, self.receipt = references.astype(np.float32), receipt
        buffer = io.BytesIO()
        np.save(buffer, self.references)
        self.storage.put(self.faces_key, buffer.getvalue())
        self.save()

    def save(self) -> None:
        self.storage.put_json(self.state_key, self.receipt)

    def delete(self, keys: list[str], what: str) -> None:
        """Delete the objects, listed in the receipt (with their size and hash) before they go."""
        listed = {entry["key"] for entry in self.receipt["deleted"]}
        for key in keys:
            if key not in listed:
                try:
                    data = self.storage.get(key)
                except MissingKey:
                    continue
                self.receipt["deleted"].append({"key": key, "what": what, "bytes": len(data), "sha256": _sha256(data)})
        self.save()
        for key in keys:
            self.storage.delete(key)

    def end(self) -> None:
        for key in (self.faces_key, self.state_key):
            self.storage.delete(key)


# -- who they are ----------------------------------------------------------------------------------------

def reference_faces(storage: Storage, pipeline: FacePipeline, request: ErasureRequest) -> tuple[str, dict]:
    """The person's name and their faces as unit vectors, with where each group came from. ValueError if
    nothing of theirs is found (an erasure that finds nothing must not claim to have erased anyone)."""
    vectors, sources = [], []
    person = request.person
    given = _subject_faces(storage, pipeline, request.photo_keys)
    if given is not None:
        vectors.append(given)
        sources.append(f"{len(given)} photo(s) given")
    if person is None:
        person = _named_by_models(storage, request.models, given)
    for dataset in request.datasets:
        keys = [key for key in storage.list(f"datasets/{dataset}/{person}/")]
        found = _subject_faces(storage, pipeline, keys)
        if found is not None:
            vectors.append(found)
            sources.append(f"{len(found)} photo(s) of datasets/{dataset}/{person}/")
    for model in request.models:
        loaded = _current_model(storage, model)
        if loaded is not None and loaded[1].model_type == "centroid" and person in loaded[1].labels_:
            vectors.append(unit(loaded[1].centroids_[loaded[1].labels_.index(person)]))
            sources.append(f"their centroid in model {model} version {loaded[0]}")
    if not vectors:
        raise ValueError(f"nothing of {person!r} was found: no photo of theirs in the datasets named, no centroid "
                         "in the models named, no face in the photos given; check the name's spelling")
    return person, {"vectors": np.vstack(vectors), "sources": sources}


def _subject_faces(storage: Storage, pipeline: FacePipeline, keys: list[str]) -> np.ndarray | None:
    """The subject's face of each photo, as unit vectors (None if none had a face)."""
    if not keys:
        return None
    photos = [(key, data) for key, data in storage.get_many(keys) if isinstance(data, bytes)]
    found = [photo.embeddings[photo.main_face] for photo in pipeline.process_stream(photos)
             if not photo.error and photo.faces]
    return unit(np.asarray(found)) if found else None


def _named_by_models(storage: Storage, models: list[str], faces: np.ndarray | None) -> str:
    """The person the photos given show, by the first model that names them."""
    from pipeline.models.base import FaceSet

    if faces is None:
        raise ValueError("name the person, or give a photo of them in which a face is found")
    for model in models:
        loaded = _current_model(storage, model)
        if loaded is None or loaded[1].model_type != "centroid":  # erasure works on centroid models only
            continue
        chips = np.zeros((len(faces), 150, 150, 3), np.uint8)
        names = {p.label for p in loaded[1].predict(FaceSet(chips, faces)) if p.label != "unknown"}
        if len(names) == 1:
            return names.pop()
    raise ValueError("the photos given show no one the models named know (or several people): name the person")


# -- models ----------------------------------------------------------------------------------------------

def _current_model(storage: Storage, model: str) -> tuple[str, IdentityModel] | None:
    version = registry.current_version(storage, model)
    if version is None:
        return None
    return version, load_model_files(storage, registry.version_prefix(model, version))


def erase_from_model(run: _Run, model: str, person: str) -> None:
    """Publish a current version of a centroid model without the person, and retire every version holding
    them: marked retired first, then its files deleted (a restarted erasure finishes what it began)."""
    storage = run.storage
    done = run.receipt["models"].setdefault(model, {"model": model, "published": None, "retired": []})
    current = _current_model(storage, model)
    if current is not None and person in current[1].labels_:
        version, loaded = current
        if loaded.model_type != "centroid":
            raise ValueError(f"model {model} is a {loaded.model_type} model: erasing someone from it means training "
                             "it again without their photos (erase them from its dataset, then train)")
        done["published"] = _version_without(storage, model, version, loaded, person, run.receipt["id"])
        run.save()
        registry.set_current(storage, model, done["published"], expected=version)
    for record in registry.list_versions(storage, model):
        prefix = registry.version_prefix(model, record["version"])
        if not record.get("retired"):
            if record["version"] == done["published"] or not _holds(storage, prefix, person):
                continue
            storage.put_json(f"{prefix}/version.json", {**record, "retired": {
                "erasure": run.receipt["id"], "at": _now(),
                "why": "it held a person erased since; its files were deleted and it can no longer be loaded"}})
            done["retired"].append(record["version"])
        elif record["retired"]["erasure"] != run.receipt["id"]:
            continue
        run.delete([key for key in storage.list(f"{prefix}/") if not key.endswith("/version.json")],
                   f"file of retired version {record['version']} of model {model}")


def _holds(storage: Storage, prefix: str, person: str) -> bool:
    try:
        return person in json.loads(storage.get(f"{prefix}/model/model.json"))["labels"]
    except MissingKey:
        return False


def _version_without(storage: Storage, model: str, base_version: str, loaded: IdentityModel, person: str,
                     erasure_id: str) -> str:
    """Publish base_version's model with the person removed; returns the new version's id."""
    keep = [i for i, label in enumerate(loaded.labels_) if label != person]
    loaded.labels_ = [loaded.labels_[i] for i in keep]
    loaded.centroids_ = loaded.centroids_[keep]
    loaded.counts_ = [loaded.counts_[i] for i in keep]
    base_prefix = registry.version_prefix(model, base_version)
    files = model_files(loaded)
    for name in ("manifest.jsonl", "training.jsonl", "validation.jsonl"):
        if storage.exists(f"{base_prefix}/{name}"):
            items = read_manifest(storage, f"{base_prefix}/{name}")
            files[name] = manifest_jsonl([item for item in items if item.label != person])
    base = registry.get_version(storage, model, base_version)
    version = registry.new_version_id()
    record = {key: base[key] for key in ("model_type", "embedder", "code_version", "params", "face_pairs")
              if key in base}
    record.update(people=len(loaded.labels_), base_version=base_version, erasure=erasure_id,
                  inherited_metrics={"source_version": base_version, "metrics": base.get("metrics"),
                                     "note": "measured by the base version, before a person was erased from it"})
    registry.publish_version(storage, model, version, files, record)
    return version


# -- face indexes ----------------------------------------------------------------------------------------

def erase_from_index(run: _Run, name: str, threshold: float | None) -> None:
    """Delete the index's faces at least `threshold` similar to any of the person's (default: the index's
    calibrated threshold), rewrite the files that held them and remove every older version's files."""
    index = FaceIndex(run.storage, name)
    calibration = index.info().get("calibration") or {}
    threshold = threshold if threshold is not None else calibration.get("default")
    if threshold is None:
        raise ValueError(f"face index {name!r} has no calibration to judge its faces by: give a threshold")
    done = run.receipt["indexes"].setdefault(name, {"index": name, "threshold": threshold, "faces_removed": 0,
                                                    "faces": []})
    table = index.table()
    doomed: list[dict] = []
    for batch in table.to_lance().to_batches(columns=["id", "vector", "key", "face", "job"]):
        vectors = batch.column("vector").flatten().to_numpy(zero_copy_only=False).reshape(batch.num_rows, -1)
        best = (unit(vectors) @ run.references.T).max(axis=1) if batch.num_rows else np.zeros(0)
        for row in np.flatnonzero(best >= threshold):
            doomed.append({"id": batch.column("id")[row].as_py(), "key": batch.column("key")[row].as_py(),
                           "face": batch.column("face")[row].as_py(), "job": batch.column("job")[row].as_py(),
                           "similarity": round(float(best[row]), 4)})
    listed = {face["id"] for face in done["faces"]}
    done["faces"] += [face for face in doomed if face["id"] not in listed]
    done["faces_removed"] = len(done["faces"])
    run.save()
    for start in range(0, len(doomed), 1000):
        table.delete("id IN (" + ", ".join(f"'{face['id']}'" for face in doomed[start:start + 1000]) + ")")
    if done["faces"]:
        # LanceDB only marks rows deleted, and its optimize rewrites a file only when a tenth of it is: every
        # file holding a deleted row is rewritten here, then every older version's files are removed.
        table.to_lance().optimize.compact_files(materialize_deletions=True, materialize_deletions_threshold=0.0)
        table.checkout_latest()
        # Every file no version refers to goes too: a compaction running beside this one (a job's optimize) may
        # have written files from the rows before their deletion and lost its commit.
        index.optimize(keep_versions=timedelta(0), delete_unverified=True)
    done["faces_left"] = index.count()


# -- single photos and results ---------------------------------------------------------------------------

def _interactive_naming(storage: Storage, person: str) -> list[str]:
    """The single-photo requests whose answer named the person."""
    needle = json.dumps(person).encode()
    named = []
    for key in storage.list(f"{INTERACTIVE}/"):
        if key.endswith("/result.json"):
            try:
                if needle in storage.get(key):
                    named.append(key.split("/")[1])
            except MissingKey:
                continue
    return named


def _results(run: _Run, key: str, person: str, redact: bool) -> None:
    """List a results file that names the person; with redact, rewrite it without their name."""
    try:
        data = run.storage.get(key)
    except MissingKey:
        return
    if json.dumps(person).encode() not in data:
        return
    if key not in run.receipt["results_naming_them"]:
        run.receipt["results_naming_them"].append(key)
    if redact:
        redacted = _redacted(data, person)
        run.receipt["rewritten"].append({"key": key, "what": "job results", "bytes": len(data),
                                         "sha256_before": _sha256(data), "sha256_after": _sha256(redacted)})
        run.save()
        run.storage.put(key, redacted)


def _redacted(data: bytes, person: str) -> bytes:
    """JSON lines with every string equal to the person's name replaced by ERASED."""
    def scrub(value):
        if isinstance(value, dict):
            return {k: scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [scrub(v) for v in value]
        return ERASED if value == person else value

    lines = [json.dumps(scrub(json.loads(line))) if line.strip() else line.decode()
             for line in data.splitlines()]
    return ("\n".join(lines) + "\n").encode()


# -- the receipt -----------------------------------------------------------------------------------------

def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


RECEIPT_STYLE = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}"
                 "table{border-collapse:collapse;margin:.5em 0}"
                 "td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;font-size:.9em}")


def receipt_html(receipt: dict) -> str:
    """The receipt as a page a person can read and keep."""
    e = html.escape

    def table(rows: list[dict], columns: list[str]) -> str:
        if not rows:
            return "<p>None.</p>"
        head = "".join(f"<th>{e(c)}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td>{e(str(row.get(c, '')))}</td>" for c in columns) + "</tr>"
                       for row in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    counts = "".join(f"<li>{e(k.replace('_', ' '))}: {v}</li>" for k, v in receipt["counts"].items())
    models = [{"model": m["model"], "new current version": m["published"] or "(none: not in the current version)",
               "versions retired": ", ".join(m["retired"]) or "none"} for m in receipt["models"]]
    indexes = [{k: i[k] for k in ("index", "threshold", "faces_removed", "faces_left")} for i in receipt["indexes"]]
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Erasure receipt {e(receipt['id'])}</title><style>{RECEIPT_STYLE}</style></head>
<body><h1>Erasure receipt</h1>
<p>Erasure <code>{e(receipt['id'])}</code> of <strong>{e(receipt['person'])}</strong>, asked by
<code>{e(receipt['asked_by'])}</code>, from {e(receipt['started_at'])} to {e(receipt['finished_at'])}.</p>
<p>Their faces were recognised by {receipt['reference_faces']['count']} reference face(s):
{e('; '.join(receipt['reference_faces']['from']))}.</p>
<ul>{counts}</ul>
<h2>Models</h2>{table(models, ["model", "new current version", "versions retired"])}
<h2>Face indexes</h2>{table(indexes, ["index", "threshold", "faces_removed", "faces_left"])}
<h2>Objects deleted</h2>{table(receipt['deleted'], ["key", "what", "bytes", "sha256"])}
<h2>Objects rewritten</h2>{table(receipt['rewritten'], ["key", "what", "bytes", "sha256_before", "sha256_after"])}
<h2>Job results that named them</h2>{table([{"key": k} for k in receipt['results_naming_them']], ["key"])}
</body></html>
"""
