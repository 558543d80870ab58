"""Where a training step's time goes, by part of the model: the tokens (the T2T module; DeiT-S's patch embedding),
the blocks, and the rest (class token and positions, norm, head, loss, optimizer: the whole step less the two),
each part's forward and backward timed alone on the input it gets in the model, the parts and whole steps of every
model taking turns; then the tokens part's ops by their own device time. It answers where T2T-ViT-14's step loses
to DeiT-S's of about the same MACs.

    PYTHONPATH=src python3 benchmarks/parts.py                    # CUDA: bf16, batch 256 (about a minute)
    python benchmarks/parts.py --device cpu --batch-size 16       # the CPU, fp32
    python benchmarks/parts.py --dry-run --out /tmp/x             # the CPU, tiny sizes: the script runs

Writes parts_<device>.md and .json into --out (default benchmarks/results).
"""

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from t2t_vit.deploy.benchmark import DTYPES, BenchConfig, make_step, time_steps  # noqa: E402
from t2t_vit.factory import create_model  # noqa: E402
from t2t_vit.study.report import environment  # noqa: E402

DEIT_S = "timm:vit_small_patch16_224"
# (label, model, attention path): ours, the authors' arithmetic (op for op their code), the Transformer mixer, DeiT-S
VARIANTS = (
    ("T2T-ViT-14", "t2t_vit_14", "sdpa"),
    ("T2T-ViT-14, authors' arithmetic", "t2t_vit_14", "eager"),
    ("T2T-ViT_t-14", "t2t_vit_t_14", "sdpa"),
    ("DeiT-S", DEIT_S, None),
)
TINY = dict(embed_dim=64, depth=1, num_heads=2)
TOP_OPS = 8


def tokens_module(model: nn.Module) -> nn.Module:
    """The part that turns images into tokens: our T2T module (or stem), timm's patch embedding."""
    stem = getattr(model, "tokens_to_token", None)
    return model.patch_embed if stem is None else stem


def part_inputs(model: nn.Module, x: torch.Tensor, amp: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """The inputs the tokens part and the blocks get in one forward pass of `model` (read by hooks)."""
    seen: Dict[str, torch.Tensor] = {}
    hooks = [
        module.register_forward_pre_hook(lambda _m, args, key=key: seen.setdefault(key, args[0].detach()))
        for key, module in (("tokens", tokens_module(model)), ("blocks", model.blocks))
    ]
    try:
        with torch.no_grad(), torch.autocast(**amp):
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def part_step(module: nn.Module, inp: torch.Tensor, amp: Dict[str, Any], grad_input: bool) -> Callable[[], None]:
    """One forward and backward of `module` alone on `inp`, the output's gradient fixed (random, its shape)."""
    inp = inp.clone().requires_grad_(grad_input)
    with torch.autocast(**amp):
        out = module(inp)
    grad = torch.randn_like(out)
    params = [p for p in module.parameters() if p.requires_grad]

    def step() -> None:
        for p in params:
            p.grad = None
        inp.grad = None
        with torch.autocast(**amp):
            y = module(inp)
        y.backward(grad)

    return step


def op_times(step: Callable[[], None], device: torch.device) -> List[Tuple[str, float]]:
    """Each aten op's own time (ms; on CUDA its kernels' time, on the CPU its own) in one call of `step`, largest
    first. Kernels and autograd's wrappers are left out: their time is an op's already."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    step()
    with profile(activities=activities) as prof:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    times = []
    for ev in prof.key_averages():
        us = ev.self_device_time_total if device.type == "cuda" else ev.self_cpu_time_total
        if ev.key.startswith("aten::") and us > 0:
            times.append((ev.key, us / 1e3))
    return sorted(times, key=lambda t: -t[1])


def measure(device: torch.device, dtype: str, batch: int, img: int, dry: bool, repeats: int) -> Dict[str, Any]:
    """Per variant: ms per step of the tokens part, the blocks and the whole training step (in turns), and the tokens
    part's top ops."""
    amp = dict(device_type=device.type, dtype=DTYPES[dtype], enabled=dtype != "fp32")
    steps: Dict[str, Callable[[], None]] = {}
    profiles: Dict[str, List[Tuple[str, float]]] = {}
    for label, name, attn in VARIANTS:
        kwargs = dict(TINY if dry else {}, **({} if attn is None else dict(attn_impl=attn)))
        torch.manual_seed(0)
        model = create_model(name, img_size=img, **kwargs).to(device).train()
        x = torch.randn(batch, 3, img, img, device=device)
        inputs = part_inputs(model, x, amp)
        steps[f"{label}|tokens"] = part_step(tokens_module(model), inputs["tokens"], amp, grad_input=False)
        steps[f"{label}|blocks"] = part_step(model.blocks, inputs["blocks"], amp, grad_input=True)
        steps[f"{label}|step"] = make_step(
            model, BenchConfig(name, "train", device=str(device), dtype=dtype, batch_size=batch, img_size=img)
        )
        try:
            profiles[label] = op_times(steps[f"{label}|tokens"], device)
        except RuntimeError as e:  # the profiler, not the step: the timings still stand
            logging.warning("profiling %s's tokens part failed: %s", label, e)
            profiles[label] = []
    times = time_steps(steps, str(device), warmup=1 if dry else 3, repeats=repeats)
    rows = []
    for label, name, attn in VARIANTS:
        ms = {part: 1e3 * statistics.median(times[f"{label}|{part}"]) for part in ("tokens", "blocks", "step")}
        rows.append(dict(label=label, model=name.removeprefix("timm:"), attn=attn or "timm", **ms))
    return dict(rows=rows, ops={k: v[:TOP_OPS] for k, v in profiles.items()})


def markdown(result: Dict[str, Any], command: str) -> str:
    info = result["setup"]
    lines = [
        f"# Where a training step's time goes, by part ({info['device']})",
        "",
        f"`{command}` on {info['machine']}; torch {info['torch']}; commit {info['commit']}; {info['wall_s']} s. "
        f"{info['dtype']}, batch {info['batch']}, {info['img_size']} px; median of {info['repeats']} of each, all "
        "taking turns." + (" Dry run: tiny sizes, the numbers mean nothing." if info["dry"] else ""),
        "",
        "Each part's forward and backward alone, on the input it gets in the model; the step is the whole training "
        "step (loss, backward, fused AdamW); the rest is the step less the two parts.",
        "",
        "| model | tokens ms | blocks ms | rest ms | step ms | tokens share |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        rest = r["step"] - r["tokens"] - r["blocks"]
        lines.append(
            f"| {r['label']} | {r['tokens']:.1f} | {r['blocks']:.1f} | {rest:.1f} | {r['step']:.1f} | "
            f"{r['tokens'] / r['step']:.0%} |"
        )
    rows = {r["label"]: r for r in result["rows"]}
    ours, deit = rows[VARIANTS[0][0]], rows["DeiT-S"]
    gap = {part: ours[part] - deit[part] for part in ("step", "tokens", "blocks")}
    lines += [
        "",
        f"T2T-ViT-14's step against DeiT-S's: {gap['step']:+.1f} ms; the tokens part {gap['tokens']:+.1f} ms, the "
        f"blocks {gap['blocks']:+.1f} ms.",
    ]
    for label, ops in result["ops"].items():
        total = rows[label]["tokens"]
        lines += ["", f"### {label}: the tokens part's ops (own time, one call)", ""]
        if not ops:  # CUDA: the profiler saw no kernels (CUPTI not permitted in this container?)
            lines.append("The profiler recorded no op time here.")
            continue
        lines += ["| op | ms | of the part |"]
        lines += ["|---|---:|---:|"] + [f"| `{op}` | {ms:.2f} | {ms / total:.0%} |" for op, ms in ops]
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="the CPU, tiny sizes: the script runs, nothing more")
    p.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda where there is one; the CPU in a dry run")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="autocast dtype (default bf16 on CUDA, fp32 on the CPU)")
    p.add_argument("--batch-size", type=int, help="images per step (default 256 on CUDA, 16 on the CPU, 2 dry)")
    p.add_argument("--repeats", type=int, default=10, help="timed calls of each (default 10)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="where the files go")
    args = p.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here; pass --device cpu")
    for name in ("batch_size", "repeats"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: give 1 or more")
    dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    batch = args.batch_size or (2 if args.dry_run else 256 if device.type == "cuda" else 16)
    repeats, img = (2, 32) if args.dry_run else (args.repeats, 224)
    start = time.monotonic()
    result = measure(device, dtype, batch, img, args.dry_run, repeats)
    env = environment()
    result["setup"] = dict(
        device=device.type,
        machine=env["machine"],
        commit=env["commit"],
        torch=env["torch"],
        wall_s=round(time.monotonic() - start),
        dtype=dtype,
        batch=batch,
        img_size=img,
        repeats=repeats,
        dry=args.dry_run,
    )
    command = " ".join(["python benchmarks/parts.py", *(argv if argv is not None else sys.argv[1:])])
    args.out.mkdir(parents=True, exist_ok=True)
    page = markdown(result, command)
    (args.out / f"parts_{device.type}.md").write_text(page)
    (args.out / f"parts_{device.type}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
