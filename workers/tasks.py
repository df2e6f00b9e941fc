"""Celery tasks. Each is thin: it reads the job, calls pipeline/, and records the outcome.

Tasks are idempotent: a redelivered chunk whose predictions exist is not computed again, a second
delivery of a message whose work is still running elsewhere is skipped (the lease), and a job in a
final state is never changed. Transient storage and network errors are retried with backoff; a
missing object or bad input fails the job at once, with a message that names the problem.

A bulk-recognition job keeps its working files under ``jobs/<id>/`` (plan, chunks, predictions,
stats) and writes only ``results.jsonl`` and ``summary.json`` under its output prefix.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

from botocore.exceptions import BotoCoreError
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from config import Settings
from pipeline import registry
from pipeline.dataset import load_items
from pipeline.storage import InvalidKey, MissingKey, StorageError
from workers import bulk, interactive, task_names
from workers.app import app
from workers.jobs import CANCELLED, PUBLISHING, TERMINAL, JobCancelled, JobNotFound, JobStore
from workers.runtime import Runtime

log = logging.getLogger(__name__)

TRANSIENT_ERRORS = (StorageError, BotoCoreError, ConnectionError, TimeoutError, RedisConnectionError,
                    RedisTimeoutError)
# Bad input: retrying cannot help, so the job fails at once with the message.
PERMANENT_ERRORS = (ValueError, LookupError, MissingKey)
MAX_DELIVERIES = 3


def public_message(err: BaseException | str, settings: Settings) -> str:
    """An error message fit for a job record: the server's own folders replaced by what they hold."""
    message = str(err)
    for folder, name in ((settings.data_dir / "storage", "<storage>"), (settings.data_dir, "<data>"),
                         (settings.cache_dir, "<cache>")):
        message = message.replace(str(folder), name)
    return re.sub(r"'/[^']*'", "'<path>'", message)  # as OSError quotes a path


class JobTask(Task):
    """A task whose first argument is a job id. It runs only while the job is unfinished and no other
    execution of the same work is alive; while it runs it beats, so the watchdog knows the job is
    worked on. Failures after the last retry fail the job."""

    acks_late = True
    autoretry_for = TRANSIENT_ERRORS
    dont_autoretry_for = (MissingKey, InvalidKey)  # the object is not there, or cannot be: retrying cannot help
    retry_backoff = 2
    retry_backoff_max = 120
    retry_jitter = True  # max_retries comes from the settings (workers.app's task_annotations)

    @property
    def runtime(self) -> Runtime:
        return self.app.runtime

    def __call__(self, job_id: str, *args, **kwargs):
        jobs = self.runtime.jobs
        try:
            job = jobs.get(job_id)
        except JobNotFound:
            log.warning("%s: no job %s, nothing to do", self.name, job_id)
            return None
        if job["state"] in TERMINAL:
            return None
        deliveries = jobs.count_delivery(job_id, f"{self.request.id}:{self.request.retries}")
        if deliveries > MAX_DELIVERIES:
            jobs.fail(job_id, f"task {self.name} was delivered {deliveries} times without finishing "
                              "(worker lost: crash or out of memory?)")
            return None
        work = ":".join([self.name, *map(str, args[:1])])  # a chunk's index, not the plan it carries
        with jobs.lease(job_id, work) as renew:
            if renew is None:
                log.info("%s for job %s is running elsewhere: this delivery skips it", work, job_id)
                return None
            with _beating(jobs, job_id, renew, self.runtime.settings.heartbeat_s):
                try:
                    return self.run(job_id, *args, **kwargs)
                except JobCancelled:
                    return None
                except PERMANENT_ERRORS as err:
                    jobs.fail(job_id, public_message(err, self.runtime.settings))
                    return None

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        if isinstance(exc, SoftTimeLimitExceeded):
            message = f"{self.name} ran past its time limit of {self.soft_time_limit} s"
        else:
            message = f"{type(exc).__name__}: {public_message(exc, self.runtime.settings)}"
        self.runtime.jobs.fail(args[0], message, {"task": self.name})


@contextlib.contextmanager
def _beating(jobs: JobStore, job_id: str, renew_lease, every: float) -> Iterator[None]:
    """Beat for the job and renew the lease every `every` seconds on a thread, while the block runs."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            try:
                jobs.beat(job_id)
                renew_lease()
            except Exception:  # a missed beat is retried on the next tick; the work goes on
                log.warning("could not beat for job %s", job_id, exc_info=True)

    jobs.beat(job_id)
    thread = threading.Thread(target=beat, name=f"beat-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        jobs.beat(job_id)


# -- training --------------------------------------------------------------------------------

def _progress_or_stop(jobs: JobStore, job_id: str):
    """A progress callback for the pipeline: it records the stage and stops the job if it was cancelled.
    Entering "publishing" is one locked step after which a cancel is refused."""
    def on_progress(stage: str, done: int, total: int) -> None:
        if stage == PUBLISHING:
            jobs.mark_publishing(job_id)
        elif jobs.set_progress(job_id, done, total, stage)["state"] == CANCELLED:
            raise JobCancelled(job_id)

    return on_progress


@app.task(bind=True, base=JobTask, name=task_names.TRAIN)  # time limits: workers.app's task_annotations
def train(self: JobTask, job_id: str) -> None:
    # Imported where used: they load TensorFlow, which a worker on the default queue never needs.
    from pipeline.train import TrainingParams, dataset_unchanged, train_model
    from workers import schedules

    runtime = self.runtime
    jobs, storage = runtime.jobs, runtime.storage
    params = jobs.start(job_id)["params"]
    items = load_items(storage, params.get("dataset_prefix"), params.get("dataset_manifest"))
    if params.get("skip_if_unchanged"):
        reason = ("dataset unchanged since the current version: nothing trained"
                  if dataset_unchanged(storage, params["model"], items)
                  else schedules.unchanged_since_last_training(storage, params.get("schedule_id"), items))
        if reason:
            jobs.succeed(job_id, {"model": params["model"], "trained": False, "decision": reason})
            return
    # A fixed validation manifest is what promotion is decided on: the model tunes on its own split.
    held_out = (load_items(storage, manifest=params["validation_manifest"])
                if params.get("validation_manifest") else None)
    training = TrainingParams(model_type=params.get("model_type", "embedding"),
                              model_params=params.get("model_params", {}),
                              validation_fraction=params.get("validation_fraction", 0.2),
                              test_fraction=params.get("test_fraction", 0.2),
                              stranger_fraction=params.get("stranger_fraction", 0.0),
                              min_quality=params.get("min_quality", 0.0),
                              far=params.get("far"), gallery_far=params.get("gallery_far"))
    record = train_model(storage, runtime.face_pipeline, items, params["model"], training,
                         _progress_or_stop(jobs, job_id), promotion_items=held_out,
                         promotion_margin=params.get("promotion_margin"))
    if params.get("schedule_id"):
        schedules.remember_training(storage, params["schedule_id"], job_id, record)
    jobs.succeed(job_id, _version_result(record, trained=True, promotion=record["promotion"]))


@app.task(bind=True, base=JobTask, name=task_names.ENROLL)
def enroll(self: JobTask, job_id: str) -> None:
    """Add or update people in a centroid model: a new version, no one else retrained."""
    from pipeline.enroll import enroll_people

    runtime = self.runtime
    jobs, storage = runtime.jobs, runtime.storage
    params = jobs.start(job_id)["params"]
    items = load_items(storage, params.get("dataset_prefix"), params.get("dataset_manifest"))
    record = enroll_people(storage, runtime.face_pipeline, items, params["model"],
                           on_progress=_progress_or_stop(jobs, job_id), min_quality=params.get("min_quality", 0.0))
    jobs.succeed(job_id, _version_result(record, enrolled=record["enrolled"]))


@app.task(bind=True, base=JobTask, name=task_names.CLUSTER_FACES)
def cluster_faces(self: JobTask, job_id: str) -> None:
    """A cluster job: an index's faces grouped by person; clusters.json and report.html under jobs/<id>/output/."""
    from pipeline.clusters import FaceClusterer, cluster_index
    from pipeline.face_index import open_index
    from pipeline.people_search import PEOPLE_IN_REPORT, report_html, thumbnail

    runtime = self.runtime
    jobs, storage = runtime.jobs, runtime.storage
    params = jobs.start(job_id)["params"]
    progress = _progress_or_stop(jobs, job_id)
    only = _unknown_faces(runtime, params["in_jobs"]) if params.get("unknown_only") else None
    progress("clustering", 0, 1)
    clusterer = FaceClusterer() if params.get("threshold") is None else FaceClusterer(threshold=params["threshold"])
    found = cluster_index(open_index(storage, params["index"]), clusterer, params.get("in_jobs", []),
                          params.get("key_prefix"), params.get("min_size", 2), only)
    output = f"jobs/{job_id}/output"
    storage.put_json(f"{output}/clusters.json", {**found, "index": params["index"], "job": job_id})
    lines = [{"person": f"Cluster {c['id']}: {c['size']} faces", "photos": c["photos"], "faces": c["representatives"]}
             for c in found["clusters"]]
    facts = {"index": params["index"], "faces clustered": f"{found['faces']:,}"
             + (" (only those left unknown)" if only is not None else ""),
             "links": f"judged by a learned model in {len(clusterer.links.rounds)} rounds, among each face's "
                      f"{clusterer.links.neighbours} nearest",
             "least similarity of a link": "none (the model decides)" if params.get("threshold") is None
             else str(clusterer.threshold)}
    summary = (f"{len(found['clusters'])} clusters of at least {params.get('min_size', 2)} faces hold "
               f"{found['faces_in_clusters']:,} faces; {found['faces_alone']:,} faces are in smaller groups.")
    # Each representative's thumbnail made once, for the report and for the web page's chips (the API never
    # decodes photos for a page).
    images = {(face["key"], tuple(face["box"])): thumbnail(storage, face["key"], face["box"])
              for c in found["clusters"][:PEOPLE_IN_REPORT] for face in c["representatives"]}
    storage.put(f"{output}/report.html", report_html(storage, lines, f"Clusters of {params['index']}", facts,
                                                     summary, images).encode())
    chips = {str(c["id"]): [_base64(images[(face["key"], tuple(face["box"]))]) for face in c["representatives"]]
             for c in found["clusters"][:CLUSTERS_ON_PAGE]}
    storage.put_json(f"{output}/chips.json", chips)
    jobs.succeed(job_id, {"clusters": f"{output}/clusters.json", "report": f"{output}/report.html",
                          "chips": f"{output}/chips.json",
                          "index": params["index"], "faces": found["faces"], "clusters_found": len(found["clusters"]),
                          "faces_in_clusters": found["faces_in_clusters"], "faces_alone": found["faces_alone"]})


CLUSTERS_ON_PAGE = 100  # the Clusters tab shows the largest clusters; clusters.json holds them all


def _base64(image: bytes | None) -> str | None:
    return base64.b64encode(image).decode() if image else None


def _unknown_faces(runtime: Runtime, job_ids: list[str]) -> set[tuple[str, str, int]]:
    """(job, photo key, face) of every face the recognition jobs' results left unknown."""
    unknown = set()
    for job_id in job_ids:
        for line in runtime.storage.read_lines(runtime.jobs.get(job_id)["result"]["results"]):
            result = json.loads(line)
            unknown |= {(job_id, result["key"], number) for number, face in enumerate(result.get("faces", []))
                        if face["identity"] == "unknown"}
    return unknown


@app.task(bind=True, base=JobTask, name=task_names.ERASE)
def erase(self: JobTask, job_id: str) -> None:
    """Erase a person (pipeline.erasure); the job's result points to the receipt."""
    from pipeline.erasure import ErasureRequest, erase

    runtime = self.runtime
    jobs = runtime.jobs
    params = dict(jobs.start(job_id)["params"])
    jobs.mark_publishing(job_id)  # begun, an erasure is finished (if its worker dies, by the next): no cancel
    asked_by = params.pop("asked_by")
    params.pop("priority", None)
    steps = iter(range(7))  # the stages erase() reports; the stage shown stays "publishing" (no cancel)
    receipt = erase(runtime.storage, runtime.face_pipeline, ErasureRequest(**params), job_id, asked_by,
                    result_prefixes=_recognition_outputs(jobs),
                    on_progress=lambda stage: jobs.set_progress(job_id, next(steps, 6), 6, PUBLISHING))
    jobs.succeed(job_id, {"receipt": f"receipts/{job_id}.json", "receipt_html": f"receipts/{job_id}.html",
                          "person": receipt["person"], "counts": receipt["counts"]})


def _recognition_outputs(jobs: JobStore) -> list[str]:
    """The output prefixes recognition jobs wrote their results under, outside jobs/."""
    prefixes, offset = set(), 0
    while True:
        page, total = jobs.list(job_type="recognition", limit=500, offset=offset)
        prefixes |= {job["params"]["output_prefix"].rstrip("/") + "/" for job in page
                     if job["params"].get("output_prefix")}
        offset += len(page)
        if not page or offset >= total:
            return sorted(prefixes)


@app.task(bind=True, name=task_names.SCHEDULED_TRAINING, acks_late=True)
def scheduled_training(self: Task, schedule_id: str) -> None:
    """Run by celery beat: submit the schedule's training job (once per schedule and minute)."""
    from workers.schedules import submit_scheduled_run

    submit_scheduled_run(self.app.runtime, schedule_id, self.request.id)


def _version_result(record: dict, **extra) -> dict:
    result = {"model": record["model"], "version": record["version"], "model_type": record["model_type"],
              "metrics": record["metrics"], "report": record["report_key"],
              "report_html": record.get("report_html_key"),
              "model_prefix": registry.version_prefix(record["model"], record["version"]), **extra}
    for optional in ("photos", "inherited_metrics"):
        if optional in record:
            result[optional] = record[optional]
    return result


# -- bulk recognition ------------------------------------------------------------------------
# A job's chunks are sent a window at a time (workers.chunks): each finished chunk releases the next, so that
# jobs sharing a queue take turns. Each message carries what its chunk needs from the plan (plan_for_chunk),
# so a chunk reads storage twice before its first photo (its key list, and whether it is done already, at
# once) and writes twice after its last (its timings, then its predictions).

PROGRESS_SAVED_EVERY_S = 30  # how stale a running bulk job's record may be (readers see the live counts)
_progress_saved: dict[str, float] = {}  # job id -> when this process last saved its progress


def plan_for_chunk(plan: dict, job: dict, window: int) -> dict:
    params = job["params"]
    return {**plan, "annotate": bool(params.get("annotate")), "output": bulk.output_prefix(job),
            "priority": params.get("priority", "normal"), "window": window, "index": params.get("index")}


@app.task(bind=True, base=JobTask, name=task_names.PLAN_RECOGNITION)
def plan_recognition(self: JobTask, job_id: str) -> None:
    """Split the input into chunks (once: a resumed or redelivered job keeps its plan), count the chunks
    whose predictions are written as done, and send the first window of the others (the summary task if
    none is left)."""
    runtime = self.runtime
    jobs, storage = runtime.jobs, runtime.storage
    job = jobs.get(job_id)
    if storage.exists(bulk.plan_key(job_id)):
        plan = storage.get_json(bulk.plan_key(job_id))
    else:
        params = job["params"]
        version = None if params.get("dry_run") else registry.resolve_version(
            storage, params["model"], params.get("model_version"))
        plan = bulk.make_plan(storage, job, version, runtime.settings.chunk_size)
    done = bulk.chunks_done(storage, job_id)
    job = jobs.start(job_id, total=None if job["started_at"] else plan["images"],
                     model_version=plan["model_version"])
    jobs.chunks.open(job_id, plan["chunks"], done, sum(bulk.chunk_photos(plan, i) for i in done))
    # Enough chunks in flight for every worker on the queue (two each) and at least the setting.
    workers = runtime.presence.serving().get(runtime.settings.queue_gpu, 0)
    message = plan_for_chunk(plan, job, max(runtime.settings.job_window, 2 * workers))
    if len(done) == plan["chunks"]:
        runtime.send(task_names.FINISH_RECOGNITION, [job_id], priority=message["priority"])
    else:
        _release_chunks(runtime, job_id, message)


def _release_chunks(runtime: Runtime, job_id: str, plan: dict) -> None:
    # A dry run reads headers and loads no model: its chunks go to the CPU workers of the default queue.
    queue = runtime.settings.queue_default if plan.get("dry_run") else None
    for index in runtime.jobs.chunks.release(job_id, plan["chunks"], plan["window"]):
        runtime.send(task_names.RECOGNIZE_CHUNK, [job_id, index, plan], queue=queue, priority=plan["priority"])


@app.task(bind=True, base=JobTask, name=task_names.RECOGNIZE_CHUNK)
def recognize_chunk(self: JobTask, job_id: str, index: int, plan: dict) -> None:
    """Recognise one chunk's photos (or read their headers, in a dry run) and write its predictions, unless
    they are written already; then count it done and send the next chunk, or the summary task after the
    last."""
    runtime = self.runtime
    storage = runtime.storage
    keys, written = _at_once(lambda: storage.get_json(bulk.chunk_key(job_id, index)),
                             lambda: storage.exists(bulk.predictions_key(job_id, index)))
    if not written:
        started = time.perf_counter()
        public = functools.partial(public_message, settings=runtime.settings)
        if plan.get("dry_run"):
            lines, timings = bulk.read_headers(storage, keys, public)
        else:
            lines, timings = _recognize(runtime, job_id, index, plan, keys)
        timings["total"] = (time.perf_counter() - started) * 1000
        # Both at once, one round trip: the predictions mark the chunk done; its timings are a nicety the
        # summary does without if a worker dies between the two writes.
        _at_once(lambda: storage.put_json(bulk.stats_key(job_id, index), {"images": len(keys), "timings_ms": timings}),
                 lambda: storage.put(bulk.predictions_key(job_id, index),
                                     "".join(json.dumps(line) + "\n" for line in lines).encode()))
    if runtime.jobs.chunks.finish(job_id, index, len(keys), plan["chunks"]):
        runtime.send(task_names.FINISH_RECOGNITION, [job_id], priority=plan["priority"])
        return
    _release_chunks(runtime, job_id, plan)
    if time.monotonic() - _progress_saved.get(job_id, 0.0) > PROGRESS_SAVED_EVERY_S:
        _progress_saved[job_id] = time.monotonic()
        runtime.jobs.save_chunk_progress(job_id)


def _recognize(runtime: Runtime, job_id: str, index: int, plan: dict, keys: list[str]) -> tuple[list[dict], dict]:
    """Every face of each photo named by the plan's model: a result line per key, in order; and each face
    added to the plan's face index, if it names one."""
    from pipeline.face_index import add_chunk_faces
    from pipeline.recognize import recognize

    storage = runtime.storage
    model, faces = runtime.model(plan["model"], plan["model_version"]), runtime.face_pipeline
    errors = {key: problem for key in keys if (problem := bulk.key_problem(key))}
    readable = [key for key in keys if key not in errors]

    def photos():
        for key, data in storage.get_many(readable, threads=runtime.settings.read_threads):
            if isinstance(data, Exception):
                errors[key] = public_message(data, runtime.settings)
            else:
                yield key, data

    kept: dict = {}  # each photo's faces and embeddings, for a face index
    found = {result["key"]: result for result in recognize(faces, model, photos(), keep_faces=kept)}
    if plan["annotate"]:
        _write_annotated(storage, plan["output"], found)
    if plan.get("index"):  # before the predictions, like the annotated copies; each face is added once
        add_chunk_faces(storage, plan["index"], job_id, index, kept, faces.embedder_name, plan["model"],
                        plan["model_version"])
    lines = [found.get(key) or {"key": key, "model": plan["model"], "model_version": plan["model_version"],
                                "error": errors[key]} for key in keys]
    return lines, dict(faces.timings_ms)


def _at_once(*reads: Callable) -> list:
    """The answers of independent storage reads, made at the same time: one round trip's wait for all."""
    with ThreadPoolExecutor(len(reads)) as readers:
        return [future.result() for future in [readers.submit(read) for read in reads]]


def _write_annotated(storage, output: str, found: dict[str, dict]) -> None:
    """Each recognised photo with its faces drawn on it, under <output>/annotated/<key>.jpg (written before
    the chunk's predictions, so a chunk that has predictions has its annotated copies too)."""
    from pipeline.annotate import annotate

    for key, result in found.items():
        if "error" not in result:
            storage.put(f"{output}/annotated/{key}.jpg", annotate(storage.get(key), result))


@app.task(bind=True, base=JobTask, name=task_names.FINISH_RECOGNITION)
def finish_recognition(self: JobTask, job_id: str) -> None:
    """Write the results manifest from the chunks' predictions and the summary, in one pass."""
    runtime = self.runtime
    jobs, storage = runtime.jobs, runtime.storage
    job = jobs.get(job_id)
    output = bulk.output_prefix(job)
    plan = storage.get_json(bulk.plan_key(job_id))
    results_key, summary_key = f"{output}/results.jsonl", f"{output}/summary.json"
    summary = bulk.assemble_results(storage, job_id, plan, results_key)
    dry_run = plan.get("dry_run", False)
    summary.update(model=plan["model"], model_version=plan["model_version"], chunks=plan["chunks"], job=job_id,
                   dry_run=dry_run)
    storage.put_json(summary_key, summary)
    counts = ("images", "errors", "readable") if dry_run else ("images", "faces", "unknown_faces", "errors")
    if job["params"].get("index"):  # fold the faces the job added into the index's ANN index
        runtime.send(task_names.OPTIMIZE_INDEX, [job["params"]["index"]])
    jobs.succeed(job_id, {
        "results": results_key, "summary": summary_key, "output_prefix": output,
        **({"annotated": f"{output}/annotated/"} if job["params"].get("annotate") else {}),
        "model": plan["model"], "model_version": plan["model_version"], "dry_run": dry_run,
        **{name: summary[name] for name in counts},
    }, progress={"done": plan["images"], "total": plan["images"]})
    jobs.chunks.close(job_id)


# -- single photos -----------------------------------------------------------------------------

@app.task(bind=True, name=task_names.RECOGNIZE_PHOTO, acks_late=True, ignore_result=True)
def recognize_photo(self: Task, request_id: str, key: str, model: str, version: str) -> None:
    """Recognise every face of one photo and publish the answer (workers.interactive): the result line of a
    bulk job (faces with box, landmarks, identity, score, confidence) plus timings, or {"error": ...}."""
    from pipeline.recognize import recognize

    runtime: Runtime = self.app.runtime
    started = time.perf_counter()
    try:
        data = runtime.storage.get(key)
        faces = runtime.face_pipeline
        loaded = runtime.model(model, version)
        result = next(recognize(faces, loaded, [(key, data)], batch_size=1))
        # What a face's score is compared with: a page can re-label the faces at another threshold.
        result["threshold"] = round(float(loaded.model.threshold_), 4)
        result["timings_ms"] = {stage: round(ms, 1) for stage, ms in faces.timings_ms.items()}
        result["timings_ms"]["worker_total"] = round((time.perf_counter() - started) * 1000, 1)
    except MissingKey:
        result = {"key": key, "error": f"the photo {key!r} is no longer in storage"}
    except (StorageError, LookupError, ValueError) as err:
        # Storage unreachable or the version unreadable: the asker gets a reason, the log the details.
        log.warning("recognize_photo %s: %s", request_id, err)
        result = {"key": key, "error": f"could not recognise the photo ({type(err).__name__}); try again"}
    result.update(id=request_id, model=model, model_version=version)
    interactive.publish_answer(runtime, request_id, result)


# -- face index and search ---------------------------------------------------------------------------

@app.task(bind=True, name=task_names.OPTIMIZE_INDEX, acks_late=True, ignore_result=True,
          autoretry_for=TRANSIENT_ERRORS, retry_backoff=2, max_retries=5)
def optimize_index(self: Task, name: str) -> None:
    """Fold the faces a recognition job added into the index's ANN index (sent when the job finishes)."""
    from pipeline.face_index import FaceIndex

    log.info("face index %s: %s", name, FaceIndex(self.app.runtime.storage, name).optimize())


@app.task(bind=True, name=task_names.SEARCH_FACES, acks_late=True, ignore_result=True)
def search_faces(self: Task, request_id: str, params: dict) -> None:
    """One search for someone waiting (workers.interactive): the query face from the photo (embedded here),
    the job's face or the model's person, then the index; the answer, or {"error", "status"}."""
    from pipeline import search

    runtime: Runtime = self.app.runtime
    started = time.perf_counter()
    try:
        answer = search.search(*_search_query(runtime, params), k=params["k"], in_jobs=params.get("in_jobs", []),
                               key_prefix=params.get("key_prefix"), far=params.get("far"),
                               gallery_far=params.get("gallery_far"), threshold=params.get("threshold"),
                               exact=params.get("exact", False))
    except LookupError as err:
        answer = {"error": str(err), "status": 404}
    except ValueError as err:
        answer = {"error": public_message(err, runtime.settings), "status": 400}
    except TRANSIENT_ERRORS as err:
        log.warning("search_faces %s: %s", request_id, err)
        answer = {"error": f"could not search ({type(err).__name__}); try again", "status": 503}
    except Exception:  # someone is waiting: they get an answer, the log gets the details
        log.exception("search_faces %s failed", request_id)
        answer = {"error": f"internal error searching (request {request_id}); the worker's log has the details",
                  "status": 500}
    answer.update(id=request_id, timings_ms={"worker_total": round((time.perf_counter() - started) * 1000, 1)})
    interactive.publish_answer(runtime, request_id, answer)


def _search_query(runtime: Runtime, params: dict):
    """(index, query) of a search request: the index, cached in this process, and the face to search with."""
    from pipeline import search
    from pipeline.face_index import open_index

    index = open_index(runtime.storage, params["index"])
    if params.get("photo_key"):
        faces = runtime.face_pipeline
        index.check_embedder(faces.embedder_name)
        photo = faces.process([(params["photo_key"], runtime.storage.get(params["photo_key"]))])[0]
        return index, search.photo_query(photo, params.get("face"))
    if params.get("job"):
        return index, search.face_query(index, params["job"], params["key"], params["face"])
    loaded = runtime.model(params["model"], params["model_version"])
    index.check_embedder(loaded.embedder)
    return index, search.person_query(loaded, params["person"])


@app.task(bind=True, base=JobTask, name=task_names.SEARCH_PEOPLE)
def search_people(self: JobTask, job_id: str) -> None:
    """A search job: every person of a gallery model against a face index; people.jsonl and report.html
    under jobs/<id>/output/."""
    from pipeline.face_index import open_index
    from pipeline.people_search import find_people, report_html

    runtime = self.runtime
    jobs, storage = runtime.jobs, runtime.storage
    params = jobs.start(job_id)["params"]
    version = registry.resolve_version(storage, params["model"], params.get("model_version"))
    loaded = runtime.model(params["model"], version)
    index = open_index(storage, params["index"])
    index.check_embedder(loaded.embedder)
    people = params.get("people") or list(loaded.model.labels_)
    unknown = sorted(set(people) - set(loaded.model.labels_))
    if unknown:
        raise LookupError(f"model {params['model']} version {version} has no person {', '.join(unknown[:5])}")
    progress = _progress_or_stop(jobs, job_id)
    lines = list(find_people(index, loaded, people, params.get("k", 100), params.get("in_jobs", []),
                             params.get("key_prefix"), params.get("threshold"),
                             on_person=lambda done: progress("searching", done, len(people))))
    output = f"jobs/{job_id}/output"
    facts = {"model": f"{params['model']} version {version}", "index": params["index"],
             "faces searched per person": str(params.get("k", 100)),
             "threshold": "the model's own" if params.get("threshold") is None else str(params["threshold"])}
    storage.put(f"{output}/people.jsonl", "".join(json.dumps(line) + "\n" for line in lines).encode())
    storage.put(f"{output}/report.html", report_html(storage, lines, f"Where {params['model']}'s people appear in "
                                                                     f"{params['index']}", facts).encode())
    jobs.succeed(job_id, {"people": f"{output}/people.jsonl", "report": f"{output}/report.html",
                          "model": params["model"], "model_version": version, "index": params["index"],
                          "people_searched": len(lines), "people_found": sum(bool(line["faces"]) for line in lines),
                          "faces": sum(len(line["faces"]) for line in lines)})
