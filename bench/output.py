"""Where a benchmark's figures go: a JSON file (bench/results/<name>.json) and, as the last line printed, the
same JSON on one line, for a person or a script reading the output."""

from __future__ import annotations

import json
from pathlib import Path


def publish(summary: dict, path: Path | None) -> None:
    """Write summary to path (its folder made if needed; None writes nothing: a quick run) and print it."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
