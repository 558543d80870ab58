"""The training step never waits for the device, and the input path finishes batches there."""

import collections
import math

import pytest
import torch
from scipy import stats

import t2t_vit.training.engine as engine
import t2t_vit.training.run as train_mod
from t2t_vit.data import create_transform
from t2t_vit.data.device_batches import DeviceBatches, erase_boxes, random_erase
from t2t_vit.training.run import train

from .helpers import image_folder, tiny_train_config

READS = ("item", "tolist", "__bool__")  # every way a tensor's value reaches Python (each a sync on CUDA)
# the loader's own CPU tensors, which never touch the device: the sampler's permutation, the crop boxes, the seed
# torch's DataLoader draws for its workers
HOST_SIDE = (
    "/t2t_vit/data/loader.py",
    "/t2t_vit/data/sources.py",
    "/t2t_vit/data/tensor_batches.py",
    "/torch/utils/data/dataloader.py",
)


def _count_reads(monkeypatch) -> collections.Counter:
    """Count reads of tensor values inside train_one_epoch, by the function that made them; the loader's draws on
    its own CPU tensors are left out (they never touch the device)."""
    calls: collections.Counter = collections.Counter()
    inside = [False]

    def counting(name):
        real = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            if inside[0]:
                import sys

                caller = sys._getframe(1).f_code
                if not caller.co_filename.endswith(HOST_SIDE):
                    calls[caller.co_name] += 1
            return real(self, *args, **kwargs)

        return read

    for name in READS:
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    real_epoch = engine.train_one_epoch

    def epoch(*args, **kwargs):
        inside[0] = True
        try:
            return real_epoch(*args, **kwargs)
        finally:
            inside[0] = False

    monkeypatch.setattr(train_mod, "train_one_epoch", epoch)
    return calls


@pytest.mark.parametrize("extra", [dict(), dict(aa="rand-m5-mstd0.5", workers=2, accum_steps=2, clip_grad=1.0)])
def test_the_host_reads_the_device_once_per_log_interval(tmp_path, monkeypatch, extra):
    """Mixup, random erasing, EMA, label smoothing on; 22 batches an epoch, 2 epochs."""
    calls = _count_reads(monkeypatch)
    cfg = tiny_train_config(tmp_path, log_interval=4, reprob=0.25, mixup=0.2, cutmix=0.2, model_ema=True, **extra)
    train(cfg, progress=False)
    updates = 22 // cfg["accum_steps"]
    reads_per_epoch = math.ceil(updates / cfg["log_interval"])
    assert dict(calls) == {"_read": 2 * reads_per_epoch}


def test_a_nonfinite_update_is_dropped_on_the_device(tmp_path, monkeypatch):
    """With the fused optimizer the update, the optimizer's step count and the EMA stay as they were."""
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    ctx = engine.StepContext(optimizer=opt, criterion=None, device=torch.device("cpu"), nonfinite="skip")
    pending = engine._fresh_flags(0.0, ctx.device)
    params = list(model.parameters())
    for bad in (False, True, False):
        before = [p.detach().clone() for p in params]
        loss = model(torch.ones(1, 3)).sum() * (float("nan") if bad else 1.0)
        loss.backward()
        engine._update(model, params, ctx, pending, engine.takes_found_inf(opt), 0)
        assert all(torch.equal(a, b) for a, b in zip(before, params)) == bad
    assert pending.tolist()[:3] == [1.0, 0.0, 0.0] and opt.state[params[0]]["step"].item() == 2


# ---------------------------------------------------------------------------------------------- the device's input

DATA_CONFIG = dict(
    input_size=(3, 16, 16), mean=[0.2, 0.4, 0.6], std=[0.3, 0.2, 0.1], interpolation="bicubic", crop_pct=1.0
)


class _Batches:
    """A loader stand-in: fixed batches and an EpochSampler-like position."""

    def __init__(self, batches, batch_size):
        self.batches, self.batch_size = batches, batch_size
        self.sampler = type("Sampler", (), dict(epoch=3, start=0))()

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def test_uint8_batches_normalise_on_the_device_as_the_float_transform_does():
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (4, 16, 16, 3), generator=g, dtype=torch.uint8)
    images = [Image.fromarray(p.numpy()) for p in pixels]
    as_float = torch.stack([create_transform({}, DATA_CONFIG, training=False)(im) for im in images])
    as_uint8 = torch.stack([create_transform({}, DATA_CONFIG, training=False, uint8=True)(im) for im in images])
    assert as_uint8.dtype == torch.uint8
    batches = DeviceBatches(
        _Batches([(as_uint8, torch.zeros(4, dtype=torch.long), (0, 0))], 4), torch.device("cpu"), DATA_CONFIG
    )
    ((out, _, _),) = list(batches)
    # (x/255 - m)/s against (x - 255 m)/(255 s): a few roundings of values below 1/0.1 = 10, each <= 2^-24 relative
    torch.testing.assert_close(out, as_float, rtol=0, atol=10 * 8 * 2**-24)


def test_random_erasing_draws_as_timm_does():
    """The boxes' areas, aspects and the erased share follow timm's RandomErasing (two-sample KS tests), and the
    same test rejects a box size off by one pixel-row's worth."""
    from timm.data.random_erasing import RandomErasing

    n, size = 4000, 32
    boxes = erase_boxes(n, 1, size, size, 0.5, torch.Generator().manual_seed(0))[:, 0].double()
    torch.manual_seed(0)
    import random

    random.seed(0)
    erase = RandomErasing(probability=0.5, mode="const", device="cpu")
    x = torch.ones(n, 1, size, size)
    erase(x)
    # timm fills with 0 ("const"): the box is the zero region
    zero = x[:, 0] == 0
    t_h = zero.any(2).sum(1).double()
    t_w = zero.any(1).sum(1).double()
    ours, theirs = boxes[boxes[:, 2] > 0], torch.stack([t_h, t_w], 1)[t_h > 0]
    assert abs(len(ours) / n - len(theirs) / n) < 4 * math.sqrt(0.25 / n) * math.sqrt(2)  # both ~ Binomial(n, 0.5)
    area = (ours[:, 2] * ours[:, 3], theirs[:, 0] * theirs[:, 1])
    aspect = (ours[:, 2] / ours[:, 3], theirs[:, 0] / theirs[:, 1])
    for a, b in (area, aspect):
        assert stats.ks_2samp(a.numpy(), b.numpy()).pvalue > 1e-3
    assert stats.ks_2samp((ours[:, 2] * ours[:, 3]).numpy(), ((theirs[:, 0] + 2) * theirs[:, 1]).numpy()).pvalue < 1e-3


def test_erasing_is_seeded_by_epoch_and_batch_and_fills_only_its_boxes():
    x = torch.zeros(8, 3, 16, 16)
    boxes = erase_boxes(8, 2, 16, 16, 1.0, torch.Generator().manual_seed(1))
    out = random_erase(x, boxes, "pixel", torch.Generator().manual_seed(2))
    for img, bs in zip(out, boxes):
        inside = torch.zeros(16, 16, dtype=torch.bool)
        for top, left, h, w in bs.tolist():
            inside[top : top + h, left : left + w] = True
        assert (img[:, ~inside] == 0).all() and (img[:, inside] != 0).all()
    batch = (torch.zeros(8, 3, 16, 16, dtype=torch.uint8), torch.zeros(8, dtype=torch.long), (0, 0))
    loaders = [
        DeviceBatches(_Batches([batch, batch], 8), torch.device("cpu"), DATA_CONFIG, (0.5, "pixel", 1), 7)
        for _ in range(2)
    ]
    first, second = ([b[0] for b in loader] for loader in loaders)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[0], first[1])  # another batch number, other boxes


def test_benchmark_loader_prints_the_input_path_beside_the_model(capsys):
    import json

    from t2t_vit.cli import main

    assert main(
        [
            "benchmark",
            "--loader",
            "digits",
            "--config",
            "digits",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--batch-size",
            "16",
            "--workers",
            "0",
            "--json",
        ]
    ) in (0, None)
    res = json.loads(capsys.readouterr().out)
    assert res["input"]["path"] == "TensorBatches" and res["input"]["img_per_s"] > 0 and res["model_img_per_s"] > 0
    assert res["bound_by"] in ("input", "model") and res["batch_size"] == 16
    assert main(["benchmark", "--loader", "digits"]) == 2 and "--config NAME" in capsys.readouterr().err


class _InfGradient(torch.autograd.Function):
    """Identity forward, an infinite gradient backward: a finite loss whose gradients overflow at any scale."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


def test_an_overflow_the_grad_scaler_handles_is_not_a_nonfinite_step():
    """fp16's dynamic loss scaling overflows by design (at the start, after each growth interval): GradScaler drops
    the update and halves its scale, and with nonfinite: stop the epoch goes on. A non-finite loss is a failure, and
    so is an overflow at the scale's floor (1: the gradients themselves overflow). A CPU GradScaler at 1e38 stands
    in for fp16's scale: the gradients (10 and 1) times 1e38 or 5e37 overflow fp32, times 2.5e37 they do not."""
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    params, x = list(model.parameters()), torch.full((1, 3), 10.0)

    def step(scaler, k, loss_of=lambda y: y.sum()) -> bool:
        """One update; whether it was dropped."""
        ctx = engine.StepContext(optimizer=opt, criterion=None, device=torch.device("cpu"), scaler=scaler)
        before = [p.detach().clone() for p in params]
        loss = loss_of(model(x))
        scaler.scale(loss).backward()
        engine._update(model, params, ctx, pending, True, k, (~torch.isfinite(loss.detach())).float())
        return all(torch.equal(a, b) for a, b in zip(before, params))

    pending = engine._fresh_flags(0.0, torch.device("cpu"))
    scaler = torch.amp.GradScaler("cpu", init_scale=1e38)
    assert [step(scaler, k) for k in range(4)] == [True, True, False, False]
    assert scaler.get_scale() == float(torch.tensor(1e38) / 4) and pending.tolist() == [0.0, 0.0, 0.0, -1.0]
    assert step(scaler, 4, lambda y: y.sum() * float("nan"))  # a non-finite loss: dropped, counted, halted
    assert pending.tolist() == [1.0, 1.0, 1.0, 4.0]
    pending = engine._fresh_flags(0.0, torch.device("cpu"))
    assert step(torch.amp.GradScaler("cpu", init_scale=1.0), 0, lambda y: _InfGradient.apply(y).sum())
    assert pending.tolist() == [1.0, 1.0, 1.0, 0.0]  # an overflow at the floor: a failure


@pytest.mark.filterwarnings("ignore:This DataLoader will create 4 worker")  # asked for on a 2-core machine
def test_benchmark_loader_says_when_a_small_folder_leaves_its_workers_idle(tmp_path, capsys, monkeypatch):
    from t2t_vit.cli import main
    from t2t_vit.data import loader

    monkeypatch.setattr(loader.os, "cpu_count", lambda: 4)  # workers are capped at the cores; this asks for 4

    folder = image_folder(tmp_path / "images", per_class=8)  # 24 images: 6 batches of 4 an epoch for 4 workers
    args = ["benchmark", "--loader", str(folder), "--config", "digits", "--repeats", "1", "--warmup", "0"]
    assert main([*args, "--batch-size", "4", "--workers", "4"]) in (0, None)
    out = capsys.readouterr().out
    assert "input path alone (DataLoader, 4 workers)" in out
    assert "note: 6 batches an epoch for 4 workers: each epoch's end leaves workers idle" in out
    assert main([*args, "--batch-size", "2", "--workers", "1"]) in (0, None)  # 12 batches for 1 worker: no note
    assert "note:" not in capsys.readouterr().out
