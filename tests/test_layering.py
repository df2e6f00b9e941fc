"""The layering the project promises: the API never loads TensorFlow, the pipeline never imports
Celery or Flask."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from api.keys import config_entry

pytestmark = pytest.mark.system  # fresh interpreters

REPO = Path(__file__).resolve().parents[1]


def modules_loaded_by(code: str, tmp_path: Path) -> set[str]:
    """Run code in a fresh interpreter (on the embedded default) and return the modules it loaded."""
    script = code + "\nimport sys\nprint('\\n'.join(sys.modules))\n"
    env = {"PYTHONPATH": str(REPO), "FACEREC_DATA_DIR": str(tmp_path), "PATH": "",
           "FACEREC_API_KEYS": config_entry("t", "admin", "k")}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_the_api_serves_requests_without_loading_tensorflow(tmp_path):
    loaded = modules_loaded_by(
        "from api import create_app\n"
        "client = create_app().test_client()\n"
        "for path in ('/v1/health', '/v1/jobs', '/v1/models', '/v1/schedules'):\n"
        "    assert client.get(path, headers={'X-API-Key': 'k'}).status_code == 200, path\n"
        "assert client.post('/v1/jobs/training', headers={'X-API-Key': 'k'}, json={}).status_code == 400\n"
        "body = {'dataset_prefix': 'd', 'model_params': {'epochs': 5}}\n"
        "assert client.post('/v1/jobs/training', headers={'X-API-Key': 'k'}, json=body).status_code == 404\n",
        tmp_path)
    assert "flask" in loaded and "workers.submit" in loaded
    assert not {"tensorflow", "keras", "mtcnn"} & loaded


def test_the_pipeline_imports_neither_celery_nor_flask(tmp_path):
    modules = [f"pipeline.{p.stem}" for p in (REPO / "pipeline").glob("*.py") if p.stem != "__init__"]
    modules += [f"pipeline.models.{p.stem}" for p in (REPO / "pipeline" / "models").glob("*.py")
                if p.stem != "__init__"]
    loaded = modules_loaded_by("\n".join(f"import {m}" for m in sorted(modules)), tmp_path)
    assert set(modules) <= loaded
    assert not {"celery", "flask", "kombu"} & loaded
