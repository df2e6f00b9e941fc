"""CPU time and peak memory of process trees (a worker and its pool children), read from /proc, for benchmarks
that run the system as processes (infra.processes).

    meter = ProcessMeter({"api": api_pid, "gpu-worker-1": pid, ...})   # names, each the root of a tree
    meter.reset_peaks(); before = meter.cpu_s()
    ... run ...
    meter.cpu_s()["gpu-worker-1"] - before["gpu-worker-1"]; meter.peak_rss_mb()

A tree's CPU is its processes' own (user and system) plus what each counted for its children that ended:
a pool child replaced meanwhile still counts. Peaks are each process's VmHWM, sampled on a thread every
`every_s` so that a child that ends between two reads of the totals is still seen.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float, float] | None:
    """(parent pid, own CPU seconds, ended children's CPU seconds) of a process; None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) ": state is fields[0]
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return int(fields[1]), (utime + stime) / TICKS, (cutime + cstime) / TICKS


def _hwm_kb(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def process_trees(roots: dict[str, int]) -> dict[str, list[int]]:
    """Each root and every live process below it, from one read of /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            children.setdefault(stat[0], []).append(int(entry))
    trees = {}
    for name, root in roots.items():
        found, todo = [], [root]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        trees[name] = found
    return trees


class ProcessMeter:
    """CPU and peak resident memory of named process trees."""

    def __init__(self, roots: dict[str, int], every_s: float = 0.5) -> None:
        self.roots = dict(roots)
        self.every_s = every_s
        self._peaks: dict[tuple[str, int], int] = {}  # (tree, pid) -> highest VmHWM seen, kB
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_until_stopped, name="process-meter", daemon=True)

    def __enter__(self) -> ProcessMeter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def add(self, name: str, pid: int) -> None:
        self.roots[name] = pid

    def cpu_s(self) -> dict[str, float]:
        """Each tree's CPU seconds so far."""
        totals = {}
        for name, pids in process_trees(self.roots).items():
            totals[name] = sum(stat[1] + stat[2] for pid in pids if (stat := _stat(pid)) is not None)
        return totals

    def sample(self) -> None:
        """Read every process's peak now."""
        for name, pids in process_trees(self.roots).items():
            for pid in pids:
                kb = _hwm_kb(pid)
                with self._lock:
                    self._peaks[(name, pid)] = max(kb, self._peaks.get((name, pid), 0))

    def reset_peaks(self) -> None:
        """Start the peaks again from what each process holds now (clear_refs 5 resets VmHWM)."""
        for pids in process_trees(self.roots).values():
            for pid in pids:
                with contextlib.suppress(OSError):
                    Path(f"/proc/{pid}/clear_refs").write_text("5")
        with self._lock:
            self._peaks.clear()
        self.sample()

    def peak_rss_mb(self) -> dict[str, dict[str, float]]:
        """Per tree: the highest peak of its root process and of any process below it, in MB."""
        self.sample()
        peaks: dict[str, dict[str, float]] = {}
        with self._lock:
            for (name, pid), kb in self._peaks.items():
                which = "main" if pid == self.roots[name] else "children"
                tree = peaks.setdefault(name, {"main": 0.0, "children": 0.0})
                tree[which] = max(tree[which], round(kb / 1024, 1))
        return peaks

    def _sample_until_stopped(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()
