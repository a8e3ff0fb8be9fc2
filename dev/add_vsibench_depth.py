"""One-off upgrade of an embedded benchmark rendered before VSI-Bench rows carried depth (2026-11-26).

Adds ``depth_dir`` and ``cam2img`` (see ``lit3drft.data.vsibench.vsibench_record``) to every row of
``<root>/tasks/*/vsibench.jsonl`` from the scene's ``scene.json``, exactly as ``lit3drft.data.tasks`` now writes
them, and replaces each file atomically. Re-rendering gives the same files (checked on two scenes):

    python dev/add_vsibench_depth.py data/synth3d-tiny
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from lit3drft.data.tasks import vsi_depth_fields


def upgrade(root: Path) -> int:
    total = 0
    for path in sorted(root.glob("tasks/*/vsibench.jsonl")):
        changed = 0
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for row in rows:
            if "depth_dir" in row:
                continue
            scene = json.loads((root / "scenes" / row["scene_name"] / "scene.json").read_text())
            row.update(vsi_depth_fields(row["scene_name"], scene["intrinsics"]))
            changed += 1
        if not changed:
            continue
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.fchmod(fd, 0o644)  # mkstemp makes 0600
        with os.fdopen(fd, "w") as fh:
            fh.write("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, path)
        total += changed
    return total


if __name__ == "__main__":
    print(f"{upgrade(Path(sys.argv[1]))} rows upgraded")
