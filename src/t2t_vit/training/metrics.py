"""A run's per-epoch record: the schema of its metrics file, TensorBoard when installed, the summary line, and the
curves drawn from it (at a run's end, and by `t2t-vit visualize curves`)."""

import csv
import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from ..checkpoint import written_atomically
from .run_dir import RunDir

_logger = logging.getLogger(__name__)

# What a held-out pass measures, each task its own (the others' stay empty): classification loss, top-1 and top-5;
# detection and instance COCO's box mAP, AP50 and AP75, instance also the masks' mAP; segmentation mIoU and pixel
# accuracy (all but loss in %).
HELD_OUT = ("loss", "top1", "top5", "map", "map50", "map75", "mask_map", "miou", "pixel_acc")
# Columns of a run directory's metrics file, one row per epoch (empty where not measured).
METRICS_COLUMNS = (
    "epoch",
    "lr",
    "train_loss",
    *(f"val_{key}" for key in HELD_OUT),
    *(f"ema_val_{key}" for key in HELD_OUT),
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
    """Rank 0 writes the run directory's metrics (atomically, each epoch), TensorBoard scalars, and at the end the
    curves; other ranks write nothing."""

    def __init__(self, run_dir: RunDir, is_main: bool) -> None:
        self.run_dir, self.is_main = run_dir, is_main
        self.tb = None
        if is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir.tb))
            except ImportError:
                pass

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def log(self, row: Dict[str, Any], total_epochs: int) -> None:
        """Record one epoch's row (METRICS_COLUMNS); rows of that epoch or later, re-run after a resume, go."""
        if not self.is_main:
            return
        rows = [r for r in self.run_dir.metric_rows() if int(r["epoch"]) < row["epoch"]]
        rows.append({k: ("" if row.get(k) is None else row[k]) for k in METRICS_COLUMNS})
        path = self.run_dir.metrics
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRICS_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
        if self.tb is not None:
            for k, v in row.items():
                if k != "epoch" and isinstance(v, (int, float)) and not math.isnan(v):
                    self.tb.add_scalar(k, v, row["epoch"])
        _logger.info(summary(row, total_epochs))

    def close(self) -> None:
        """Draw the curves of the metrics written so far and close TensorBoard."""
        if not self.is_main:
            return
        if self.run_dir.metrics.is_file():
            plot_curves([self.run_dir.path], self.run_dir.curves)
        if self.tb is not None:
            self.tb.close()


# how the summary line shows each held-out number; the EMA's shows the first of HEADLINE measured
LABELS = dict(
    loss="loss {:.4f}",
    top1="top-1 {:.2f}%",
    top5="top-5 {:.2f}%",
    map="mAP {:.2f}%",
    map50="AP50 {:.2f}%",
    map75="AP75 {:.2f}%",
    mask_map="mask mAP {:.2f}%",
    miou="mIoU {:.2f}%",
    pixel_acc="pixel acc {:.2f}%",
)
HEADLINE = ("top1", "map", "miou")  # each task's main number


def summary(row: Dict[str, Any], total_epochs: int) -> str:
    """One epoch's row as the line a log shows."""
    text = f"epoch {row['epoch']}/{total_epochs}  lr {row['lr']:.2e}  train loss {row['train_loss']:.4f}  "
    held_out = [LABELS[k].format(row[f"val_{k}"]) for k in HELD_OUT if row.get(f"val_{k}") is not None]
    text += "held-out " + "  ".join(held_out) if held_out else "not evaluated (eval_every)"
    ema = [LABELS[k].format(row[f"ema_val_{k}"]) for k in HEADLINE if row.get(f"ema_val_{k}") is not None]
    if ema:
        text += f"  EMA {ema[0]}"
    text += f"  {row['img_per_s']:.0f} img/s  skipped {row['skipped']}"
    for key in ("scaled", "nonfinite", "rollbacks"):
        if row.get(key):
            text += f"  {key} {row[key]}"
    return text + f"  {row['epoch_time_s']:.1f} s"


def plot_curves(run_dirs: Sequence[Path], out: Path) -> Path:
    """Loss (train and held-out) and the held-out headline (top-1, mAP or mIoU: the first measured) per epoch of one
    or more runs, side by side, as a PNG."""
    fig = curves_figure(run_dirs)
    import matplotlib.pyplot as plt  # curves_figure chose the backend

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with written_atomically(out) as tmp:  # a kill mid-write leaves the last epoch's picture, not half of one
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return out


def curves_figure(run_dirs: Sequence[Path]) -> Any:
    """The matplotlib figure of `plot_curves`: each run named by as much of its path as tells it from the others."""
    import matplotlib  # only now, not when training starts

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(11, 4))
    shown = []
    for run_dir, name in zip(run_dirs, run_names(run_dirs)):
        m = RunDir(run_dir).read_metrics()
        if not m:
            continue
        label = (lambda what: f"{name} {what}") if len(run_dirs) > 1 else (lambda what: what)
        key = next((k for k in HEADLINE if any(v == v for v in m.get(f"val_{k}", []))), "top1")  # NaN != NaN
        shown.append(LABELS[key].split()[0])
        (line,) = ax_loss.plot(m["epoch"], m["train_loss"], label=label("train"))
        ax_loss.plot(*_measured(m, "val_loss"), "--", color=line.get_color(), label=label("held-out"))
        ax_score.plot(*_measured(m, f"val_{key}"), color=line.get_color(), label=label("model"))
        if any(v == v for v in m.get(f"ema_val_{key}", [])):  # plot EMA only where measured
            ax_score.plot(*_measured(m, f"ema_val_{key}"), ":", color=line.get_color(), label=label("EMA"))
    what = " / ".join(dict.fromkeys(shown)) or "top-1"
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_score.set(xlabel="epoch", ylabel=f"{what} (%)", title=f"held-out {what}")
    for ax in (ax_loss, ax_score):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # epochs are whole numbers
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def run_names(run_dirs: Sequence[Path]) -> List[str]:
    """Each run directory's name, with as many parent folders as it takes to tell apart runs of one name (e.g.
    reproduce's 2-epochs/t2t_s0 and 500-seconds/t2t_s0)."""
    parts = [Path(d).resolve().parts for d in run_dirs]
    names = []
    for p in parts:
        depth = 1
        while depth < len(p) and sum(q[-depth:] == p[-depth:] for q in set(parts)) > 1:
            depth += 1
        names.append("/".join(p[-depth:]))
    return names


def _measured(m: Dict[str, List[float]], key: str) -> Tuple[List[float], List[float]]:
    """(epochs, values) of column `key` where it was measured: one line through the evaluated epochs (eval_every)."""
    pairs = [(e, v) for e, v in zip(m["epoch"], m[key]) if v == v]
    return [e for e, _ in pairs], [v for _, v in pairs]
