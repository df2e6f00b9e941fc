"""infra/k8s/: rendered as `kubectl apply -k` would, validated offline against the Kubernetes JSON schemas
that kubernetes-validate ships (strict: unknown fields are errors), and KEDA's ScaledObject against the
schema in infra/k8s/schemas/ (a CRD kubernetes-validate does not know). Then what the manifests mean:
commands, queues, probes, GPUs and secrets agree with the code; and the workers' probe command is run
against a real worker on Redis.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
import urllib.parse
import uuid
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from config import REPO_ROOT, load_settings
from infra.processes import Processes, environment
from workers.celery_config import celery_config
from workers.runtime import PRIORITIES

K8S = REPO_ROOT / "infra" / "k8s"
KEDA_SCHEMA = K8S / "schemas" / "scaledobject-keda-v1alpha1.json"
# The oldest Kubernetes still maintained when this was written, and the newest the package knows.
KUBERNETES_VERSIONS = ("1.32", kubernetes_validate.utils.latest_version())
CLUSTER_SCOPED = {"Namespace"}
PROBE_KINDS = ("startupProbe", "readinessProbe", "livenessProbe")


def render() -> list[dict]:
    """The objects `kubectl apply -k infra/k8s/` applies. The kustomization uses only `resources` and
    `namespace`; anything else would be refused here rather than rendered wrongly."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    unknown = set(kustomization) - {"apiVersion", "kind", "namespace", "resources"}
    assert not unknown, f"kustomization fields this renderer does not apply: {sorted(unknown)}"
    objects = []
    for name in kustomization["resources"]:
        for obj in yaml.safe_load_all((K8S / name).read_text()):
            if obj is None:
                continue
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = kustomization["namespace"]
            objects.append(obj)
    return objects


@pytest.fixture(scope="module")
def objects() -> list[dict]:
    return render()


def find(objects: list[dict], kind: str, name: str) -> dict:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def container(deployment: dict) -> dict:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def config_map(objects: list[dict]) -> dict[str, str]:
    return find(objects, "ConfigMap", "facerec-config")["data"]


# -- rendering and schemas -------------------------------------------------------------------------

def test_every_manifest_is_in_the_kustomization():
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_objects_validate_against_kubernetes_schemas(objects, version):
    keda = json.loads(KEDA_SCHEMA.read_text())
    checked = []
    for obj in objects:
        if obj["apiVersion"].startswith("keda.sh/"):
            jsonschema.validate(obj, keda, cls=jsonschema.Draft202012Validator)
        else:
            kubernetes_validate.validate(obj, version, strict=True)
        checked.append(f"{obj['kind']}/{obj['metadata']['name']}")
    assert sorted(checked) == sorted([
        "Namespace/facerec", "ConfigMap/facerec-config", "Deployment/facerec-api", "Service/facerec-api",
        "Deployment/facerec-worker-gpu", "Deployment/facerec-worker-cpu", "Deployment/facerec-beat",
        "ScaledObject/facerec-worker-gpu"])


def test_validation_catches_mistakes(objects):
    """The checks above can fail: a misspelt field, a wrong type, a trigger without its list."""
    api = json.loads(json.dumps(find(objects, "Deployment", "facerec-api")))
    container(api)["readinesProbe"] = container(api).pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(api, KUBERNETES_VERSIONS[-1], strict=True)

    keda = json.loads(KEDA_SCHEMA.read_text())
    scaled = find(objects, "ScaledObject", "facerec-worker-gpu")
    for spoil in (lambda t: t["metadata"].pop("listName"), lambda t: t["metadata"].update(listLength=4),
                  lambda t: t["metadata"].pop("addressFromEnv"), lambda t: t.update(metdata={})):
        broken = json.loads(json.dumps(scaled))
        spoil(broken["spec"]["triggers"][0])
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, keda, cls=jsonschema.Draft202012Validator)


# -- what the manifests mean --------------------------------------------------------------------------

def test_api_serves_on_the_probed_port_and_path(objects):
    from api import create_app

    api = find(objects, "Deployment", "facerec-api")
    port = {p["name"]: p["containerPort"] for p in container(api)["ports"]}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container(api)[probe]["httpGet"]["path"] == "/v1/health"
        assert container(api)[probe]["httpGet"]["port"] in port
    assert port["http"] == 8000  # gunicorn's --bind in infra/Dockerfile.cpu
    assert "0.0.0.0:8000" in (REPO_ROOT / "infra" / "Dockerfile.cpu").read_text()
    service = find(objects, "Service", "facerec-api")
    assert service["spec"]["selector"].items() <= api["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    # The probed route answers without a key and without Redis or S3.
    assert create_app().test_client().get("/v1/health").status_code == 200


def test_gpu_worker_takes_one_gpu_and_serves_photos_before_chunks(objects):
    gpu = find(objects, "Deployment", "facerec-worker-gpu")
    worker = container(gpu)
    assert worker["command"] == ["celery", "-A", "workers.app", "worker", "-Q", "interactive,gpu", "-c", "1",
                                 "--prefetch-multiplier", "1", "--loglevel", "INFO"]
    assert worker["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["image"].startswith("facerec-gpu")
    assert "replicas" not in gpu["spec"], "KEDA owns the GPU workers' replica count"
    for probe in PROBE_KINDS:
        assert probe in worker


def test_cpu_worker_and_beat(objects):
    cpu = container(find(objects, "Deployment", "facerec-worker-cpu"))
    assert cpu["command"][:6] == ["celery", "-A", "workers.app", "worker", "-Q", "default"]
    assert "nvidia.com/gpu" not in json.dumps(cpu)
    assert {"readinessProbe", "livenessProbe"} <= set(cpu)

    beat = find(objects, "Deployment", "facerec-beat")
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"]["type"] == "Recreate"
    assert container(beat)["command"][:6] == ["celery", "-A", "workers.app", "beat", "-S", "redbeat.RedBeatScheduler"]


def test_queues_agree_with_the_code(objects):
    """Worker commands, the ConfigMap and KEDA's lists name the queues the app routes tasks to."""
    routes = {task: route["queue"] for task, route in celery_config(load_settings())["task_routes"].items()}
    settings = config_map(objects)
    assert settings["FACEREC_QUEUE_GPU"] == routes["facerec.recognize_chunk"] == routes["facerec.train"]
    assert settings["FACEREC_QUEUE_INTERACTIVE"] == routes["facerec.recognize_photo"]
    assert settings["FACEREC_QUEUE_DEFAULT"] == routes["facerec.plan_recognition"]

    gpu_queues = container(find(objects, "Deployment", "facerec-worker-gpu"))["command"][5].split(",")
    assert gpu_queues == [settings["FACEREC_QUEUE_INTERACTIVE"], settings["FACEREC_QUEUE_GPU"]]
    cpu_queues = container(find(objects, "Deployment", "facerec-worker-cpu"))["command"][5].split(",")
    assert cpu_queues == [settings["FACEREC_QUEUE_DEFAULT"]]

    scaled = find(objects, "ScaledObject", "facerec-worker-gpu")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "facerec-worker-gpu"
    # The gpu queue's list per priority a job can have (kombu's Redis transport names them queue:priority,
    # and priority 0 the queue itself); single photos are sent without one.
    gpu = settings["FACEREC_QUEUE_GPU"]
    lists = {gpu if step == 0 else f"{gpu}:{step}" for step in PRIORITIES.values()}
    lists.add(settings["FACEREC_QUEUE_INTERACTIVE"])
    assert {t["metadata"]["listName"] for t in scaled["spec"]["triggers"] if t["type"] == "redis"} == lists
    backlog = [t for t in scaled["spec"]["triggers"] if t["type"] == "metrics-api"]
    assert [t["metadata"]["valueLocation"] for t in backlog] == [f"backlog.{settings['FACEREC_QUEUE_GPU']}"]
    service = find(objects, "Service", "facerec-api")
    assert backlog[0]["metadata"]["url"] == f"http://{service['metadata']['name']}.facerec.svc/v1/health"


def test_keda_reads_the_redis_that_workers_use(objects):
    settings = config_map(objects)
    url = urllib.parse.urlsplit(settings["REDIS_URL"])
    assert settings["REDIS_ADDRESS"] == f"{url.hostname}:{url.port or 6379}"
    db = (url.path.strip("/") or "0")
    for trigger in find(objects, "ScaledObject", "facerec-worker-gpu")["spec"]["triggers"]:
        if trigger["type"] == "metrics-api":
            continue
        assert trigger["type"] == "redis"
        assert trigger["metadata"]["addressFromEnv"] == "REDIS_ADDRESS"
        assert trigger["metadata"]["databaseIndex"] == db


def test_config_map_holds_only_known_settings_and_no_secrets(objects):
    settings = config_map(objects)
    source = (REPO_ROOT / "config.py").read_text()
    for name in settings:
        if name == "REDIS_ADDRESS":  # for KEDA, not the app
            continue
        assert f'"{name}"' in source, f"{name} is not read by config.py"
    for secret in ("FACEREC_API_KEYS", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY", "FACEREC_SECRET_KEY"):
        assert secret not in settings


def test_secrets_are_referenced_never_committed(objects):
    """No Secret object (nor value) is committed; the pods that need the key entries and the S3
    credentials take them from the Secrets infra/README.md tells you to create."""
    assert not [o for o in objects if o["kind"] == "Secret"]
    readme = (REPO_ROOT / "infra" / "README.md").read_text()
    needs = {"facerec-api": {"FACEREC_API_KEYS", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"},
             "facerec-worker-gpu": {"S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"},
             "facerec-worker-cpu": {"S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"}}
    for name, variables in needs.items():
        env = {e["name"]: e for e in container(find(objects, "Deployment", name)).get("env", [])}
        for variable in variables:
            ref = env[variable]["valueFrom"]["secretKeyRef"]
            assert not ref.get("optional"), f"{name} must not start without {variable}"
            assert f"create secret generic {ref['name']}" in readme
            assert f"--from-literal={ref['key']}=" in readme or f"--from-file={ref['key']}=" in readme


def test_pods_run_as_the_images_user(objects):
    for obj in objects:
        if obj["kind"] != "Deployment":
            continue
        pod = obj["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001  # useradd --uid 10001 in both Dockerfiles
        assert container(obj)["securityContext"]["allowPrivilegeEscalation"] is False


# -- the workers' probe, run for real ------------------------------------------------------------------

def probe_command(objects: list[dict]) -> list[str]:
    commands = {json.dumps(container(find(objects, "Deployment", name))[probe]["exec"]["command"])
                for name in ("facerec-worker-gpu", "facerec-worker-cpu") for probe in PROBE_KINDS
                if probe in container(find(objects, "Deployment", name))}
    assert len(commands) == 1, "every worker probe runs the same command"
    command = json.loads(commands.pop())
    assert command[:2] == ["sh", "-c"]  # $HOSTNAME is expanded by the shell, not by Kubernetes
    return command


def test_worker_probe_answers_for_a_live_worker_only(objects, redis_url, tmp_path):
    """The exec probe, as written in the manifests, against a worker on a real Redis: exit 0 while the
    worker named celery@$HOSTNAME lives, non-zero for a name no worker has."""
    command = probe_command(objects)
    host = f"probe-{uuid.uuid4().hex[:8]}"
    env = environment(REDIS_URL=redis_url, FACEREC_DATA_DIR=str(tmp_path), FACEREC_QUEUE_DEFAULT=f"k8s-probe-{host}",
                      # This worker's watchdog must never sweep (it would see other tests' jobs): not within an hour.
                      FACEREC_HEARTBEAT_S="3600", FACEREC_JOB_STALL_S="86400")
    celery = str(Path(sys.executable).with_name("celery"))
    probe_env = {**env, "PATH": f"{Path(celery).parent}:{env.get('PATH', '')}"}
    with Processes(env, tmp_path / "logs") as processes:
        # The worker named as the manifests' probe expects it: celery@$HOSTNAME.
        worker = processes.start("worker", [celery, "-A", "workers.app", "worker", "-Q", env["FACEREC_QUEUE_DEFAULT"],
                                            "-c", "1", "-n", f"celery@{host}", "--loglevel", "WARNING"])
        deadline, answered = time.monotonic() + 60, None
        while time.monotonic() < deadline and worker.poll() is None:
            answered = subprocess.run(command, cwd=REPO_ROOT, env={**probe_env, "HOSTNAME": host},
                                      capture_output=True, text=True, timeout=60)
            if answered.returncode == 0:
                break
            time.sleep(1)
        assert worker.poll() is None, f"worker exited: {processes.log_tail('worker')}"
        assert answered is not None and answered.returncode == 0, answered and answered.stdout + answered.stderr
        assert f"celery@{host}" in answered.stdout and "pong" in answered.stdout

        other = subprocess.run(command, cwd=REPO_ROOT, env={**probe_env, "HOSTNAME": f"{host}-gone"},
                               capture_output=True, text=True, timeout=60)
        assert other.returncode != 0, other.stdout


def test_probe_command_is_valid_shell(objects):
    script = probe_command(objects)[2]
    words = shlex.split(script)
    assert words[:6] == ["exec", "celery", "-A", "workers.app", "inspect", "ping"]
    assert words[words.index("--destination") + 1] == "celery@$HOSTNAME"
