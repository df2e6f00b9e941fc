"""docker-compose.yml and the Dockerfiles, read as files (no Docker engine here): GPU workers reserve
one NVIDIA GPU each and run as infra/k8s runs them; the GPU image is the CPU image plus TensorFlow's
CUDA build at the version requirements.txt pins."""

from __future__ import annotations

import json
import re
import shlex

import yaml

from config import REPO_ROOT

INFRA = REPO_ROOT / "infra"
GPU_WORKER = ["celery", "-A", "workers.app", "worker", "-Q", "interactive,gpu", "-c", "1",
              "--prefetch-multiplier", "1", "--loglevel", "INFO"]


def compose() -> dict:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())


def instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    lines = [line for line in (INFRA / name).read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined.splitlines() if line.strip()]


def test_gpu_worker_reserves_one_nvidia_gpu():
    services = compose()["services"]
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert shlex.split(services["worker-gpu"]["command"]) == GPU_WORKER
    for name, service in services.items():
        if name != "worker-gpu":
            assert "nvidia" not in json.dumps(service), f"{name} should not hold a GPU"


def test_gpu_image_is_the_cpu_image_plus_tensorflow_cuda():
    gpu, cpu = instructions("Dockerfile.gpu"), instructions("Dockerfile.cpu")
    assert [a for i, a in gpu if i == "FROM"] == [a for i, a in cpu if i == "FROM"]
    # Same user, code and baked weights, so either image runs the same code the same way.
    for kind in ("COPY", "USER", "WORKDIR"):
        assert [a for i, a in gpu if i == kind] == [a for i, a in cpu if i == kind], kind
    assert [a for i, a in gpu if i == "RUN"][0] == [a for i, a in cpu if i == "RUN"][0]  # the user
    assert [a for i, a in gpu if i == "RUN"][-1] == [a for i, a in cpu if i == "RUN"][-1]  # the weights

    pinned = re.search(r"^tensorflow==(\S+)$", (REPO_ROOT / "requirements.txt").read_text(), re.M).group(1)
    installs = [a for i, a in gpu if i == "RUN" and "pip install" in a]
    assert installs == [f'pip install -r requirements.txt "tensorflow[and-cuda]=={pinned}"']
    env = " ".join(a for i, a in gpu if i == "ENV")
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in env  # else no libcuda in the container


def test_gpu_image_runs_the_gpu_worker():
    command = [a for i, a in instructions("Dockerfile.gpu") if i == "CMD"]
    assert len(command) == 1 and json.loads(command[0]) == GPU_WORKER


def test_every_service_comes_back_when_its_process_exits():
    """A worker that exits (a crash, the OOM killer, a full disk) is started again, as Kubernetes does."""
    for name, service in compose()["services"].items():
        assert service.get("restart") == "unless-stopped", name
