"""Provenance of a run: the commit, dirty only for changes outside results/."""

from __future__ import annotations

import subprocess
from pathlib import Path

from lit3drft.runinfo import git_commit


def test_results_do_not_make_the_commit_dirty(tmp_path: Path) -> None:
    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "runs.csv").write_text("run\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    clean = git_commit(tmp_path)
    assert len(clean) >= 7 and not clean.endswith("-dirty")
    (tmp_path / "results" / "runs.csv").write_text("run\na\n")  # a sweep appending its row
    assert git_commit(tmp_path) == clean
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == f"{clean}-dirty"
    assert git_commit(tmp_path.parent / "no_such_dir") == "unknown"
