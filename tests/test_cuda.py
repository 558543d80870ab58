"""The paths only a GPU runs (`pytest -m cuda`; `make gpu-check` runs them where a GPU is lent). Each fails if its
path is wrong; without CUDA each skips, saying so.

Half-precision bounds: u = 2^-8 (bf16) or 2^-11 (fp16) is the relative rounding of one value. Autocast rounds each
matmul's inputs (activations and weights) to half and accumulates in fp32, so each matmul is off by about u
relative; the R roundings along a small network's forward and backward add up as independent errors, about
u sqrt(R) (R ~ 40 for two blocks and the T2T module, ~6.3 u), and a result more than 16 u (loss) or 32 u (gradients,
whose small components move more) from fp32 is a broken path, not rounding.
"""

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from t2t_vit import create_model
from t2t_vit.data.device_batches import DeviceBatches

from .helpers import tiny_train_config

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available here (make gpu-check runs these)"),
]
CUDA = torch.device("cuda", 0)
ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "bf16")
UNIT = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
SMALL = dict(embed_dim=64, depth=2, num_heads=2, mlp_ratio=2.0, token_dim=16, t2t_drop_rate=0.0)


def _small_model(**kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("t2t_vit_7", img_size=32, num_classes=10, **dict(SMALL, **kwargs)).to(CUDA)


def _loss_and_grads(model, x, y, dtype):
    model.zero_grad(set_to_none=True)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
        loss = torch.nn.functional.cross_entropy(model(x), y)
    scaler.scale(loss).backward()
    scale = scaler.get_scale() if dtype == torch.float16 else 1.0
    grads = torch.cat([p.grad.flatten() / scale for p in model.parameters() if p.grad is not None])
    return loss.item(), grads


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


# --------------------------------------------------------------------------------------------- the input path


class _Batches:
    """A loader stand-in: fixed uint8 batches and an EpochSampler-like position."""

    def __init__(self, batches):
        self.batches, self.batch_size = batches, len(batches[0][0])
        self.sampler = type("Sampler", (), dict(epoch=2, start=0))()

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


DATA_CONFIG = dict(input_size=(3, 32, 32), mean=[0.2, 0.4, 0.6], std=[0.3, 0.2, 0.1])


def _uint8_batches(n: int = 6):
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randint(0, 256, (16, 3, 32, 32), generator=g, dtype=torch.uint8), torch.arange(16), (0, 0))
        for _ in range(n)
    ]


def test_the_side_stream_hands_over_what_the_cpu_path_and_a_plain_transfer_make():
    """Const erasing: the CPU's batches (normalised, erased) within fp32 rounding. Pixel erasing: bitwise the batches
    prepared on the default stream, while the consumer keeps the GPU busy (a missing wait or record_stream shows)."""
    batches = _uint8_batches()
    const = (1.0, "const", 2)
    on_cpu = [b[0] for b in DeviceBatches(_Batches(batches), torch.device("cpu"), DATA_CONFIG, const, 3)]
    on_gpu = [b[0].cpu() for b in DeviceBatches(_Batches(batches), CUDA, DATA_CONFIG, const, 3)]
    for a, b in zip(on_cpu, on_gpu):
        torch.testing.assert_close(b, a, rtol=0, atol=10 * 8 * 2**-24)  # values below 10, a few roundings each
    pixel = (1.0, "pixel", 1)
    plain = DeviceBatches(_Batches(batches), CUDA, DATA_CONFIG, pixel, 3)
    expected = [plain._prepare(x.clone(), y, n)[0].cpu() for n, (x, y, _) in enumerate(batches)]
    busy = torch.randn(4096, 4096, device=CUDA)
    for n, (x, _, _) in enumerate(DeviceBatches(_Batches(batches), CUDA, DATA_CONFIG, pixel, 3)):
        for _ in range(4):
            busy = busy @ busy / 64  # the side stream runs ahead of a busy default stream
        assert torch.equal(x.cpu(), expected[n]), n


# ------------------------------------------------------------------------------------------ half precision


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_a_half_precision_step_follows_fp32_with_the_performer_kernel_in_fp32(dtype, monkeypatch):
    from t2t_vit.models import kernels

    seen = []
    real = kernels._performer_kernel

    def recording(q, k, v, w, eps):
        seen.append((q.dtype, k.dtype, torch.is_autocast_enabled("cuda")))
        return real(q, k, v, w, eps)

    monkeypatch.setattr(kernels, "_performer_kernel", recording)
    model = _small_model()
    g = torch.Generator(device=CUDA).manual_seed(0)
    x, y = torch.randn(32, 3, 32, 32, device=CUDA, generator=g), torch.arange(32, device=CUDA) % 10
    loss32, grads32 = _loss_and_grads(model, x, y, None)
    seen.clear()
    loss, grads = _loss_and_grads(model, x, y, dtype)
    assert seen and all(s == (torch.float32, torch.float32, False) for s in seen)
    u = UNIT[dtype]
    assert abs(loss - loss32) <= 16 * u * abs(loss32)
    assert _relative(grads, grads32) <= 32 * u


def test_an_fp16_overflow_the_scaler_handles_is_not_a_failure():
    """GradScaler's first scales overflow on purpose: the updates are dropped and the scale shrinks, and with
    nonfinite: stop the epoch goes on; a non-finite loss still halts it."""
    from t2t_vit.training import engine

    model = _small_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    # 2^30 overflows fp16's 65504 (~2^16) at first; 40 halvings reach scales that do not. From 2^60 they ended at
    # 2^20, every step overflowing: the last update could not go through (the first H200 run)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**30)
    ctx = engine.StepContext(optimizer=opt, criterion=None, device=CUDA, scaler=scaler, amp_dtype=torch.float16)
    params = [p for p in model.parameters()]
    pending = engine._fresh_flags(0.0, CUDA)
    x, y = torch.randn(16, 3, 32, 32, device=CUDA), torch.arange(16, device=CUDA) % 10
    dropped = 0
    for k in range(40):
        before = params[0].detach().clone()
        with torch.autocast("cuda", dtype=torch.float16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        engine._update(model, params, ctx, pending, engine.takes_found_inf(opt), k, torch.zeros((), device=CUDA))
        dropped += torch.equal(before, params[0])
    assert dropped >= 1 and scaler.get_scale() < 2.0**30  # some overflowed, and the scale came down
    assert pending.tolist()[: engine.HALTED + 1] == [0.0, 0.0, 0.0]  # no failure counted, not halted
    assert not torch.equal(before, params[0])  # and the updates went through after
    with torch.autocast("cuda", dtype=torch.float16):
        loss = torch.nn.functional.cross_entropy(model(x), y) * float("nan")
    scaler.scale(loss).backward()
    engine._update(model, params, ctx, pending, True, 40, (~torch.isfinite(loss.detach())).float())
    assert pending[engine.NONFINITE].item() == 1 and pending[engine.HALTED].item() == 1


# ----------------------------------------------------------------------------------------------- the run


def test_no_host_sync_inside_a_training_step(tmp_path, monkeypatch):
    """torch.cuda.set_sync_debug_mode("error") over every step of two epochs (mixup, erasing, EMA, clipping, bf16,
    the fused AdamW), lifted only for the host's read every log_interval updates and between epochs."""
    import t2t_vit.training.engine as engine
    import t2t_vit.training.run as run
    from t2t_vit.training.run import train

    real_epoch, real_read = engine.train_one_epoch, engine._read

    def strict(fn, mode):
        def call(*args, **kwargs):
            previous = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode(mode)
            try:
                return fn(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode(previous)

        return call

    monkeypatch.setattr(run, "train_one_epoch", strict(real_epoch, "error"))
    monkeypatch.setattr(engine, "_read", strict(real_read, "default"))
    monkeypatch.setattr(engine, "_show", strict(engine._show, "default"))
    extra = dict(reprob=0.25, mixup=0.2, cutmix=0.2, model_ema=True, clip_grad=1.0, log_interval=8)
    result = train(tiny_train_config(tmp_path, device="cuda", **extra), progress=False)
    assert result["epoch"] == 2 and np.isfinite(result["train_loss"])


def _run_script(code: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_a_resumed_run_on_cuda_ends_bitwise_equal_with_deterministic_algorithms(tmp_path):
    """Stopped after its first epoch's checkpoint and resumed in a fresh process (its CUDA generator at its seed
    unless the checkpoint restores it): the weights equal the uninterrupted run's, bit for bit."""
    env = dict(os.environ, CUBLAS_WORKSPACE_CONFIG=":4096:8", PYTHONPATH=str(ROOT / "src"))
    head = (
        "import torch, sys; sys.path.insert(0, 'tests'); torch.use_deterministic_algorithms(True)\n"
        "from helpers import tiny_train_config\nfrom t2t_vit.training.run import train\n"
        "kw = dict(device='cuda', drop_path=0.1, drop=0.1, reprob=0.25, mixup=0.2, cutmix=0.2, epochs=3)\n"
    )
    straight = f"train(tiny_train_config({str(tmp_path / 'a')!r}, **kw), progress=False)\n"
    first = f"train(tiny_train_config({str(tmp_path / 'b')!r}, stop_after_epochs=1, **kw), progress=False)\n"
    rest = f"train(tiny_train_config({str(tmp_path / 'b')!r}, **kw), resume='auto', progress=False)\n"
    for code in (straight, first, rest):
        _run_script(head + code, env)
    from t2t_vit.checkpoint import read_checkpoint

    a, b = (read_checkpoint(tmp_path / d / "run" / "last.pth.tar") for d in "ab")
    assert a["epoch"] == b["epoch"] == 3
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name


def test_a_one_process_torchrun_on_cuda_trains_over_nccl(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "t2t_vit"]
    cmd += ["train", "--config", "digits", "--device", "cuda", "--epochs", "2", "--output", str(tmp_path)]
    cmd += ["--name", "nccl", "--no-progress", "--model-kwargs", "{embed_dim: 32, depth: 1, num_heads: 2}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "process group nccl" in proc.stderr and "held-out top-1" in proc.stdout
    assert "destroy_process_group() was not called" not in proc.stderr  # NCCL's warning for a group left to exit


def test_compile_with_bf16_follows_eager_in_a_training_step_and_trains(tmp_path):
    from t2t_vit.training.run import train

    model = _small_model()
    compiled = torch.compile(copy.deepcopy(model))
    x, y = torch.randn(32, 3, 32, 32, device=CUDA), torch.arange(32, device=CUDA) % 10
    loss, grads = _loss_and_grads(model, x, y, torch.bfloat16)
    loss_c, grads_c = _loss_and_grads(compiled, x, y, torch.bfloat16)
    u = UNIT[torch.bfloat16]
    assert abs(loss_c - loss) <= 16 * u * abs(loss) and _relative(grads_c, grads) <= 32 * u
    # the tiny digits run sits at chance for its first 1-2 epochs (the H200 in bf16 ended 1 epoch at 9.7%), then
    # learns slowly: on the CPU (fp32) over seeds 0-2, 6 epochs gave 19-23% and 20 gave 41-60%. 25% is 9 sd above
    # chance (10%, sd 1.6 points on the 360 held-out images); 20 epochs of 22 steps are seconds on a GPU
    result = train(tiny_train_config(tmp_path, device="cuda", compile=True, epochs=20), progress=False)
    assert np.isfinite(result["train_loss"]) and result["val_top1"] > 25


def test_onnx_export_from_a_cuda_model_matches_torch(tmp_path):
    import onnxruntime as ort

    from t2t_vit.deploy.export import export_onnx

    model = _small_model().eval()
    meta = dict(arch="t2t_vit_7", data_config=dict(input_size=[3, 32, 32]))
    export_onnx(model, tmp_path / "m.onnx", meta)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model.cpu()(x)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_eval_in_bf16_agrees_with_fp32_up_to_the_near_ties(tmp_path):
    """Top-1 in bf16 and fp32 on the 360 held-out digits differ by at most the images whose fp32 logit margin is
    within bf16's rounding of the logits (16 u of their largest): only those can flip."""
    from t2t_vit.data import create_dataset, create_loader, create_transform
    from t2t_vit.factory import load_model
    from t2t_vit.training.evaluate import evaluate_checkpoint
    from t2t_vit.training.run import train

    run_dir = Path(train(tiny_train_config(tmp_path, device="cuda", epochs=4), progress=False)["run_dir"])
    ckpt = str(run_dir / "last.pth.tar")
    top1 = {p: evaluate_checkpoint(ckpt, "digits", device="cuda", workers=0, precision=p)["top1"] for p in PRECISIONS}
    model, meta = load_model(ckpt)
    val = create_dataset("digits", "val")
    val.transform = create_transform({}, meta["data_config"], training=False)
    logits = torch.cat([model.to(CUDA)(x.to(CUDA)).float().cpu() for x, _, _ in create_loader(val, 120, False, 0)])
    top2 = logits.topk(2, dim=1).values
    near = ((top2[:, 0] - top2[:, 1]) <= 2 * 16 * UNIT[torch.bfloat16] * logits.abs().amax(1)).sum().item()
    assert abs(top1["bf16"] - top1["fp32"]) <= 100 * near / len(val) + 1e-9, (top1, near)
