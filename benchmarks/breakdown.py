"""Where a step's time goes, fast path vs eager: torch.profiler self time grouped by the kind of op.

    python benchmarks/breakdown.py                      # the three models, infer and train, CPU fp32, batch 16
    python benchmarks/breakdown.py --models t2t_vit_7 --modes infer

Writes benchmarks/results/cpu_profile.md. "linear layers" are the GEMMs of nn.Linear (and the last split's
convolution in the fast path), which both paths run with the same shapes. Two ceilings on the speed-up of any
path that keeps the arithmetic: the eager step over the eager linear-layer time, and over that time plus the
attention matmuls run at the machine's matmul peak (their FLOPs counted on the eager model; x 3 for train).
"""

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from t2t_vit import create_model  # noqa: E402
from t2t_vit.deploy.benchmark import (  # noqa: E402
    BenchConfig,
    device_name,
    make_step,
    matmul_peak_gflops,
)

RESULTS = Path(__file__).resolve().parent / "results"
LINEAR = {"aten::mm", "aten::addmm", "aten::mkldnn_convolution", "aten::convolution_backward"}
ATTENTION = {"aten::bmm", "aten::baddbmm", "aten::_softmax", "aten::_softmax_backward_data"}
MOVES = {
    "aten::copy_",
    "aten::cat",
    "aten::im2col",
    "aten::col2im",
    "aten::unfold_backward",
    "aten::constant_pad_nd",
    "aten::fill_",
    "aten::zero_",
    "aten::clone",
    "aten::stack",
    "aten::resize_",
    "aten::empty",
    "aten::empty_strided",
}
GROUPS = ("linear layers", "attention", "copies and layout", "optimizer", "other")


def _group(name: str, shapes: List[List[int]]) -> str:
    if name in LINEAR:
        # the Performer's feature GEMM (fast path) carries a (rows, 1) shift as its addmm input: attention
        return "attention" if name == "aten::addmm" and shapes and shapes[0][-1:] == [1] else "linear layers"
    if name in ATTENTION or "scaled_dot_product" in name:
        return "attention"
    if name in MOVES:
        return "copies and layout"
    if name.startswith("aten::_foreach") or "optimizer" in name.lower():
        return "optimizer"
    return "other"


def attention_gflop(model_name: str, batch_size: int) -> float:
    """GFLOP of one forward pass in the attention matmuls (batched matmuls of the eager model: softmax attention
    and the Performer's einsums)."""
    with torch.device("meta"):
        model = create_model(model_name, attn_impl="eager").eval()
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(batch_size, 3, 224, 224))
    counts = counter.get_flop_counts()["Global"]
    return sum(v for op, v in counts.items() if "bmm" in str(op)) / 1e9


def profile_step(model_name: str, mode: str, attn_impl: str, batch_size: int) -> Dict[str, float]:
    """Milliseconds of self CPU time per group in one step after two warm-up steps."""
    torch.manual_seed(0)
    cfg = BenchConfig(model_name, mode, batch_size=batch_size)
    step = make_step(create_model(model_name, attn_impl=attn_impl), cfg)
    step()
    step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    groups: Dict[str, float] = defaultdict(float)
    for ev in prof.key_averages(group_by_input_shape=True):
        groups[_group(ev.key, [list(s) for s in ev.input_shapes if isinstance(s, (list, tuple))])] += (
            ev.self_cpu_time_total / 1e3
        )
    return dict(groups)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["t2t_vit_7", "t2t_vit_14", "t2t_vit_t_14"])
    parser.add_argument("--modes", nargs="+", default=["infer", "train"], choices=["infer", "train"])
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    lines = [
        "# Where the time goes (CPU fp32, profiler self time, ms per step)",
        "",
        f"- machine: {device_name('cpu')}, {torch.get_num_threads()} threads; torch {torch.__version__}; "
        f"batch {args.batch_size}, 224 px",
        f"- command: `{' '.join(['python benchmarks/breakdown.py', *(argv if argv is not None else sys.argv[1:])])}`",
        "- ceilings on the speed-up of a path with the same arithmetic: eager step / eager linear-layer time; "
        "and / (that time + the attention matmuls at the matmul peak)",
        "",
        "| model | mode | path | " + " | ".join(GROUPS) + " | total | ceiling | ceiling with attention |",
        "|---|---|---|" + "---:|" * (len(GROUPS) + 3),
    ]
    peak = matmul_peak_gflops("cpu")
    lines.insert(3, f"- matmul peak {peak:.0f} GFLOP/s (square fp32 matmul, this run)")
    for model_name in args.models:
        for mode in args.modes:
            eager = profile_step(model_name, mode, "eager", args.batch_size)
            fast = profile_step(model_name, mode, "sdpa", args.batch_size)
            linear = eager.get("linear layers", float("nan"))
            attention_ms = 1e3 * attention_gflop(model_name, args.batch_size) * (3 if mode == "train" else 1) / peak
            ceilings = [sum(eager.values()) / linear, sum(eager.values()) / (linear + attention_ms)]
            for path, groups in (("eager", eager), ("fast", fast)):
                cells = [f"{groups.get(g, 0.0):.0f}" for g in GROUPS] + [f"{sum(groups.values()):.0f}"]
                cells += [f"{c:.2f}x" if path == "eager" else "" for c in ceilings]
                lines.append(f"| {model_name} | {mode} | {path} | " + " | ".join(cells) + " |")
            print(lines[-2], lines[-1], sep="\n", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cpu_profile.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
