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
import time

from pipeline.storage import Storage
from workers.runtime import Runtime
from workers.task_names import RECOGNIZE_PHOTO

PREFIX = "interactive"  # storage folder of single-photo requests: interactive/<id>/{photo,request,result}.json
ANSWER_TTL_S = 120  # how long an unread answer waits in Redis (the stored one stays)
BLOCK_SLICE_S = 2.0


def photo_key(request_id: str) -> str:
    return f"{PREFIX}/{request_id}/photo"


def result_key(request_id: str) -> str:
    return f"{PREFIX}/{request_id}/result.json"


def request_key(request_id: str) -> str:
    return f"{PREFIX}/{request_id}/request.json"


def answer_list(request_id: str) -> str:
    """The Redis list the answer is pushed to, for the API blocked on it."""
    return f"facerec:interactive:{request_id}"


def send(runtime: Runtime, request_id: str, key: str, model: str, version: str) -> None:
    """Enqueue the recognition of the photo stored under key (called by the API; loads no model)."""
    runtime.send(RECOGNIZE_PHOTO, [request_id, key, model, version], queue=runtime.settings.queue_interactive)


def wait_for_answer(runtime: Runtime, request_id: str, timeout_s: float) -> dict | None:
    """The answer to a request, waiting at most timeout_s; None if it has not come by then."""
    redis = runtime.redis
    deadline = time.monotonic() + timeout_s
    if redis is not None:
        # In slices shorter than the client's socket timeout (redis-py's default is 5 s), which a
        # longer blocking read would hit.
        while (left := deadline - time.monotonic()) > 0:
            popped = redis.blpop([answer_list(request_id)], timeout=min(left, BLOCK_SLICE_S))
            if popped is not None:
                return json.loads(popped[1])
        return stored_answer(runtime.storage, request_id)  # pushed before a restart of Redis, perhaps
    # Embedded default: no Redis to block on, so poll the stored answer.
    while True:
        answer = stored_answer(runtime.storage, request_id)
        if answer is not None or time.monotonic() >= deadline:
            return answer
        time.sleep(0.05)


def stored_answer(storage: Storage, request_id: str) -> dict | None:
    key = result_key(request_id)
    return storage.get_json(key) if storage.exists(key) else None


def publish_answer(runtime: Runtime, request_id: str, answer: dict) -> None:
    """Give the answer to the one waiting (Redis) and store it for a later poll."""
    redis = runtime.redis
    if redis is not None:  # first, so that the one waiting is answered before the stored copy is written
        pipe = redis.pipeline()
        pipe.rpush(answer_list(request_id), json.dumps(answer))
        pipe.expire(answer_list(request_id), ANSWER_TTL_S)
        pipe.execute()
    runtime.storage.put_json(result_key(request_id), answer)
