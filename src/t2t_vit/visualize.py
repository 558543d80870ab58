"""Pictures people would rather look at than read: training curves (feature and attention maps to come)."""
import csv
from pathlib import Path
from typing import Dict, List, Sequence

from .errors import InputError

# Columns of a run directory's metrics.csv, one row per epoch (empty where not measured).
METRICS_COLUMNS = (
    "epoch", "lr", "train_loss", "val_loss", "val_top1", "val_top5",
    "ema_val_loss", "ema_val_top1", "ema_val_top5", "img_per_s", "skipped", "epoch_time_s",
)  # fmt: skip


def read_metrics(run_dir: Path) -> Dict[str, List[float]]:
    """metrics.csv of a run directory as columns of floats (NaN where empty)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        raise InputError(f"{str(run_dir)!r} has no metrics.csv: pass a run directory written by `t2t-vit train`")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: [float(r[k]) if r.get(k) not in (None, "") else float("nan") for r in rows] for k in (rows[0] if rows else {})}


def plot_curves(run_dirs: Sequence[Path], out: Path) -> Path:
    """Loss (train and held-out) and held-out top-1 per epoch of one or more runs, side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_top1) = plt.subplots(1, 2, figsize=(11, 4))
    for run_dir in run_dirs:
        m = read_metrics(run_dir)
        if not m:
            continue
        name = Path(run_dir).name
        label = (lambda what: f"{name} {what}") if len(run_dirs) > 1 else (lambda what: what)
        (line,) = ax_loss.plot(m["epoch"], m["train_loss"], label=label("train"))
        ax_loss.plot(m["epoch"], m["val_loss"], "--", color=line.get_color(), label=label("held-out"))
        ax_top1.plot(m["epoch"], m["val_top1"], color=line.get_color(), label=label("model"))
        if any(v == v for v in m.get("ema_val_top1", [])):  # NaN != NaN: plot EMA only where measured
            ax_top1.plot(m["epoch"], m["ema_val_top1"], ":", color=line.get_color(), label=label("EMA"))
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_top1.set(xlabel="epoch", ylabel="top-1 (%)", title="held-out top-1")
    for ax in (ax_loss, ax_top1):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
