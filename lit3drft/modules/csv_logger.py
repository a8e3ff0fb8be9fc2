"""A CSV logger that keeps its rows across ``--resume``.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when its directory is reused ("Previous log files
in this directory will be deleted"), so every resumed stage lost the curves logged before the kill. This one
reads the existing header and appends; rows logged after the last checkpoint and before a kill appear twice
(the resumed run logs those steps again); readers keep the last row of a step.
"""

from __future__ import annotations

import csv

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as fh:
                self.metrics_keys = sorted(next(csv.reader(fh), []))


class AppendingCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` survives a restart in the same directory (see the module docstring)."""

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
