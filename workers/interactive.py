"""Single-photo recognition for people waiting on an answer (the web page, `facerec recognize`, the API).

The API stores the photo, sends ``facerec.recognize_photo`` to the interactive queue and waits a bounded
time for the answer. Workers that consume the interactive queue before their bulk queue
(``-Q interactive,gpu``, Redis's ``priority`` queue order) pick it up as soon as their current task ends.

The answer travels two ways: it is written to storage under ``interactive/<id>/result.json`` (so a
client that stopped waiting can poll ``GET /v1/recognize/<id>``), and with Redis it is also pushed to a
short-lived list the API blocks on, which costs one round trip instead of polling storage.
"""

from __future__ import annotations

import json
import logging
import time

from workers import runtime
from workers.app import QUEUE_INTERACTIVE, app

log = logging.getLogger(__name__)

PREFIX = "interactive"  # storage folder of single-photo requests: interactive/<id>/{photo,request,result}.json
ANSWER_TTL_S = 120  # how long an unread answer waits in Redis (the stored one stays)
BLOCK_SLICE_S = 2.0


def photo_key(request_id: str) -> str:
    return f"{PREFIX}/{request_id}/photo"


def result_key(request_id: str) -> str:
    return f"{PREFIX}/{request_id}/result.json"


def request_key(request_id: str) -> str:
    return f"{PREFIX}/{request_id}/request.json"


def _answer_list(request_id: str) -> str:
    return f"facerec:interactive:{request_id}"


def send(request_id: str, key: str, model: str, version: str) -> None:
    """Enqueue the recognition of the photo stored under key (called by the API; loads no model)."""
    app.send_task("facerec.recognize_photo", args=[request_id, key, model, version], queue=QUEUE_INTERACTIVE)


def wait_for_answer(request_id: str, timeout_s: float) -> dict | None:
    """The answer to a request, waiting at most timeout_s; None if it has not come by then."""
    redis = runtime.redis_client()
    deadline = time.monotonic() + timeout_s
    if redis is not None:
        # In slices shorter than the client's socket timeout (redis-py's default is 5 s), which a
        # longer blocking read would hit.
        while (left := deadline - time.monotonic()) > 0:
            popped = redis.blpop([_answer_list(request_id)], timeout=min(left, BLOCK_SLICE_S))
            if popped is not None:
                return json.loads(popped[1])
        return stored_answer(request_id)  # pushed before a restart of Redis, perhaps
    # Embedded default: no Redis to block on, so poll the stored answer.
    while True:
        answer = stored_answer(request_id)
        if answer is not None or time.monotonic() >= deadline:
            return answer
        time.sleep(0.05)


def stored_answer(request_id: str) -> dict | None:
    storage = runtime.storage()
    key = result_key(request_id)
    return storage.get_json(key) if storage.exists(key) else None


@app.task(name="facerec.recognize_photo", acks_late=True, ignore_result=True)
def recognize_photo(request_id: str, key: str, model: str, version: str) -> None:
    """Recognise every face of one photo and publish the answer: the result line of a bulk job (faces
    with box, landmarks, identity, score, confidence) plus timings, or {"error": ...}."""
    from pipeline.recognize import recognize
    from pipeline.storage import MissingKey, StorageError

    started = time.perf_counter()
    storage = runtime.storage()
    try:
        data = storage.get(key)
        faces = runtime.face_pipeline()
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
    redis = runtime.redis_client()
    if redis is not None:  # first, so that the one waiting is answered before the stored copy is written
        pipe = redis.pipeline()
        pipe.rpush(_answer_list(request_id), json.dumps(result))
        pipe.expire(_answer_list(request_id), ANSWER_TTL_S)
        pipe.execute()
    storage.put_json(result_key(request_id), result)
