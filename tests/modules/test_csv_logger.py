"""The run's CSV log keeps its rows when a stage is resumed in the same directory."""

from __future__ import annotations

import pandas as pd
from lightning.pytorch.loggers import CSVLogger

from lit3drft.modules.csv_logger import AppendingCSVLogger


def _log(logger, steps, key: str) -> None:
    for step in steps:
        logger.log_metrics({key: float(step)}, step=step)
    logger.save()


def test_rows_survive_a_second_logger_in_the_same_directory(tmp_path) -> None:
    _log(AppendingCSVLogger(tmp_path, name="csv", version="0-sft"), range(3), "train/loss")
    _log(AppendingCSVLogger(tmp_path, name="csv", version="0-sft"), range(3, 5), "val/miou")  # a new column too
    log = pd.read_csv(tmp_path / "csv" / "0-sft" / "metrics.csv")
    assert log["step"].tolist() == [0, 1, 2, 3, 4]
    assert log["train/loss"].dropna().tolist() == [0.0, 1.0, 2.0]
    assert log["val/miou"].dropna().tolist() == [3.0, 4.0]


def test_lightning_s_own_logger_loses_them(tmp_path) -> None:
    """The reason for the class: if this starts failing, Lightning keeps the rows itself."""
    _log(CSVLogger(tmp_path, name="csv", version="0-sft"), range(3), "train/loss")
    _log(CSVLogger(tmp_path, name="csv", version="0-sft"), range(3, 5), "train/loss")
    assert pd.read_csv(tmp_path / "csv" / "0-sft" / "metrics.csv")["step"].tolist() == [3, 4]
