"""/v1/health: whether the API is up, what it runs on, and whether anything serves each queue (no key needed)."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from api.context import runtime
from api.endpoints import endpoint

health = Blueprint("health", __name__, url_prefix="/v1")

# What waits in each queue when no worker serves it, for the warning a person reads.
QUEUE_WORK = {"gpu": "training, enrolment and bulk-recognition chunks", "default": "planning and summing up bulk jobs",
              "interactive": "single photos from the web page and `facerec recognize`"}


@health.get("/health")
@endpoint(None)
def get_health():
    """Liveness (200 while the API answers), the broker and storage it uses, how many workers serve each queue,
    how many messages wait in each, how many chunks of bulk jobs wait for their turn (backlog), and a warning
    for each queue that no worker serves."""
    settings = runtime().settings
    queues = {settings.queue_gpu: "gpu", settings.queue_default: "default",
              settings.queue_interactive: "interactive"}
    warnings = []
    try:
        serving = runtime().presence.serving()
    except Exception as err:  # the API answers even while Redis or the disk does not
        current_app.logger.warning("health: cannot read the workers' presence: %s", err)
        serving, warnings = None, ["cannot tell which workers are up: Redis or the data folder does not answer"]
    try:
        waiting = runtime().queue_depth.per_queue()
    except Exception as err:
        current_app.logger.warning("health: cannot read the queues: %s", err)
        waiting = None
        warnings.append("cannot tell how many tasks wait: the broker does not answer")
    if serving is not None:
        for queue, kind in queues.items():
            if not serving.get(queue):
                queued = f" ({waiting[queue]} waiting)" if waiting and waiting.get(queue) else ""
                warnings.append(f"no worker is serving queue {queue}{queued}: {QUEUE_WORK[kind]} wait until one starts")
    try:
        # Chunks of running bulk jobs waiting for their turn: each job queues only a few at a time, so this,
        # not the queue's length, is what more GPU workers would take on (infra/k8s/keda.yaml reads it).
        backlog = {settings.queue_gpu: sum(runtime().jobs.chunks.waiting(job["id"])
                                           for job in runtime().jobs.unfinished() if job["type"] == "recognition")}
    except Exception as err:
        current_app.logger.warning("health: cannot read the backlog: %s", err)
        backlog = None
    return jsonify(status="ok", broker="embedded" if settings.embedded else "redis", backlog=backlog,
                   storage="s3" if settings.uses_s3 else "local",
                   workers={queue: (serving or {}).get(queue, 0) for queue in queues} if serving is not None else None,
                   queues=waiting, warnings=warnings)
