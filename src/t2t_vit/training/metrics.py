"""A run's per-epoch record: metrics.csv (its schema), TensorBoard when installed, the summary line, curves.png."""

import csv
import logging
import math
import os
from pathlib import Path
from typing import Any, Dict

_logger = logging.getLogger(__name__)

# Columns of a run directory's metrics.csv, one row per epoch (empty where not measured).
METRICS_COLUMNS = (
    "epoch",
    "lr",
    "train_loss",
    "val_loss",
    "val_top1",
    "val_top5",
    "ema_val_loss",
    "ema_val_top1",
    "ema_val_top5",
    "img_per_s",
    "skipped",
    "scaled",
    "nonfinite",
    "rollbacks",
    "epoch_time_s",
    "train_s",
)
# skipped: unreadable images (substituted in training, left out of evaluation); scaled: high-depth images (16-bit
# PNGs, ...) scaled to 8 bits; nonfinite: steps with a NaN/inf loss (skipped or rolled back); rollbacks: reloads of the
# last good checkpoint (--nonfinite rollback).


class MetricsLog:
    """Rank 0 writes `run_dir`/metrics.csv (atomically, each epoch), TensorBoard scalars under tb/, and at the
    end curves.png; other ranks write nothing."""

    def __init__(self, run_dir: Path, is_main: bool) -> None:
        self.path, self.is_main = Path(run_dir) / "metrics.csv", is_main
        self.tb = None
        if is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(run_dir) / "tb"))
            except ImportError:
                pass

    def log(self, row: Dict[str, Any], total_epochs: int) -> None:
        """Record one epoch's row (METRICS_COLUMNS); rows of that epoch or later, re-run after a resume, go."""
        if not self.is_main:
            return
        rows = []
        if self.path.is_file():
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["epoch"]) < row["epoch"]]
        rows.append({k: ("" if row.get(k) is None else row[k]) for k in METRICS_COLUMNS})
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRICS_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)
        if self.tb is not None:
            for k, v in row.items():
                if k != "epoch" and isinstance(v, (int, float)) and not math.isnan(v):
                    self.tb.add_scalar(k, v, row["epoch"])
        _logger.info(summary(row, total_epochs))

    def close(self) -> None:
        """Draw curves.png from metrics.csv and close TensorBoard."""
        if not self.is_main:
            return
        if self.path.is_file():
            from ..study.visualize import (
                plot_curves,  # matplotlib only now, not when training starts
            )

            plot_curves([self.path.parent], self.path.parent / "curves.png")
        if self.tb is not None:
            self.tb.close()


def summary(row: Dict[str, Any], total_epochs: int) -> str:
    """One epoch's row as the line a log shows."""
    text = f"epoch {row['epoch']}/{total_epochs}  lr {row['lr']:.2e}  train loss {row['train_loss']:.4f}  "
    if row["val_top1"] is None:
        text += "not evaluated (eval_every)"
    else:
        text += f"held-out loss {row['val_loss']:.4f}  top-1 {row['val_top1']:.2f}%  top-5 {row['val_top5']:.2f}%"
    if row["ema_val_top1"] is not None:
        text += f"  EMA top-1 {row['ema_val_top1']:.2f}%"
    text += f"  {row['img_per_s']:.0f} img/s  skipped {row['skipped']}"
    for key in ("scaled", "nonfinite", "rollbacks"):
        if row.get(key):
            text += f"  {key} {row[key]}"
    return text + f"  {row['epoch_time_s']:.1f} s"
