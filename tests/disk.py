"""A small disk of its own for a test (a tmpfs, mounted as root, as CI runs), to fill up on purpose."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_disk(where: Path, megabytes: int) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small disk to fill (needs root, as CI has): {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def fill(disk: Path, leave_bytes: int = 0) -> Path:
    """Fill the disk but for leave_bytes; returns the filler file (delete it to free the space)."""
    filler = disk / "filler"
    stat = os.statvfs(disk)
    size = max(0, stat.f_bavail * stat.f_frsize - leave_bytes)
    with contextlib.suppress(OSError), open(filler, "wb") as file:  # the last block may not fit: full is full
        file.write(b"\0" * size)
    return filler
