"""Settings for a test's own API or runtime: this machine's, on the embedded default (no Redis, local disk)
in a folder of the test's, with the changes given."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from config import Settings, load_settings


def embedded(data_dir: Path, **changes) -> Settings:
    return dataclasses.replace(load_settings(), data_dir=data_dir, cache_dir=load_settings().cache_dir, redis_url="",
                               s3_endpoint_url="", **changes)
