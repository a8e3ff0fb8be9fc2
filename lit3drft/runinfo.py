"""Provenance written beside every result: commit, device, wall time; atomic file writes."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch


def git_commit(cwd: str | Path | None = None) -> str:
    """Short commit of the working tree (``-dirty`` when it has changes outside ``results/``), or ``unknown``.

    Changes under ``results/`` do not count: a sweep appending rows to a committed ``runs.csv`` would otherwise
    mark every later run of the grid dirty.
    """
    cwd = cwd or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ":/", ":(top,exclude)results"],
            cwd=cwd,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def device_description() -> str:
    """``"NVIDIA H100 80GB HBM3 x1"`` or ``"cpu: <processor> (N threads)"``."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    proc = platform.processor() or platform.machine()
    return f"cpu: {proc} ({torch.get_num_threads()} threads, {os.cpu_count()} cores)"


def write_json_atomic(path: str | Path, payload: Any) -> None:
    """Write JSON to a temporary file in the same directory, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=2, sort_keys=True, default=float)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def format_metrics(metrics: dict[str, float], skip_per_class: bool = True) -> str:
    """Aligned ``name  value`` lines, sorted; per-class detection F1 left out unless asked.

    Example:
        >>> print(format_metrics({"test/format_rate": 100.0, "test/detection/f1/chair": 3.0}))
        test/format_rate    100.00
    """
    rows = {k: v for k, v in metrics.items() if not (skip_per_class and "/f1/" in k)}
    width = max(map(len, rows), default=10)
    return "\n".join(f"{k:<{width}}  {v:8.2f}" for k, v in sorted(rows.items()))
