"""Readers of the real formats: VG-LLM rows (ScanNet detection, ScanRefer grounding) and VSI-Bench rows.

Reading is two-step so that a bad row is found at setup and media are decoded only when used:
``read_records`` parses and checks every row of a file into light ``Record`` s (no pixels), and
``load_sample`` turns one record into a ``Sample`` in a given answer mode, decoding its frames.
Errors name the file and the row (``file:row``, rows counted from 0 as in sample ids; ``.jsonl`` rows add their
``(line N)``, counted from 1) and the bad key; with ``on_bad_sample="skip"`` bad rows are counted and logged.
Problems with a whole file (missing, unreadable, no rows, every row bad) are errors in both modes.

One module per part: ``records`` (``Record``, ``BadSampleError``, ``SkipCounter``, the shared row checks),
``vgllm`` and ``vsibench`` (one row format each) and ``media`` (decoding, ``load_sample``); this module reads
files and re-exports their public names, so ``lit3drft.data.readers`` serves all of them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from lit3drft.data.media import load_sample, sample_video_frames
from lit3drft.data.records import BadSampleError, Record, SkipCounter
from lit3drft.data.sample import TASKS
from lit3drft.data.vgllm import vgllm_record
from lit3drft.data.vsibench import vsibench_record

__all__ = [
    "BadSampleError",
    "Record",
    "SkipCounter",
    "load_rows",
    "load_sample",
    "read_records",
    "sample_video_frames",
    "vgllm_record",
    "vsibench_record",
]

log = logging.getLogger(__name__)


def load_rows(path: str | Path) -> list[dict]:
    """Rows of a ``.jsonl``, ``.json`` (a list, or a dict with ``data``) or ``.parquet`` file.

    A ``.jsonl`` line that is not JSON becomes ``{"__error__": reason}`` (so one bad line is one bad row).
    """
    return _rows_and_lines(Path(path))[0]


def _rows_and_lines(path: Path) -> tuple[list, list[int] | None]:
    """Rows and, for ``.jsonl``, the (1-based) line of each; a file that cannot be read is a ``BadSampleError``."""
    if not path.is_file():
        raise BadSampleError(f"{path}: file not found")
    try:
        if path.suffix == ".parquet":
            import pandas as pd

            return pd.read_parquet(path).to_dict(orient="records"), None
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError) as e:  # undecodable text, a broken parquet file (pyarrow errors are ValueErrors)
        raise BadSampleError(f"{path}: cannot read the file ({type(e).__name__}: {e})") from e
    if path.suffix == ".jsonl":
        rows, lines = [], []
        for i, line in enumerate(text.splitlines()):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except (ValueError, RecursionError) as e:
                    rows.append({"__error__": f"invalid JSON ({e})"})
                lines.append(i + 1)
        return rows, lines
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise BadSampleError(f"{path}: not valid JSON ({e})") from e
    if isinstance(data, dict):
        if "data" not in data:
            raise BadSampleError(f"{path}: a JSON object needs a 'data' list of rows; keys: {sorted(data)[:10]}")
        data = data["data"]
    if not isinstance(data, list):
        raise BadSampleError(f"{path}: rows must be a JSON list (or {{'data': [...]}}), got {type(data).__name__}")
    return data, None


def read_records(
    path: str | Path,
    task: str,
    fmt: str,
    source: str,
    media_root: str | Path,
    frames: int = 16,
    on_bad_sample: str = "error",
    skipped: SkipCounter | None = None,
) -> list[Record]:
    """Parse and check every row of one task file (no media decoded)."""
    if task not in TASKS:
        raise BadSampleError(f"{path}: unknown task {task!r}; valid: {', '.join(TASKS)}")
    if fmt not in ("vgllm", "vsibench"):
        raise BadSampleError(f"{path}: unknown row format {fmt!r}; valid: vgllm, vsibench")
    if on_bad_sample not in ("error", "skip"):
        raise ValueError(f"on_bad_sample={on_bad_sample!r}; valid: error, skip")
    skipped = skipped if skipped is not None else SkipCounter()
    records, bad = [], SkipCounter()
    rows, lines = _rows_and_lines(Path(path))
    if not rows:
        raise BadSampleError(f"{path}: no rows (empty file)")
    if fmt == "vsibench" and task != "spatial":
        raise BadSampleError(f"{path}: VSI-Bench rows are spatial questions, not {task!r}")
    for i, row in enumerate(rows):
        where = f"{path}:{i}" + (f" (line {lines[i]})" if lines else "")
        try:
            if not isinstance(row, dict):
                raise BadSampleError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
            if "__error__" in row:
                raise BadSampleError(f"{where}: {row['__error__']}")
            if fmt == "vgllm":
                records.append(vgllm_record(row, task, where, source, media_root, index=i))
            else:
                records.append(vsibench_record(row, where, source, media_root, frames, index=i))
        except (BadSampleError, KeyError, TypeError, ValueError, IndexError) as e:
            err = e if isinstance(e, BadSampleError) else BadSampleError(f"{where}: {type(e).__name__}: {e}")
            if on_bad_sample != "skip":
                raise err from e
            bad.add(err)
    if bad.count == len(rows):  # nothing usable: a wrong media_root or format, not a few bad rows
        raise BadSampleError(f"{path}: all {len(rows)} rows are bad; first: " + "; ".join(bad.reasons[:3]))
    skipped.count += bad.count
    skipped.reasons += bad.reasons[: max(0, 20 - len(skipped.reasons))]
    if bad.count:
        log.warning("%s: %s", path, bad.summary())
    return records
