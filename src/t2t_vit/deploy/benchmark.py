"""Model cost and speed: parameters, MACs, images per second and peak memory, fast path against the eager one.

Speed is timed in this process; with `compare_eager` the fast (`attn_impl="sdpa"`) and the authors' eager model
(same weights) take turns step by step, so load from other processes hits both alike. Peak memory is measured in
a fresh subprocess per model, so nothing else lives in it: on CPU the peak resident set size of one step (the
kernel's high-water mark, reset before the step) less the process's size before the model was built; on CUDA the
peak bytes allocated. Both count weights, gradients, optimizer state, activations and workspace.
"""

import ctypes
import dataclasses
import gc
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from ..errors import InputError
from ..models.cost import forward_cost, model_cost

_logger = logging.getLogger(__name__)

MODES = ("infer", "train")
# AdamW as torch implements it by default (one kernel per op over all parameters: foreach), fused (one kernel per
# update: what `t2t-vit train` runs), or one parameter at a time (torch's implementation when the authors trained)
OPTIMIZERS = {"adamw": {}, "fused": dict(fused=True), "for-loop": dict(foreach=False)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclasses.dataclass
class BenchConfig:
    """One measurement: a model, a step (`mode`) and the conditions it runs under."""

    model: str
    mode: str = "infer"  # "infer": forward under inference_mode; "train": forward, backward, AdamW step
    device: str = "cpu"
    dtype: str = "fp32"  # autocast dtype; "fp32" runs without autocast
    compile: bool = False
    batch_size: int = 16
    img_size: int = 224
    warmup: int = 2
    repeats: int = 5
    model_kwargs: Dict[str, Any] = dataclasses.field(default_factory=dict)  # constructor arguments beyond the name
    optimizer: str = "adamw"  # the training step's AdamW: an OPTIMIZERS key

    def check(self) -> None:
        """InputError naming the bad field; also checks that the model exists and tiles `img_size`."""
        if self.mode not in MODES:
            raise InputError(f"mode={self.mode!r} is not one of {MODES}")
        if self.dtype not in DTYPES:
            raise InputError(f"dtype={self.dtype!r} is not one of {tuple(DTYPES)}")
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"optimizer={self.optimizer!r} is not one of {tuple(OPTIMIZERS)}")
        if self.batch_size < 1 or self.repeats < 1 or self.warmup < 0:
            raise InputError(
                f"batch size {self.batch_size}, repeats {self.repeats} and warm-up {self.warmup} must be positive "
                "(warm-up may be 0)"
            )
        try:
            device = torch.device(self.device)
        except RuntimeError as e:
            raise InputError(f"device {self.device!r} is not a device ({e}): use e.g. cpu, cuda or cuda:1") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"device {self.device!r} asked for, but CUDA is not available here: use --device cpu")
        with torch.device("meta"):
            _create(self.model, "sdpa", self.img_size, self.model_kwargs)


def _create(name: str, attn_impl: str, img_size: int, model_kwargs: Optional[Dict[str, Any]] = None) -> torch.nn.Module:
    from ..factory import constructor_keywords, create_model

    if name.startswith("timm:"):  # a timm baseline: no attention switch; the input size where it takes one
        sized = "img_size" in (constructor_keywords(name) or [])
        return create_model(name, **({"img_size": img_size} if sized else {}), **(model_kwargs or {}))
    return create_model(name, attn_impl=attn_impl, img_size=img_size, **(model_kwargs or {}))


def _cost(cfg: BenchConfig) -> Tuple[int, int]:
    """(parameters, forward multiply-accumulates per image) of the model as `_create` builds it to be timed."""
    if not cfg.model.startswith("timm:"):
        return model_cost(cfg.model, img_size=cfg.img_size, **cfg.model_kwargs)
    with torch.device("meta"):
        model = _create(cfg.model, "sdpa", cfg.img_size, cfg.model_kwargs).eval()
        return forward_cost(model, torch.empty(1, input_channels(model), cfg.img_size, cfg.img_size))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def input_channels(model: torch.nn.Module) -> int:
    """The image channels a model takes: its `in_chans`, else its first convolution's (timm's ViTs before timm 1.0.26
    keep no `in_chans`)."""
    chans = getattr(model, "in_chans", None)
    if chans is None:
        conv = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
        chans = conv.in_channels if conv is not None else 3
    return chans


def make_step(model: torch.nn.Module, cfg: BenchConfig) -> Callable[[], None]:
    """A closure running one step of `cfg.mode` on fixed random data."""
    device = torch.device(cfg.device)
    x = torch.randn(cfg.batch_size, input_channels(model), cfg.img_size, cfg.img_size, device=device)
    amp = dict(device_type=device.type, dtype=DTYPES[cfg.dtype], enabled=cfg.dtype != "fp32")
    if cfg.mode == "infer":
        model.eval()
        net = torch.compile(model) if cfg.compile else model

        def infer() -> None:
            with torch.inference_mode(), torch.autocast(**amp):
                net(x)

        return infer
    model.train()
    net = torch.compile(model) if cfg.compile else model
    y = torch.randint(0, model.num_classes, (cfg.batch_size,), device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, **OPTIMIZERS[cfg.optimizer])
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.dtype == "fp16")

    def train() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(**amp):
            loss = torch.nn.functional.cross_entropy(net(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    return train


def time_steps(steps: Dict[str, Callable[[], None]], device: str, warmup: int, repeats: int) -> Dict[str, List[float]]:
    """Seconds per step of each callable, the callables taking turns so that outside load hits each alike."""
    dev = torch.device(device)
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: Dict[str, List[float]] = {k: [] for k in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            _sync(dev)
            start = time.perf_counter()
            step()
            _sync(dev)
            times[name].append(time.perf_counter() - start)
    return times


def _rss_mib(peak: bool = False) -> float:
    """Resident set size, or its high-water mark, in MiB (/proc on Linux; elsewhere getrusage's lifetime peak)."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    field = "VmHWM" if peak else "VmRSS"
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1)) / 1024  # type: ignore[union-attr]


def _release_free_memory() -> None:
    """Give freed heap back to the OS (glibc), so that the resident size counts live memory only."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident high-water mark (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure_memory_here(cfg_dict: Dict[str, Any], attn_impl: str) -> float:
    """Median peak memory (MiB) of one step of a fresh model; meant for a process that runs nothing else."""
    cfg = BenchConfig(**cfg_dict)
    device = torch.device(cfg.device)
    torch.manual_seed(0)
    if device.type == "cuda":
        model = _create(cfg.model, attn_impl, cfg.img_size, cfg.model_kwargs).to(device)
        step = make_step(model, cfg)
        for _ in range(cfg.warmup):
            step()
        peaks = []
        for _ in range(cfg.repeats):
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            step()
            torch.cuda.synchronize(device)
            peaks.append(torch.cuda.max_memory_allocated(device) / 2**20)
        return statistics.median(peaks)
    _release_free_memory()
    base = _rss_mib()
    model = _create(cfg.model, attn_impl, cfg.img_size, cfg.model_kwargs)
    step = make_step(model, cfg)
    for _ in range(max(cfg.warmup, 1)):
        step()
    peaks = []
    for _ in range(cfg.repeats):
        _release_free_memory()
        if not _reset_peak_rss():  # the high-water mark of the whole run: warm-up steps are the same step
            break
        step()
        peaks.append(_rss_mib(peak=True))
    if not peaks:
        step()
        peaks.append(_rss_mib(peak=True))
    return statistics.median(peaks) - base


def measure_memory(cfg: BenchConfig, attn_impl: str, repeats: int = 3) -> float:
    """`measure_memory_here` in a fresh Python process (MiB): one warm-up step, the median of `repeats` steps."""
    code = (
        "import json, sys\n"
        "from t2t_vit.deploy.benchmark import measure_memory_here\n"
        "print(json.dumps(measure_memory_here(json.loads(sys.argv[1]), sys.argv[2])))\n"
    )
    src = str(Path(__file__).resolve().parents[1])  # the directory holding the t2t_vit package
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])))
    cfg_json = json.dumps(dict(dataclasses.asdict(cfg), warmup=1, repeats=min(cfg.repeats, repeats)))
    proc = subprocess.run(
        [sys.executable, "-c", code, cfg_json, attn_impl], capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement of {cfg.model} ({attn_impl}) failed:\n{proc.stderr[-2000:]}")
    return float(proc.stdout.strip().splitlines()[-1])


def matmul_peak_gflops(device: str = "cpu", dtype: str = "fp32", size: int = 0, repeats: int = 3) -> float:
    """This machine's dense matmul rate (GFLOP/s): the best of `repeats` square `size` x `size` products."""
    dev = torch.device(device)
    size = size or (4096 if dev.type == "cpu" else 8192)
    a = torch.randn(size, size, device=dev, dtype=DTYPES[dtype])
    b = torch.randn(size, size, device=dev, dtype=DTYPES[dtype])
    times = time_steps({"mm": lambda: a @ b}, device, warmup=1, repeats=repeats)["mm"]
    return 2 * size**3 / min(times) / 1e9


def device_name(device: str) -> str:
    """The processor's model name (CPU: /proc/cpuinfo) or the GPU's name."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    try:
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    except OSError:
        match = None
    return match.group(1).strip() if match else (platform.processor() or platform.machine())


def result_name(base: str, quick: bool = False, tag: str = "") -> str:
    """A result file's stem: `base`, then `_quick` for a quick run and `_<tag>` (e.g. a machine: cpu_xeon)."""
    if not re.fullmatch(r"[A-Za-z0-9_-]*", tag):
        raise InputError(f"--tag {tag!r}: letters, digits, _ and - only (it ends the result files' names)")
    return base + "".join(f"_{t}" for t in ("quick" if quick else "", tag) if t)


def benchmark(
    cfg: BenchConfig,
    compare_eager: bool = False,
    attn_impl: str = "sdpa",
    memory: bool = True,
    peak_gflops: Optional[float] = None,
) -> Dict[str, Any]:
    """Measure `cfg` (and with `compare_eager` the eager model beside it) and return the results as a dict.

    Per implementation: median seconds per step, images per second, peak memory (MiB), achieved GFLOP/s (forward
    MACs x 2 x img/s, x 3 for a training step: backward is counted as twice the forward) and its fraction of the
    matmul peak. With `compare_eager`, `ratios`: speed = fast img/s / eager img/s, memory = fast peak / eager peak.
    """
    cfg.check()
    if cfg.model.startswith("timm:"):
        if compare_eager or attn_impl != "sdpa":
            raise InputError(
                f"--compare-eager and --attn-impl switch the T2T-ViTs' attention; {cfg.model} runs as timm builds it "
                "(its own fused attention, where it has one): drop them for a timm baseline"
            )
        impls = ["timm"]  # the row's name: no attention switch of ours
    else:
        impls = [attn_impl, "eager"] if compare_eager and attn_impl != "eager" else [attn_impl]
    params, macs = _cost(cfg)
    if peak_gflops is None:
        peak_gflops = matmul_peak_gflops(cfg.device, cfg.dtype)
    device = torch.device(cfg.device)
    torch.manual_seed(0)
    models = {impl: _create(cfg.model, impl, cfg.img_size, cfg.model_kwargs).to(device) for impl in impls}
    for model in list(models.values())[1:]:
        model.load_state_dict(models[impls[0]].state_dict())
    if cfg.compile:  # each configuration compiles afresh: dynamo's recompile limit is per process, not per model
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
    steps = {impl: make_step(m, cfg) for impl, m in models.items()}
    _logger.info("timing %s %s %s on %s: %s", cfg.model, cfg.mode, cfg.dtype, cfg.device, ", ".join(impls))
    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):  # never time eager as "compiled"
        times = time_steps(steps, cfg.device, cfg.warmup, cfg.repeats)
    if cfg.compile and not torch._dynamo.utils.counters["stats"]["unique_graphs"]:
        raise RuntimeError(f"{cfg.model}: torch.compile produced no graph, the 'compiled' row would be eager")
    del steps, models
    flops_per_image = 2 * macs * (3 if cfg.mode == "train" else 1)
    results: Dict[str, Dict[str, Any]] = {}
    for impl in impls:
        sec = statistics.median(times[impl])
        achieved = flops_per_image * cfg.batch_size / sec / 1e9
        results[impl] = dict(
            step_ms=1e3 * sec,
            img_per_s=cfg.batch_size / sec,
            step_ms_all=[1e3 * t for t in times[impl]],
            achieved_gflops=achieved,
            peak_fraction=achieved / peak_gflops,
            peak_mem_mib=None,
        )
    if memory:
        for impl in impls:
            _logger.info("peak memory of %s (%s) in a fresh process", cfg.model, impl)
            results[impl]["peak_mem_mib"] = measure_memory(cfg, impl)
    out: Dict[str, Any] = dict(
        dataclasses.asdict(cfg),
        device_name=device_name(cfg.device),
        cpu_count=os.cpu_count(),
        load_avg=load_avg,  # 1-minute load average as timing began: this run's own threads count too
        threads=torch.get_num_threads() if device.type == "cpu" else None,
        torch=torch.__version__,
        params=params,
        gmacs_per_image=macs / 1e9,
        matmul_peak_gflops=peak_gflops,
        results=results,
    )
    if len(impls) == 2:
        fast, eager = results[impls[0]], results["eager"]
        out["ratios"] = dict(
            speed=fast["img_per_s"] / eager["img_per_s"],
            memory=None if not memory else fast["peak_mem_mib"] / eager["peak_mem_mib"],
        )
    return out


def format_result(res: Dict[str, Any]) -> str:
    """A few lines of text: the conditions, one row per implementation, the ratios."""
    head = (
        f"{res['model']}  {res['mode']}  {res['device']} ({res['device_name']}"
        + (f", {res['threads']} threads" if res.get("threads") else "")
        + f")  {res['dtype']}{'  compiled' if res['compile'] else ''}  batch {res['batch_size']}  "
        f"{res['img_size']} px\n"
        f"params {res['params']:,}  GMACs/img {res['gmacs_per_image']:.2f}  "
        f"matmul peak {res['matmul_peak_gflops']:.0f} GFLOP/s\n"
    )
    rows = [("impl", "ms/step", "img/s", "peak MiB", "GFLOP/s", "of peak")]
    for impl, r in res["results"].items():
        mem = "-" if r["peak_mem_mib"] is None else f"{r['peak_mem_mib']:.0f}"
        rows.append(
            (
                impl,
                f"{r['step_ms']:.1f}",
                f"{r['img_per_s']:.1f}",
                mem,
                f"{r['achieved_gflops']:.1f}",
                f"{100 * r['peak_fraction']:.0f}%",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths))) for row in rows]
    text = head + "\n".join(lines)
    if "ratios" in res:
        r = res["ratios"]
        text += f"\nfast / eager: speed {r['speed']:.2f}x"
        if r["memory"] is not None:
            text += f", peak memory {r['memory']:.2f}x"
    return text
