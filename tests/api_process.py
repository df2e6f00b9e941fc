"""The HTTP API alone as a real process, for tests of the API itself: on Redis, with local-disk storage
in a temporary folder and the test keys of tests.system, and no workers (submitted jobs stay queued)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from infra.processes import Processes, environment
from tests.system import API_KEY_ENTRIES


@contextmanager
def running_api(folder: Path, redis_url: str, api_keys: str = API_KEY_ENTRIES) -> Iterator[dict]:
    """Yields {"base": "http://127.0.0.1:PORT", "log": path of its log, "data_dir": its FACEREC_DATA_DIR}."""
    data_dir = folder / "data"
    env = environment(REDIS_URL=redis_url, FACEREC_DATA_DIR=str(data_dir), FACEREC_API_KEYS=api_keys)
    with Processes(env, folder) as processes:
        base = processes.start_api()
        yield {"base": base, "log": processes.log_paths["api"], "data_dir": data_dir}
