"""Where the fashion_mnist recipe's CPU time goes: its model's training step under variants, timed in turns.

    python benchmarks/fashion_mnist_step.py              # the variants below, and torch.compile (about 1-2 min more)
    python benchmarks/fashion_mnist_step.py --quick      # few repeats, no compile: checks the script, not the machine

Each variant is the recipe's model (configs/fashion_mnist.yaml: 28 px, batch 128, fp32) with one thing changed; its
step (forward, backward, AdamW) is timed in turns with the others and reported per image against the recipe's own
model run eagerly (the config compiles it: the "compiled" row).
Also the T2T module's share of the step (its forward and backward alone) and of the forward multiply-adds.
Writes benchmarks/results/fashion_mnist_step.md.
"""

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Tuple

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from t2t_vit import create_model  # noqa: E402
from t2t_vit.config import resolve_config  # noqa: E402
from t2t_vit.deploy.benchmark import BenchConfig, device_name, make_step, time_steps  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CFG = resolve_config("fashion_mnist", {})
# variant -> (what changes, model arguments, step arguments)
VARIANTS: Dict[str, Tuple[str, Dict[str, Any], Dict[str, Any]]] = {
    "recipe": ("the recipe's model, not compiled (SDPA attention)", {}, {}),
    "eager": ("attention as explicit matmuls (attn_impl eager)", dict(attn_impl="eager"), {}),
    "grey": ("one input channel (in_chans 1) instead of grey repeated to 3", dict(in_chans=1), {}),
    "authors' T2T dropout": (
        "the authors' dropout 0.1 in the T2T module (t2t_drop_rate null) instead of the recipe's 0",
        dict(t2t_drop_rate=None),
        {},
    ),
    "transformer mixer": (
        "a Transformer layer as the T2T module's mixer (t2t_mixer, as in T2T-ViT_t) instead of the Performer",
        dict(t2t_mixer="transformer"),
        {},
    ),
    "batch 256": ("batch 256 instead of 128", {}, dict(batch_size=256)),
}


def _model(extra: Dict[str, Any]) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(CFG["model"], **dict(CFG["model_kwargs"], num_classes=10, img_size=CFG["img_size"], **extra))


def _step(extra: Dict[str, Any], step_args: Dict[str, Any], compile: bool = False) -> Tuple[Callable[[], None], int]:
    args = dict(dict(batch_size=CFG["batch_size"]), **step_args)
    bench = BenchConfig(CFG["model"], mode="train", img_size=CFG["img_size"], compile=compile, **args)
    return make_step(_model(extra), bench), bench.batch_size


def t2t_share(repeats: int) -> Tuple[float, float]:
    """(time, multiply-adds) of the T2T module's part of the recipe's model, as fractions of the whole; time: the
    module's forward and backward over a full forward and backward, timed in turns."""
    model = _model({}).train()
    x = torch.randn(CFG["batch_size"], CFG["in_chans"], CFG["img_size"], CFG["img_size"])
    y = torch.randint(0, 10, (len(x),))
    with FlopCounterMode(display=False) as counter:
        model(x)
    total = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        model.tokens_to_token(x)
    macs = counter.get_total_flops() / total
    steps = {
        "whole": lambda: torch.nn.functional.cross_entropy(model(x), y).backward(),
        "t2t": lambda: model.tokens_to_token(x).sum().backward(),
    }
    times = time_steps(steps, "cpu", 2, repeats)
    return statistics.median(times["t2t"]) / statistics.median(times["whole"]), macs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats, no compile: checks the script")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    repeats = 3 if args.quick else args.repeats
    built = {name: _step(extra, step_args) for name, (_, extra, step_args) in VARIANTS.items()}
    compile_first = None
    if not args.quick:
        step, batch = _step({}, {}, compile=True)
        start = time.perf_counter()
        step()  # traces and compiles forward and backward
        compile_first = time.perf_counter() - start
        built["compiled"] = (step, batch)
    steps = {name: s for name, (s, _) in built.items()}
    times = time_steps(steps, "cpu", 2, repeats)
    per_image = {name: statistics.median(times[name]) / built[name][1] for name in steps}
    share, macs = t2t_share(repeats)

    about = {name: what for name, (what, _, _) in VARIANTS.items()}
    about["compiled"] = "torch.compile, as the recipe runs (its compile: true)"
    lines = [
        "# The fashion_mnist recipe's training step on the CPU, variant by variant",
        "",
        f"- machine: {device_name('cpu')}, {torch.get_num_threads()} threads; torch {torch.__version__}; "
        f"{datetime.date.today()}",
        f"- command: `python {' '.join(sys.argv)}`; medians of "
        f"{repeats} steps timed in turns after 2 warm-up steps; fp32, {CFG['img_size']} px",
        "",
        "| variant | what changes | ms per step | us per image | speed vs the recipe eager |",
        "|---|---|---:|---:|---:|",
    ]
    for name in steps:
        ms = 1000 * statistics.median(times[name])
        speed = per_image["recipe"] / per_image[name]
        lines.append(f"| {name} | {about[name]} | {ms:.1f} | {1e6 * per_image[name]:.0f} | {speed:.2f}x |")
    lines += [
        "",
        f"The T2T module takes {100 * share:.0f}% of the forward and backward time and "
        f"{100 * macs:.0f}% of the forward multiply-adds.",
    ]
    if compile_first is not None:
        lines.append(f"The compiled model's first step (tracing and compiling) took {compile_first:.0f} s.")
    text = "\n".join(lines) + "\n"
    if not args.quick:
        (RESULTS / "fashion_mnist_step.md").write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
