"""From a dataset to batches: the recipe's transforms, the epoch sampler that can start mid-epoch, training samples
that substitute unreadable images, and the loader (uint8 batches, finished on the device by `device_batches`)."""

import contextlib
import logging
import math
import os
import random
import signal
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import InputError

_logger = logging.getLogger(__name__)


def create_transform(cfg: Dict[str, Any], data_config: Dict[str, Any], training: bool, uint8: bool = False) -> Callable:
    """timm's transforms: the paper's training augmentation (config keys) or the evaluation resize + crop.

    With `uint8` the images stay uint8 tensors (C, H, W): normalising and random erasing are left to the device
    (`device_batches.DeviceBatches`)."""
    from timm.data import create_transform as timm_transform
    from torchvision import transforms as T

    common = dict(
        input_size=data_config["input_size"], mean=data_config["mean"], std=data_config["std"], use_prefetcher=uint8
    )
    if not training:
        tf = timm_transform(**common, interpolation=data_config["interpolation"], crop_pct=data_config["crop_pct"])
    elif cfg["train_crop"] == "pad":  # the authors' CIFAR fine-tuning: resize, padded random crop, flip
        from timm.data.transforms import str_to_interp_mode

        size = tuple(data_config["input_size"][1:])
        last = [T.PILToTensor()] if uint8 else [T.ToTensor(), T.Normalize(data_config["mean"], data_config["std"])]
        return T.Compose(
            [
                T.Resize(size, interpolation=str_to_interp_mode(data_config["interpolation"])),
                T.RandomCrop(size, padding=cfg["crop_padding"]),
                T.RandomHorizontalFlip(cfg["hflip"]),
                *last,
            ]
        )
    elif cfg["train_crop"] != "random_resized":
        raise InputError(f"train_crop {cfg['train_crop']!r} must be random_resized or pad")
    else:
        tf = timm_transform(
            **common,
            is_training=True,
            scale=tuple(cfg["scale"]),
            ratio=tuple(cfg["ratio"]),
            hflip=cfg["hflip"],
            color_jitter=cfg["color_jitter"],
            auto_augment=cfg["aa"] or None,
            interpolation=cfg["train_interpolation"],
            re_prob=cfg["reprob"],
            re_mode=cfg["remode"],
            re_count=cfg["recount"],
        )
        _zero_bit_posterize(tf)
    if uint8:  # timm's prefetcher form ends in a NumPy array; a tensor collates as the others do
        tf = T.Compose([*tf.transforms[:-1], T.PILToTensor()])
    return tf


def posterize(img: Any, bits_to_keep: int, **_: Any) -> Any:
    """timm's posterize op, keeping 0 bits as Pillow < 13 did (a black image) where Pillow 13 raises ValueError."""
    from PIL import Image, ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep < 1:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def _zero_bit_posterize(tf: Any) -> None:
    """Give the auto-augment ops in `tf` that posterize `posterize`. RandAugment's increasing posterize keeps 0 bits
    at magnitude 10, which rand-m9-mstd0.5 draws for about 1 image in 660: under Pillow 13 the recipe's first epoch
    ended in a loader worker's ValueError."""
    from timm.data import auto_augment

    for t in getattr(tf, "transforms", ()):
        ops = [*getattr(t, "ops", ()), *(op for sub in getattr(t, "policy", ()) for op in sub)]  # Rand/AugMix, Auto
        for op in ops:
            if getattr(op, "aug_fn", None) is auto_augment.posterize:
                op.aug_fn = posterize


class EpochSampler(Sampler):
    """This rank's share of a (seeded, per-epoch) permutation; resumable mid-epoch.

    Training: every rank takes len // world samples (the tail is dropped), so rank r of step s sees
    perm[s * world * B + r :: world][:B] and the ranks together see what one process with the global batch sees;
    each index comes with its epoch, `(index, epoch)`, which `TrainSamples` seeds the sample's augmentation from.
    Evaluation (shuffle=False): rank r takes r, r + world, ... with no padding, so nothing is counted twice.
    """

    def __init__(self, size: int, world: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0) -> None:
        self.size, self.world, self.rank, self.shuffle, self.seed = size, world, rank, shuffle, seed
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's permutation and skip its first `start` samples of this rank (for resuming)."""
        self.epoch, self.start = epoch, start

    def _indices(self) -> List[int]:
        if not self.shuffle:
            return list(range(self.rank, self.size, self.world))
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(self.size, generator=g).tolist()
        return perm[self.rank : (self.size // self.world) * self.world : self.world]

    def __iter__(self) -> Iterator[Any]:
        indices = self._indices()[self.start :]
        return iter([(i, self.epoch) for i in indices] if self.shuffle else indices)

    def __len__(self) -> int:
        n = math.ceil((self.size - self.rank) / self.world) if not self.shuffle else self.size // self.world
        return max(n - self.start, 0)


MAX_SUBSTITUTES = 32  # unreadable images in a row before a training sample gives up


class TrainSamples(Dataset):
    """Training samples keyed by (index, epoch), each augmented under RNGs seeded from (seed, epoch, index).

    A sample's augmentation is then the same whichever process loads it, with any number of workers, and a run
    resumed mid-epoch redraws exactly what the uninterrupted one drew. In the main process (workers: 0) the global
    RNG states are restored after each batch, so the training step's own draws do not depend on the loader. An
    unreadable image is replaced by the next readable one (every batch stays full on every rank) and counted.
    Items: (image, label, substituted, scaled).
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Tuple[int, int]) -> Tuple[Any, int, int, int]:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: List[Tuple[int, int]]) -> List[Tuple[Any, int, int, int]]:
        with _rngs_kept(torch.utils.data.get_worker_info() is None):
            return [self._sample(index, epoch) for index, epoch in keys]

    def _sample(self, index: int, epoch: int) -> Tuple[Any, int, int, int]:
        seed = sample_seed(self.seed, epoch, index)
        random.seed(seed)
        np.random.seed(seed & 0xFFFFFFFF)
        torch.default_generator.manual_seed(seed)
        for substituted in range(MAX_SUBSTITUTES):
            item = self.dataset[(index + substituted) % len(self)]
            if item is not None:
                return item[0], item[1], substituted, item[2] if len(item) > 2 else 0
        raise InputError(
            f"{MAX_SUBSTITUTES} unreadable images in a row from index {index}: check the data (the log names them)"
        )


def sample_seed(seed: int, epoch: int, n: int) -> int:
    """A 64-bit seed for item `n` (a sample, or a batch) of `epoch` of a run seeded with `seed`."""
    return _mix(_mix(_mix(seed) ^ epoch) ^ n)


def _mix(x: int) -> int:
    """splitmix64's finaliser: well-spread 64-bit seeds from small integers."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


@contextlib.contextmanager
def _rngs_kept(keep: bool) -> Iterator[None]:
    """Python's, NumPy's and torch's CPU RNG states restored on leaving, when `keep`."""
    saved = (random.getstate(), np.random.get_state(), torch.get_rng_state()) if keep else None
    try:
        yield
    finally:
        if saved is not None:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])


def collate(batch: List[Optional[Tuple[Any, ...]]]) -> Tuple[torch.Tensor, torch.Tensor, Tuple[int, int]]:
    """Stack a batch: (images, targets, counts), counts = (unreadable images skipped or substituted, high-depth
    images scaled) as plain ints, which the training loop adds up without reading the device. Samples that failed
    to load (None) are left out and counted."""
    good = [b for b in batch if b is not None]
    skipped, scaled = len(batch) - len(good), 0
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), (skipped, scaled)
    for b in good:
        skipped += b[2] if len(b) > 3 else 0
        scaled += b[-1] if len(b) > 2 else 0
    return torch.stack([b[0] for b in good]), torch.as_tensor([b[1] for b in good]), (int(skipped), int(scaled))


def _worker_init(worker_id: int) -> None:
    """Loader workers leave SIGTERM and Ctrl-C to the main process, which finishes its step and checkpoints."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@contextlib.contextmanager
def workers_closed(*loaders: Any) -> Iterator[None]:
    """Ends the loaders' persistent workers on leaving, not when the loaders are collected. Workers still alive at
    interpreter exit get multiprocessing's SIGTERM, which they ignore (`_worker_init`), and the exit then waits for
    them for ever (seen on Python 3.12 with torch 2.11, one run in two). A `DeviceBatches` is closed through the
    loader it wraps; loaders without workers are left as they are."""
    try:
        yield
    finally:
        for loader in loaders:
            loader = getattr(loader, "loader", loader)
            iterator = getattr(loader, "_iterator", None)  # where torch keeps the iterator of persistent workers
            if iterator is not None and hasattr(iterator, "_shutdown_workers"):
                iterator._shutdown_workers()
                loader._iterator = None


def create_loader(
    dataset: Dataset,
    batch_size: int,
    training: bool,
    workers: int = 0,
    world: int = 1,
    rank: int = 0,
    seed: int = 0,
    pin_memory: bool = False,
    collate_fn: Callable = collate,
) -> DataLoader:
    """A loader over this rank's share; training loaders drop the last partial batch and seed each sample's
    augmentation from (seed, epoch, index) through `TrainSamples`. `collate_fn` makes the batches (dense tasks: the
    lists or padded masks of `dense_transforms`)."""
    workers = min(workers, os.cpu_count() or 1)
    sampler = EpochSampler(len(dataset), world, rank, shuffle=training, seed=seed)  # type: ignore[arg-type]
    return DataLoader(
        TrainSamples(dataset, seed) if training else dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        drop_last=training,
        persistent_workers=workers > 0,
        worker_init_fn=_worker_init if workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),  # the loader's own draws leave the global RNG alone
    )
