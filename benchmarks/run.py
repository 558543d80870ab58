"""The results table: fast path vs the authors' eager one, measured side by side in one process per row.

    python benchmarks/run.py            # CPU fp32; on a GPU also bf16, with and without torch.compile
    python benchmarks/run.py --quick    # small batch, few repeats: checks the script, not the machine

Writes benchmarks/results/{cpu,cuda_steps}.md and .json (`--tag T` writes {cpu,cuda_steps}_T.* instead, e.g. for a run
under other allocator settings). Every number is a median of repeated steps after warm-up; ratios compare the
two models timed in turns within the same run.
"""

import argparse
import datetime
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from t2t_vit.deploy.benchmark import (  # noqa: E402
    BenchConfig,
    benchmark,
    device_name,
    matmul_peak_gflops,
    result_name,
)
from t2t_vit.errors import InputError  # noqa: E402

MODELS = ("t2t_vit_7", "t2t_vit_14", "t2t_vit_t_14")
MODES = ("infer", "train")
RESULTS = Path(__file__).resolve().parent / "results"
# The targets for CPU fp32, batch 16, 224 px: fast / eager speed (higher is better), memory (lower is better)
TARGETS = {
    ("t2t_vit_7", "infer"): ">= 1.5x",
    ("t2t_vit_14", "infer"): ">= 1.25x",
    ("t2t_vit_t_14", "infer"): ">= 2x",
    ("t2t_vit_7", "train"): ">= 1.3x",
    ("t2t_vit_t_14", "train"): ">= 1.8x, memory <= 0.5x",
}


def _row(res: Dict[str, Any], target: str) -> str:
    fast, eager, ratio = res["results"]["sdpa"], res["results"]["eager"], res["ratios"]
    cells = [
        res["model"],
        res["mode"] + (" (compiled)" if res["compile"] else ""),
        f"{fast['img_per_s']:.1f}",
        f"{eager['img_per_s']:.1f}",
        f"**{ratio['speed']:.2f}x**",
        f"{fast['peak_mem_mib']:.0f}",
        f"{eager['peak_mem_mib']:.0f}",
        f"**{ratio['memory']:.2f}x**",
        f"{fast['achieved_gflops']:.0f} ({100 * fast['peak_fraction']:.0f}%)",
        f"{res['load_avg']:.1f}" if res.get("load_avg") is not None else "-",
        target,
    ]
    return "| " + " | ".join(cells) + " |"


def write_table(name: str, title: str, rows: List[Dict[str, Any]], command: str, peak: float, targets: bool) -> None:
    first = rows[0]
    where = f"{first['device_name']}"
    if first["device"].startswith("cpu"):
        where += f", {first['cpu_count']} cores, {first['threads']} threads"
    malloc = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}  # glibc allocator settings, if any
    lines = [
        f'# {title}: fast (`attn_impl="sdpa"`) vs the authors\' arithmetic (`attn_impl="eager"`)',
        "",
        f"- machine: {where}; torch {first['torch']}; {datetime.date.today().isoformat()}",
        f"- command: `{' '.join([*(f'{k}={v}' for k, v in malloc.items()), command])}`",
        f"- {first['dtype']}, batch {first['batch_size']}, {first['img_size']} px, warm-up {first['warmup']}, "
        f"median of {first['repeats']} steps; the two models step in turns in one process",
        f"- matmul peak {peak:.0f} GFLOP/s (square {first['dtype']} matmul); achieved GFLOP/s = forward MACs x 2 "
        "x img/s (x 3 for train, backward counted as twice the forward)",
        "- peak memory: MiB of one step in a fresh process (CPU: resident-set high-water mark less the "
        "interpreter and libraries; CUDA: max allocated), weights, gradients and AdamW state included",
        "- train = forward, cross-entropy backward, AdamW step; load = 1-min load average as timing began "
        "(the run's own threads count; well above the thread count means other work shared the CPU)",
        "",
        "| model | mode | fast img/s | eager img/s | speed | fast MiB | eager MiB | memory | fast GFLOP/s (of peak) "
        "| load | target |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for res in rows:
        target = TARGETS.get((res["model"], res["mode"]), "-") if targets else "-"
        lines.append(_row(res, target))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps(dict(command=command, rows=rows), indent=2) + "\n")
    print("\n".join(lines))


def run_suite(
    device: str, dtype: str, batch_size: int, repeats: int, warmup: int, compiles: List[bool], models: List[str]
) -> List[Dict[str, Any]]:
    peak = matmul_peak_gflops(device, dtype)
    rows = []
    for compile_ in compiles:
        for model in models:
            for mode in MODES:
                cfg = BenchConfig(model, mode, device, dtype, compile_, batch_size, 224, warmup, repeats)
                res = benchmark(cfg, compare_eager=True, peak_gflops=peak)
                print(
                    f"{model} {mode}{' compiled' if compile_ else ''}: speed {res['ratios']['speed']:.2f}x, "
                    f"memory {res['ratios']['memory']:.2f}x",
                    flush=True,
                )
                rows.append(res)
    return rows


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batch 2, 1 warm-up, 2 repeats")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--skip-cpu", action="store_true", help="GPU rows only")
    parser.add_argument("--tag", default="", help="suffix of the result files, e.g. malloc_keep")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    command = "python benchmarks/run.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    try:
        names = {base: result_name(base, args.quick, args.tag) for base in ("cpu", "cuda_steps")}
    except InputError as e:
        parser.error(str(e))
    extra = ", ".join(t for t in ("quick" if args.quick else "", args.tag) if t)
    titles = {
        base: title + (f" ({extra})" if extra else "") for base, title in (("cpu", "CPU"), ("cuda_steps", "CUDA"))
    }
    warmup, repeats = (1, 2) if args.quick else (2, 5)
    if not args.skip_cpu:
        rows = run_suite("cpu", "fp32", 2 if args.quick else 16, repeats, warmup, [False], args.models)
        write_table(names["cpu"], titles["cpu"], rows, command, rows[0]["matmul_peak_gflops"], targets=not args.quick)
    if torch.cuda.is_available():
        rows = run_suite("cuda", "bf16", 2 if args.quick else 64, repeats, warmup, [False, True], args.models)
        write_table(
            names["cuda_steps"], titles["cuda_steps"], rows, command, rows[0]["matmul_peak_gflops"], targets=False
        )
    else:
        print(f"no CUDA device here ({device_name('cpu')}): GPU rows skipped")


if __name__ == "__main__":
    main()
