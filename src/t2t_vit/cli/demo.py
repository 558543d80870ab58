"""`t2t-vit demo`: a small T2T-ViT trained on embedded data in minutes on a CPU, and its held-out score: classification
on scikit-learn's digits (`make demo`), or on the digits pasted on canvases: `--task detection` (Faster R-CNN),
`--task segmentation` (a semantic FPN segmenter)."""

import argparse
import sys
import time
from typing import Any, Dict

# task -> (shipped config, what the demo reports: (result key, name), ...)
DEMOS = {
    "classification": ("digits", (("top1", "top-1"),)),
    "detection": ("canvases_detection", (("map50", "mAP@0.5"), ("map", "mAP@[.5:.95]"))),
    "segmentation": ("canvases_segmentation", (("miou", "mIoU"), ("pixel_acc", "pixel accuracy"))),
}


def register(sub: Any) -> None:
    d = sub.add_parser(
        "demo",
        help="train a small T2T-ViT on embedded data on the CPU and report its held-out score (digits; "
        "--task detection or segmentation: digits on canvases)",
        description="Each demo starts afresh in runs/demo[-TASK] and ends with its held-out score: classification "
        "(about a minute on 2 cores), detection (about 2.5 minutes) or segmentation (about 5 minutes); the "
        "shipped configs digits, canvases_detection and canvases_segmentation, which `t2t-vit train --config` takes "
        "too.",
    )
    d.add_argument("--task", choices=tuple(DEMOS), default="classification")
    d.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    d.add_argument("--no-progress", action="store_true", help="no progress bars (they show only on a terminal)")
    d.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    import shutil

    from ..config import resolve_config
    from ..training.evaluate import evaluate_checkpoint
    from ..training.run import train
    from ..training.run_dir import RunDir

    config, reported = DEMOS[args.task]
    name = "demo" if args.task == "classification" else f"demo-{args.task}"
    cfg = resolve_config(config, {"name": name, "device": args.device})
    run_dir = RunDir.of(cfg)
    if run_dir.path.exists():
        shutil.rmtree(run_dir.path)  # each demo starts afresh
    start = time.perf_counter()
    if train(cfg, progress=not args.no_progress).get("stopped"):
        print("t2t-vit demo: stopped; run it again to start over", file=sys.stderr)
        return 130
    scores: Dict[str, Any] = evaluate_checkpoint(
        str(run_dir.last), cfg["data"], workers=0, device=args.device, progress=False
    )
    files = ", ".join(p.name for p in (run_dir.last, run_dir.metrics, run_dir.curves))
    print(f"run directory: {run_dir} ({files}); {time.perf_counter() - start:.0f} s")
    print("held-out " + ", ".join(f"{label}: {scores[key]:.1f}%" for key, label in reported))
    return 0
