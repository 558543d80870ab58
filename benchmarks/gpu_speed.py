"""Training and inference throughput on one GPU, for `gpu_check.py`: the project's path against the authors' arithmetic
and timm's DeiT-S, measured in one run, with peak memory and MFU (model FLOPs per second over the GPU's dense bf16
peak: the datasheet's, and a bf16 matmul measured in the same run).

A training step is forward, backward and an AdamW update on fixed random data (`deploy.benchmark.make_step`), its
FLOPs 3x the forward's (counted with torch's flop counter on the meta device, attention matmuls included). The
variants:

    ours              attn_impl="sdpa", bf16 autocast, fused AdamW (as `t2t-vit train` runs on CUDA)
    ours, compiled    the same under torch.compile
    authors' code     attn_impl="eager" (op for op the arithmetic of their code), fp16 autocast with a GradScaler,
                      AdamW one parameter at a time (torch's implementation when they trained)
    DeiT-S            timm's vit_small_patch16_224 (4.6 GMACs, about T2T-ViT-14's 4.8) in our harness: bf16, fused
"""

import dataclasses
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from t2t_vit.deploy.benchmark import BenchConfig, input_channels, make_step, matmul_peak_gflops, time_steps
from t2t_vit.factory import create_model

DEIT_S = "timm:vit_small_patch16_224"
MODES = ("train", "infer")
TINY = dict(embed_dim=64, depth=1, num_heads=2)
# Dense (no sparsity) bf16 tensor-core peaks from the vendor's datasheets, TFLOP/s, by a name torch reports; the
# first key in the name counts ("NVIDIA H100 PCIe" is not the SXM part, "NVIDIA H100 80GB HBM3").
DATASHEET_BF16_TFLOPS = {
    "H200": 989.4,
    "H100 PCIe": 756.0,
    "H100": 989.4,
    "A100": 312.0,
    "L40S": 362.1,
    "RTX 3090": 71.0,
}


@dataclasses.dataclass
class Variant:
    label: str
    model: str
    dtype: str  # autocast dtype: bf16, fp16 (with a GradScaler) or fp32
    attn_impl: str = "sdpa"
    compile: bool = False
    optimizer: str = "fused"  # fused | for-loop (see BenchConfig.optimizer)
    model_kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)  # the dry run's tiny sizes


@dataclasses.dataclass
class Group:
    """Variants built together and timed in turns (so that the GPU's state hits each alike)."""

    mode: str  # train | infer
    batch: int
    variants: List[Variant]

    def cost_s(self) -> float:
        """A rough cost, to plan the time: model build, warm-up and repeats; a compile costs about a minute."""
        return sum(60.0 if v.compile else 5.0 for v in self.variants)


def variants(model: str, dry: bool, compiled: bool) -> List[Variant]:
    """What is measured for `model`: ours (or compiled), the authors' arithmetic; DeiT-S as itself. A dry run: fp32
    and one narrow block, to run the code, not to measure."""
    half, sizes = ("fp32", TINY) if dry else ("bf16", {})
    if model == DEIT_S:
        return [
            Variant("DeiT-S, compiled" if compiled else "DeiT-S", model, half, compile=compiled, model_kwargs=sizes)
        ]
    if compiled:
        return [Variant("ours, compiled", model, half, compile=True, model_kwargs=sizes)]
    authors = Variant(
        "authors' code", model, "fp32" if dry else "fp16", attn_impl="eager", optimizer="for-loop", model_kwargs=sizes
    )
    return [Variant("ours", model, half, model_kwargs=sizes), authors]


def plan(dry: bool) -> Tuple[List[Group], List[Group]]:
    """(eager groups, compiled groups), each in the order they are worth the time: T2T-ViT-14 and T2T-ViT_t-14
    always, DeiT-S as the anchor, then T2T-ViT-7 and -24 as time allows. A dry run: T2T-ViT-14 and DeiT-S."""
    if dry:
        return [Group(mode, 2, variants(m, True, False)) for mode in MODES for m in ("t2t_vit_14", DEIT_S)], []
    models = ["t2t_vit_14", DEIT_S, "t2t_vit_t_14", "t2t_vit_7", "t2t_vit_24"]
    eager = [Group("train", batch, variants(m, False, False)) for batch in (256, 128) for m in models[:3]]
    eager += [Group("infer", 256, variants(m, False, False)) for m in models[:3]]
    eager += [Group(mode, 256, variants(m, False, False)) for m in models[3:] for mode in MODES]
    compiled = [Group(mode, 256, variants(m, False, True)) for mode in MODES for m in models[:3]]
    compiled += [Group("train", 256, variants(m, False, True)) for m in models[3:]]
    return eager, compiled


def forward_flops(v: Variant, img_size: int) -> float:
    """FLOPs of one image's forward pass, counted on the meta device (no memory, no compute); on the CPU for models
    that cannot be built there (timm's ViTs before 1.0.2x read a tensor's value in their constructor). SDPA runs its
    math path, whose matmuls the counter sees (it counts nothing for the CPU's fused attention)."""
    kwargs = dict(v.model_kwargs, **({} if v.model.startswith("timm:") else dict(attn_impl="eager")))
    for device in ("meta", "cpu"):
        try:
            with torch.device(device):
                net = create_model(v.model, img_size=img_size, **kwargs).eval()
        except RuntimeError:
            continue
        with (
            torch.device(device),
            torch.no_grad(),
            sdpa_kernel(SDPBackend.MATH),
            FlopCounterMode(display=False) as counter,
        ):
            net(torch.empty(1, input_channels(net), img_size, img_size))
        return float(counter.get_total_flops())
    raise RuntimeError(f"{v.model} cannot be built on the meta device or the CPU")


def peak_flops(device: torch.device, dry: bool) -> Dict[str, Optional[float]]:
    """The dense bf16 peak two ways: the datasheet's (None if the GPU is not in the table) and a large bf16 matmul
    measured here (fp32 on the CPU in a dry run)."""
    if device.type != "cuda":
        return dict(datasheet=None, measured=matmul_peak_gflops("cpu", "fp32", 512 if dry else 0) * 1e9)
    sheet = datasheet_peak(torch.cuda.get_device_name(device))
    return dict(datasheet=sheet, measured=matmul_peak_gflops("cuda", "bf16", 8192) * 1e9)


def datasheet_peak(device_name: str) -> Optional[float]:
    """The dense bf16 peak in FLOP/s of the GPU that torch names `device_name`; None if it is not in the table."""
    sheet = next((v for k, v in DATASHEET_BF16_TFLOPS.items() if k in device_name), None)
    return sheet * 1e12 if sheet else None


def _build(v: Variant, mode: str, batch: int, img_size: int, device: torch.device) -> Tuple[Callable, Dict]:
    """The step of variant `v` and what it took: peak memory (MiB, its own: weights, gradients, optimizer state,
    activations, workspace) and the first step's seconds (a compile's cost)."""
    cuda = device.type == "cuda"
    before = torch.cuda.memory_allocated(device) if cuda else 0
    kwargs = dict(v.model_kwargs, **({} if v.model.startswith("timm:") else dict(attn_impl=v.attn_impl)))
    net = create_model(v.model, img_size=img_size, **kwargs).to(device)
    cfg = BenchConfig(
        model=v.model,
        mode=mode,
        device=str(device),
        dtype=v.dtype,
        compile=v.compile,
        batch_size=batch,
        img_size=img_size,
        optimizer=v.optimizer,
    )
    step = make_step(net, cfg)
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    step()
    if cuda:
        torch.cuda.synchronize(device)
    first = time.perf_counter() - start
    step()
    peak = (torch.cuda.max_memory_allocated(device) - before) / 2**20 if cuda else None
    return step, dict(first_step_s=first, peak_mib=peak)


def _rows(
    group: Group, device: torch.device, img_size: int, peaks: Dict[str, Optional[float]], flops: Dict[str, float]
) -> List[Dict[str, Any]]:
    """The group's variants built and timed in turns: a row each."""
    repeats, warmup = (2, 0) if device.type == "cpu" else (10, 2)
    steps, info = {}, {}
    for v in group.variants:
        steps[v.label], info[v.label] = _build(v, group.mode, group.batch, img_size, device)
    times = time_steps(steps, str(device), warmup, repeats)
    rows = []
    for v in group.variants:
        if v.model not in flops:
            flops[v.model] = forward_flops(v, img_size)
        seconds = statistics.median(times[v.label])
        achieved = flops[v.model] * group.batch * (3 if group.mode == "train" else 1) / seconds
        rows.append(
            dict(
                mode=group.mode,
                model=v.model.removeprefix("timm:"),
                variant=v.label,
                batch=group.batch,
                dtype=v.dtype,
                img_per_s=group.batch / seconds,
                step_ms=1e3 * seconds,
                tflops=achieved / 1e12,
                mfu_datasheet=achieved / peaks["datasheet"] if peaks["datasheet"] else None,
                mfu_measured=achieved / peaks["measured"] if peaks["measured"] else None,
                **info[v.label],
            )
        )
    return rows


def measure(
    groups: List[Group], device: torch.device, img_size: int, deadline: float, peaks: Dict[str, Optional[float]]
) -> Tuple[List[Dict[str, Any]], List[str], List[Tuple[str, str]]]:
    """Rows (one per variant) of the groups that fit before `deadline` (time.monotonic()), the groups left out, and
    the groups that failed with what they raised: one failure costs its own group only."""
    rows: List[Dict[str, Any]] = []
    left_out: List[str] = []
    failed: List[Tuple[str, str]] = []
    flops: Dict[str, float] = {}
    for group in groups:
        what = f"{group.mode} batch {group.batch}: " + ", ".join(f"{v.label} {v.model}" for v in group.variants)
        if time.monotonic() + group.cost_s() > deadline:
            left_out.append(what)
            continue
        try:
            rows += _rows(group, device, img_size, peaks, flops)
        except Exception as e:  # noqa: BLE001 - an out-of-memory or a model that cannot run: named, the rest go on
            failed.append((what, f"{type(e).__name__}: {str(e)[:300]}"))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows, left_out, failed
