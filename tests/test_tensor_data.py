"""In-memory small data: crop and flip of uint8 tensors a batch at a time, as the per-image path would draw them."""
import signal

import torch
import torch.nn.functional as F

from t2t_vit.config import resolve_config
from t2t_vit.tensor_data import TensorBatches, crop_boxes, resized_crops
from t2t_vit.train import train
from t2t_vit.train_setup import build_data

from .conftest import tiny_train_config
from .test_reliability import _assert_same_run, _hook_criterion, _state


def test_crop_boxes_follow_random_resized_crop():
    g = torch.Generator().manual_seed(0)
    boxes = crop_boxes(4000, 28, 20, (0.5, 1.0), (0.75, 1.3333), g)
    top, left, h, w = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 28).all() and (left + w <= 20).all()
    area, aspect = h * w / (28 * 20), w / h
    # the bounds hold before rounding w and h to pixels; a pixel either way moves them by at most this much
    slack = 2 / 20 + 1 / 20**2
    assert area.min() >= 0.5 - slack and area.max() <= 1.0
    assert aspect.min() >= 0.75 * (1 - 2 / 14) and aspect.max() <= 1.3333 * (1 + 2 / 14)
    assert (top > 0).any() and (left > 0).any() and len(set(map(tuple, boxes.tolist()))) > 100


def test_the_whole_image_is_a_resize_and_a_flip_mirrors_it():
    x = (torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 255).round().to(torch.uint8)
    whole = torch.tensor([[0.0, 0.0, 8.0, 8.0]] * 4)
    plain = resized_crops(x, whole, torch.zeros(4, dtype=torch.bool), (16, 16), "bicubic")
    flipped = resized_crops(x, whole, torch.ones(4, dtype=torch.bool), (16, 16), "bicubic")
    resized = F.interpolate(x.float(), size=(16, 16), mode="bicubic", align_corners=False).clamp(0, 255)
    # the same bicubic taps at the same positions; the grid's coordinates round at fp32 (|x| <= 255 x 2^-24 x 16)
    assert (plain - resized).abs().max() <= 1e-3 and (flipped - resized.flip(-1)).abs().max() <= 1e-3


def test_the_digits_recipe_takes_the_tensor_path_and_randaugment_does_not():
    cfg = resolve_config("digits", {})
    loader = build_data(cfg, 1, 0, False).train_loader
    assert isinstance(loader, TensorBatches) and len(loader) == 1437 // 64
    loader.sampler.set_epoch(3)
    batches = [x for x, _, _ in loader]
    loader.sampler.set_epoch(3, start=64)  # resumed one batch in: the same second batch
    assert torch.equal(next(iter(loader))[0], batches[1])
    assert batches[0].shape == (64, 3, 16, 16) and abs(batches[0].mean().item()) < 1.0
    assert not isinstance(build_data(dict(cfg, aa="rand-m5-mstd0.5"), 1, 0, False).train_loader, TensorBatches)


def test_a_signal_mid_epoch_resumes_exactly_on_the_tensor_path(tmp_path, monkeypatch):
    cfg = dict(drop_path=0.1, scale=[0.6, 1.0], hflip=0.5, train_subset=704)  # 11 steps an epoch
    straight = train(tiny_train_config(tmp_path / "a", **cfg), progress=False)
    _hook_criterion(monkeypatch, {15: signal.SIGTERM})
    stopped = train(tiny_train_config(tmp_path / "b", **cfg), progress=False)
    assert stopped["at"].startswith("epoch 2 step 4 ") and _state(stopped["run_dir"])["step_in_epoch"] == 4
    monkeypatch.undo()
    train(tiny_train_config(tmp_path / "b", **cfg), resume="auto", progress=False)
    _assert_same_run(straight["run_dir"], tmp_path / "b" / "run")
