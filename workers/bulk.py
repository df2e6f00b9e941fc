"""A bulk-recognition job's files and steps, for the tasks (workers.tasks) to call: the input planned into
chunks as it is listed, a chunk's photos recognised (or, in a dry run, their headers read), and the
results manifest and summary assembled as the chunks' predictions are read back. Memory stays bounded
whatever the size of the job: nothing here holds the whole input or the whole output.

Under ``jobs/<id>/``: ``plan.json``, ``chunks/NNNNN.json`` (each chunk's keys), ``predictions/NNNNN.jsonl``
(a line per photo: a chunk is done when this is written), ``stats/NNNNN.json`` (its timings). Under the
job's output prefix: ``results.jsonl`` and ``summary.json``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

from pipeline.dataset import iter_key_list
from pipeline.headers import HEAD_BYTES, photo_header
from pipeline.storage import InvalidKey, Storage, StorageError, check_key

PLAN_WRITERS = 16  # chunk lists written at once while planning: 20 ms a write costs no time at 16
READ_THREADS = 32  # predictions read ahead while the results are assembled


def plan_key(job_id: str) -> str:
    return f"jobs/{job_id}/plan.json"


def chunk_key(job_id: str, index: int) -> str:
    return f"jobs/{job_id}/chunks/{index:05d}.json"


def predictions_key(job_id: str, index: int) -> str:
    return f"jobs/{job_id}/predictions/{index:05d}.jsonl"


def stats_key(job_id: str, index: int) -> str:
    return f"jobs/{job_id}/stats/{index:05d}.json"


def output_prefix(job: dict) -> str:
    """Where a recognition job writes its results manifest and summary."""
    return job["params"].get("output_prefix", "").rstrip("/") or f"jobs/{job['id']}/output"


def input_keys(storage: Storage, job: dict) -> Iterator[str]:
    """The job's photos as the input is read, each once, in input order (a listing in the store's own
    order); never those under its own output prefix, nor hidden files."""
    params = job["params"]
    if params.get("input_manifest"):
        seen: set[bytes] = set()  # 16-byte digests: a million keys in tens of MB, where the keys take hundreds
        for key in iter_key_list(storage, params["input_manifest"]):
            digest = hashlib.blake2b(key.encode(), digest_size=16).digest()
            if digest not in seen:
                seen.add(digest)
                yield key
        return
    prefix, output = params["input_prefix"].rstrip("/") + "/", output_prefix(job) + "/"
    for key in storage.list(prefix):
        if not key.startswith(output) and "/." not in "/" + key:
            yield key


def make_plan(storage: Storage, job: dict, model_version: str | None, chunk_size: int) -> dict:
    """Split the input into chunk lists as it is read, writing them several at once; plan.json last, so
    that a plan that exists is whole. Raises ValueError for an input without photos."""
    job_id, chunks, images = job["id"], 0, 0
    pending = []
    with ThreadPoolExecutor(PLAN_WRITERS, thread_name_prefix="plan") as writers:
        for keys in _batches(input_keys(storage, job), chunk_size):
            pending.append(writers.submit(storage.put_json, chunk_key(job_id, chunks), keys))
            chunks, images = chunks + 1, images + len(keys)
            if len(pending) >= 2 * PLAN_WRITERS:  # bounded: a million keys are never all in memory
                pending.pop(0).result()
        for write in pending:
            write.result()
    if not images:
        raise ValueError("the input holds no photos")
    params = job["params"]
    plan = {"model": params.get("model"), "model_version": model_version, "images": images, "chunks": chunks,
            "chunk_size": chunk_size, "dry_run": bool(params.get("dry_run"))}
    storage.put_json(plan_key(job_id), plan)
    return plan


def _batches(items: Iterable[str], size: int) -> Iterator[list[str]]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def chunk_photos(plan: dict, index: int) -> int:
    """How many photos chunk index holds (every chunk is full but the last)."""
    return min(plan["chunk_size"], plan["images"] - index * plan["chunk_size"])


def chunks_done(storage: Storage, job_id: str) -> list[int]:
    """The chunks whose predictions are written: the truth the counts are rebuilt from."""
    prefix = f"jobs/{job_id}/predictions/"
    return sorted(int(key.removeprefix(prefix).split(".")[0]) for key in storage.list(prefix)
                  if key.endswith(".jsonl"))


def key_problem(key: str) -> str | None:
    try:
        check_key(key)
    except InvalidKey as err:
        return str(err)
    return None


def read_headers(storage: Storage, keys: list[str], public: Callable[[Exception], str]) -> tuple[list[dict], dict]:
    """A dry run of one chunk: each photo's header (one ranged read each, several at once) or the reason it
    cannot be read, and the chunk's timings."""
    started = time.perf_counter()
    errors = {key: problem for key in keys if (problem := key_problem(key))}
    heads = dict(storage.get_heads([key for key in keys if key not in errors], HEAD_BYTES))
    lines = []
    for key in keys:
        head = heads.get(key)
        if key in errors or isinstance(head, StorageError):
            lines.append({"key": key, "error": errors.get(key) or public(head)})
        else:
            lines.append({"key": key, **photo_header(*head)})
    return lines, {"read_headers": (time.perf_counter() - started) * 1000}


class Summary:
    """The summary of a job's results, added up one line at a time."""

    def __init__(self, dry_run: bool) -> None:
        self.dry_run = dry_run
        self.counts: Counter = Counter()
        self.identities: Counter = Counter()
        self.formats: Counter = Counter()
        self.timings: Counter = Counter()

    def add(self, result: dict) -> None:
        self.counts["images"] += 1
        if "error" in result:
            self.counts["errors"] += 1
        elif self.dry_run:
            self.formats[result["format"]] += 1
            self.counts["megapixels"] += result["megapixels"]
        else:
            self.counts["faces"] += len(result["faces"])
            self.counts["images_without_face"] += not result["faces"]
            self.identities.update(face["identity"] for face in result["faces"])
        self.counts["bytes"] += result.get("bytes", 0)

    def add_timings(self, timings_ms: dict) -> None:
        self.timings.update(timings_ms)

    def as_dict(self) -> dict:
        summary = {"images": self.counts["images"], "errors": self.counts["errors"],
                   "timings_ms": {stage: round(ms, 1) for stage, ms in self.timings.items()}}
        if self.dry_run:
            summary.update(readable=self.counts["images"] - self.counts["errors"], formats=dict(self.formats),
                           megapixels=round(self.counts["megapixels"], 1), bytes=self.counts["bytes"])
        else:
            summary.update(faces=self.counts["faces"], unknown_faces=self.identities.get("unknown", 0),
                           images_without_face=self.counts["images_without_face"], identities=dict(self.identities))
        return summary


def assemble_results(storage: Storage, job_id: str, plan: dict, results_key: str) -> dict:
    """Write results.jsonl from the chunks' predictions, in chunk order, as they are read (several read
    ahead); returns the summary, added up in the same pass."""
    summary = Summary(plan.get("dry_run", False))  # plans made before dry runs have no such field
    predictions = storage.get_many([predictions_key(job_id, i) for i in range(plan["chunks"])], threads=READ_THREADS)
    with storage.open_writer(results_key) as out:
        for _, data in predictions:
            if isinstance(data, StorageError):
                raise data
            out.write(data)
            for line in data.splitlines():
                summary.add(json.loads(line))
    for _, stats in storage.get_many([stats_key(job_id, i) for i in range(plan["chunks"])], threads=READ_THREADS):
        if not isinstance(stats, StorageError):  # timings are a nicety: a chunk without them still counts
            summary.add_timings(json.loads(stats)["timings_ms"])
    return summary.as_dict()
