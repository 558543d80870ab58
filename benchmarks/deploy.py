"""CPU inference runtimes side by side: t2t_vit_14 at 224 px, the same random weights (seed 0) in every row.

    python benchmarks/deploy.py                 # 1 thread per runtime: batch 1 latency, batch 16 throughput
    python benchmarks/deploy.py --threads 2
    python benchmarks/deploy.py --quick         # 1 warm-up, 2 rounds: checks the script, not the machine
    python benchmarks/deploy.py --checkpoint runs/digits/last.pth.tar --agreement digits   # + int8 top-1 agreement

Rows: the authors' code (our model with `attn_impl="eager"`, their arithmetic op for op), this project's PyTorch
model (`attn_impl="sdpa"`), ONNX Runtime and OpenVINO on its ONNX export in fp32 and with int8 weights. The rows
take turns: each round runs every row's batch 1 and batch 16 once, so load from other processes hits all alike;
each number is the median over the rounds. Writes benchmarks/results/deploy_cpu.md and .json (`--quick`:
deploy_cpu_quick.*; `--tag T`: deploy_cpu_T.*, e.g. for another machine). Needs `pip install 't2t-vit[deploy]'`.
"""

import argparse
import datetime
import importlib.metadata
import json
import logging
import os
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from t2t_vit import create_model  # noqa: E402
from t2t_vit.deploy.benchmark import device_name, result_name, time_steps  # noqa: E402
from t2t_vit.deploy.runtimes import Runner, load_runner, model_runner  # noqa: E402
from t2t_vit.deploy.speed import format_agreement, random_model, top1_agreement  # noqa: E402
from t2t_vit.errors import InputError  # noqa: E402

MODEL, IMG_SIZE, BATCHES = "t2t_vit_14", 224, (1, 16)
RESULTS = Path(__file__).resolve().parent / "results"
ROWS = (  # (label, runtime, int8)
    ("authors' code (eager PyTorch)", "torch", False),
    ("this project (PyTorch, sdpa)", "torch", False),
    ("onnxruntime fp32", "onnxruntime", False),
    ("onnxruntime int8", "onnxruntime", True),
    ("openvino fp32", "openvino", False),
    ("openvino int8", "openvino", True),
)


def build_runners(threads: int) -> Dict[str, Runner]:
    """One runner per row, all with the weights `random_model` draws from seed 0."""
    model, meta = random_model(MODEL, IMG_SIZE, seed=0)
    eager = create_model(MODEL, attn_impl="eager", img_size=IMG_SIZE).eval()
    eager.load_state_dict(model.state_dict())
    runners = {ROWS[0][0]: model_runner(eager, meta, "torch", threads)}
    for label, runtime, int8 in ROWS[1:]:
        print(f"preparing {label}", flush=True)
        runners[label] = model_runner(model, meta, runtime, threads, int8)
    return runners


def measure(runners: Dict[str, Runner], warmup: int, repeats: int) -> Tuple[List[Dict[str, Any]], float]:
    """Per row: median batch 1 latency, batch 16 img/s (the rows taking turns), max |logit - authors' logit|; and
    the largest of the authors' logits, for scale."""
    rng = np.random.default_rng(0)
    inputs = {b: rng.standard_normal((b, 3, IMG_SIZE, IMG_SIZE), dtype=np.float32) for b in BATCHES}
    check = rng.standard_normal((2, 3, IMG_SIZE, IMG_SIZE), dtype=np.float32)
    reference = runners[ROWS[0][0]](check)
    steps = {
        f"{label}, batch {b}": (lambda r=runner, x=inputs[b]: r(x))
        for label, runner in runners.items()
        for b in BATCHES
    }
    times = time_steps(steps, "cpu", warmup, repeats)
    rows = []
    for label, runner in runners.items():
        one, many = times[f"{label}, batch 1"], times[f"{label}, batch {BATCHES[-1]}"]
        rows.append(
            dict(
                label=label,
                runtime=runner.runtime,
                int8=runner.int8,
                b1_latency_ms=1e3 * statistics.median(one),
                b1_ms_all=[1e3 * t for t in one],
                b16_img_per_s=BATCHES[-1] / statistics.median(many),
                b16_ms_all=[1e3 * t for t in many],
                max_abs_logit_diff=float(np.abs(runner(check) - reference).max()),
            )
        )
    return rows, float(np.abs(reference).max())


def agreements(checkpoint: str, data: str, threads: int, images: Optional[int]) -> List[Dict[str, Any]]:
    """int8 against fp32 of each exported runtime, on `data`'s validation split."""
    out = []
    for runtime in ("onnxruntime", "openvino"):
        fp32 = load_runner(checkpoint, runtime=runtime, threads=threads)
        int8 = load_runner(checkpoint, runtime=runtime, threads=threads, int8=True)
        out.append(top1_agreement(fp32, int8, data, images))
    return out


def _versions() -> str:
    names = ("torch", "onnxruntime", "openvino", "nncf")
    return ", ".join(f"{n} {importlib.metadata.version(n)}" for n in names)


def write_table(name: str, rows: List[Dict[str, Any]], agreed: List[Dict[str, Any]], info: Dict[str, Any]) -> None:
    authors = rows[0]
    lines = [
        f"# CPU inference runtimes: {MODEL}, {IMG_SIZE} px, fp32 and int8 weights",
        "",
        f"- machine: {info['device_name']}, {info['cpu_count']} cores, {info['threads']} "
        f"thread{'s' if info['threads'] > 1 else ''} per runtime; "
        f"{info['versions']}; {info['date']}",
        f"- command: `{info['command']}`",
        f"- the same random weights (seed 0) in every row; warm-up {info['warmup']}, median of {info['repeats']} "
        "rounds; in each round every row runs batch 1 and batch 16 once, the rows taking turns; "
        f"1-min load average as timing began: {info['load_avg']:.1f}",
        "- authors' code: this project's model with `attn_impl=\"eager\"` (the authors' arithmetic op for op); "
        "speed-up: the row's batch 1 latency or batch 16 img/s against the authors' code",
        "- int8: onnxruntime dynamic quantization (MatMul weights int8 per output channel, reduced range; inputs "
        "uint8 per call); OpenVINO: NNCF weight compression (INT8_ASYM, weights only, fp32 arithmetic)",
        "- max |logit diff|: the largest difference from the authors' code's logits on 2 random images "
        f"(logits up to {info['logit_scale']:.2f} in size)",
        "",
        "| runtime | batch 1 ms | speed-up | batch 16 img/s | speed-up | max abs logit diff |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['b1_latency_ms']:.1f} | {authors['b1_latency_ms'] / r['b1_latency_ms']:.2f}x "
            f"| {r['b16_img_per_s']:.2f} | {r['b16_img_per_s'] / authors['b16_img_per_s']:.2f}x "
            f"| {r['max_abs_logit_diff']:.1e} |"
        )
    if agreed:
        lines += ["", f"int8 against fp32 on `{info['checkpoint']}`:", ""]
        lines += [f"- {res['other'].split()[0]}: {format_agreement(res)}" for res in agreed]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps(dict(info, rows=rows, agreement=agreed), indent=2) + "\n")
    print("\n".join(lines))


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="threads of every runtime (default 1)")
    parser.add_argument("--quick", action="store_true", help="1 warm-up, 2 rounds; writes deploy_cpu_quick.*")
    parser.add_argument("--checkpoint", help="a trained checkpoint, for --agreement")
    parser.add_argument("--agreement", metavar="DATA", help="int8 top-1 agreement with fp32 on DATA (a --data spec)")
    parser.add_argument("--agreement-images", type=int, metavar="N", help="a fixed random N of DATA's images")
    parser.add_argument("--tag", default="", help="suffix of the result files, e.g. xeon: deploy_cpu_xeon.*")
    args = parser.parse_args(argv)
    if (args.checkpoint is None) != (args.agreement is None):
        parser.error("--checkpoint and --agreement go together")
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    try:
        name = result_name("deploy_cpu", args.quick, args.tag)
    except InputError as e:
        parser.error(str(e))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    command = "python benchmarks/deploy.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    warmup, repeats = (1, 2) if args.quick else (2, 10)
    try:
        runners = build_runners(args.threads)
        load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        rows, logit_scale = measure(runners, warmup, repeats)
        agreed = []
        if args.agreement is not None:
            agreed = agreements(args.checkpoint, args.agreement, args.threads, args.agreement_images)
    except InputError as e:
        sys.exit(f"benchmarks/deploy.py: error: {e}")
    info = dict(
        command=command,
        date=datetime.date.today().isoformat(),
        device_name=device_name("cpu"),
        cpu_count=os.cpu_count(),
        threads=args.threads,
        torch_threads=torch.get_num_threads(),
        versions=_versions(),
        warmup=warmup,
        repeats=repeats,
        load_avg=load_avg,
        logit_scale=logit_scale,
        checkpoint=args.checkpoint,
    )
    write_table(name, rows, agreed, info)


if __name__ == "__main__":
    main()
