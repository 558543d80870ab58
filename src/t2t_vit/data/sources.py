"""Datasets (ImageFolder, IDX files, CIFAR, scikit-learn digits, timm specs), transforms and loaders.

A `--data` spec names the source:

    digits              scikit-learn's 8x8 digits, a fixed stratified 80/20 split (embedded; kept in the cache)
    mnist:DIR           the four MNIST IDX files (gz or not) directly in DIR
    fashion-mnist:DIR   the same for Fashion-MNIST
    cifar10:DIR         torchvision's CIFAR-10 layout in DIR (`--download` fetches it)
    cifar100:DIR        the same for CIFAR-100
    hfds/..., wds/...   timm dataset specs, passed through (their root goes after a colon); the Hugging Face
                        Hub (hfds/NAME, hfids/NAME) only with `--download`, else a local folder or the cache
    DIR                 an ImageFolder root with train/ and val/ (ImageNet layout)
"""

import contextlib
import difflib
import gzip
import logging
import math
import os
import struct
import tempfile
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..device import launched_rank
from ..errors import InputError

_logger = logging.getLogger(__name__)
FILE_KINDS = ("mnist", "fashion-mnist", "cifar10", "cifar100")  # the specs KIND:DIR of a folder of files
# An ImageFolder root's split folders, as timm looks for them; a held-out split may also be test/.
SPLIT_FOLDERS = {"train": ("train", "training"), "val": ("val", "valid", "validation", "eval", "evaluation", "test")}
# Image formats ImageFolder (torchvision's, as timm's) leaves out of a split: said, so that none goes unseen.
IMAGE_LIKE = (".gif", ".heic", ".heif", ".avif", ".jfif", ".jp2", ".jxl", ".ico", ".tga", ".dng", ".cr2", ".nef")

FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SPLITS = ("train", "val")


class ArrayImages(Dataset):
    """Images held in memory as a uint8 array (N, H, W) or (N, H, W, 3), with integer labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, classes: Sequence[str], mode: str = "RGB") -> None:
        self.images, self.labels, self.classes, self.mode = images, labels, list(classes), mode
        self.transform: Optional[Callable] = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> Tuple[Any, int]:
        img = Image.fromarray(self.images[i]).convert(self.mode)
        return (self.transform(img) if self.transform else img), int(self.labels[i])


class ImageFiles(Dataset):
    """An ImageFolder split. An item is (image, label, 1 if it was scaled down from a high-depth mode else 0); an
    unreadable or corrupt image is logged and yields None (training substitutes another, evaluation skips it)."""

    def __init__(self, root: Path, mode: str = "RGB") -> None:
        from torchvision.datasets.folder import IMG_EXTENSIONS, ImageFolder

        left_out: Counter = Counter()  # the files of image formats ImageFolder does not read, by suffix

        def readable(path: str) -> bool:
            suffix = os.path.splitext(path)[1].lower()
            if suffix in IMAGE_LIKE:
                left_out[suffix] += 1
            return suffix in IMG_EXTENSIONS

        try:  # paths; images open in __getitem__
            folder = ImageFolder(str(root), loader=lambda p: p, is_valid_file=readable, allow_empty=True)
        except (FileNotFoundError, OSError) as e:
            _refuse_unreadable(root)
            flat = sum(1 for f in root.iterdir() if f.is_file() and f.suffix.lower() in IMG_EXTENSIONS)
            loose = (
                f"; its {flat} images lie loose in it (ImageNet's val/ ships so: sort it into class folders, as "
                "torchvision.datasets.ImageNet does from the devkit)"
                if flat
                else ""
            )
            raise InputError(
                f"no images found under {str(root)!r} ({e}): it must hold one sub-folder of images per class{loose}"
            ) from None
        empty = sorted(set(folder.classes) - {folder.classes[label] for _, label in folder.samples})
        if empty:  # ImageFolder's walk passes over a folder it cannot list: one of these, maybe
            _refuse_unreadable(root)
        if not folder.samples:
            raise InputError(
                f"no images found under {str(root)!r} (its class folders hold no {'/'.join(IMG_EXTENSIONS)} file): "
                "it must hold one sub-folder of images per class"
            )
        said = launched_rank() == 0  # one torchrun rank says it for all
        if empty and said:  # still classes (a split's classes are its folders), with nothing to learn or score
            shown = ", ".join(empty[:4]) + (" ..." if len(empty) > 4 else "")
            _logger.warning("%s: %d class folder(s) hold no images (%s)", root, len(empty), shown)
        if left_out and said:  # a phone's .heic, an animation's .gif: never read, and nothing said
            _logger.warning(
                "%s: %d image(s) left out, of formats ImageFolder does not read (%s): convert them to %s to use them",
                root,
                sum(left_out.values()),
                ", ".join(f"{suffix}: {n}" for suffix, n in sorted(left_out.items())),
                ", ".join(IMG_EXTENSIONS),
            )
        self.samples, self.classes, self.mode = folder.samples, folder.classes, mode
        self.transform: Optional[Callable] = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Optional[Tuple[Any, int, int]]:
        path, label = self.samples[i]
        try:
            with Image.open(path) as f:
                img, scaled = to_8_bits(f)
                img = img.convert(self.mode)
        except Exception as e:  # truncated, corrupt, not an image: skip it, never stop a long run
            _logger.warning("skipping unreadable image %s (%s)", path, e)
            return None
        return (self.transform(img) if self.transform else img), label, int(scaled)


def _refuse_unreadable(root: Path) -> None:
    """InputError naming the first folder under `root` (or `root`) that cannot be listed, if one cannot."""
    errors: List[OSError] = []
    for _ in os.walk(root, onerror=errors.append, followlinks=True):
        if errors:
            denied = errors[0]
            raise InputError(
                f"cannot read {str(denied.filename)!r} ({denied.strerror}): give read access to the class "
                f"folders under {str(root)!r}, e.g. chmod -R a+rX {str(root)!r}"
            )


# Pillow modes with more than 8 bits per sample, and the full-scale value of each (convert("RGB") clips them).
HIGH_DEPTH_MODES = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}


def to_8_bits(img: Image.Image) -> Tuple[Image.Image, bool]:
    """A high-depth image (16-bit PNG/TIFF, 32-bit int or float) scaled linearly to 8-bit grayscale, and whether it
    was; other modes pass through. 32-bit int images are read as 16-bit data; float ones as 0..1 (0..65535 if any
    value is above 1)."""
    if img.mode not in HIGH_DEPTH_MODES:
        return img, False
    values = np.asarray(img, dtype=np.float64)
    full = HIGH_DEPTH_MODES[img.mode]
    if img.mode == "F" and values.size and values.max() > 1.0:
        full = 65535
    return Image.fromarray(np.clip(np.round(values * (255 / full)), 0, 255).astype(np.uint8), "L"), True


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format: big-endian header, dims, uint8 data), gzipped or not; InputError if it is
    cut short or damaged."""
    import zlib

    candidates = [path, path.with_name(path.name + ".gz")]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise InputError(f"{path.name}[.gz] not found in {str(path.parent)!r}: the four IDX files must lie there")
    damaged = f"{str(found)!r} is truncated or corrupt: download it again"
    opener = gzip.open if found.suffix == ".gz" else open
    try:
        with opener(found, "rb") as f:
            raw = f.read()
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:  # a cut or damaged gzip stream
        raise InputError(f"{damaged} ({e})") from None
    except OSError as e:
        raise InputError(f"{str(found)!r} could not be read ({e.strerror or e})") from None
    try:
        zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
        dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
        if zero != 0 or dtype != 0x08:
            raise ValueError("not an unsigned-byte IDX file")
    except (struct.error, ValueError) as e:
        raise InputError(f"{str(found)!r} is not a valid IDX file ({e})") from None
    offset, expected = 4 + 4 * ndim, math.prod(dims)
    if len(raw) - offset != expected:
        raise InputError(f"{damaged} (its header promises {expected} bytes of data, it holds {len(raw) - offset})")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def _idx_dataset(root: Path, split: str, classes: Sequence[str], mode: str) -> ArrayImages:
    images_file, labels_file = IDX_FILES[split]
    images, labels = _read_idx(root / images_file), _read_idx(root / labels_file)
    return ArrayImages(images, labels, classes, mode)


def default_cache_dir() -> Path:
    """$T2T_VIT_CACHE, else $XDG_CACHE_HOME/t2t_vit, else ~/.cache/t2t_vit."""
    if os.environ.get("T2T_VIT_CACHE"):
        return Path(os.environ["T2T_VIT_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "t2t_vit"


DIGITS_ARRAYS = ("images", "target", "train", "val")


def _split_digits() -> Dict[str, np.ndarray]:
    """scikit-learn's digits as 0..255 images, and the fixed stratified 80/20 split of their indices."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)  # 0..16 -> 0..255
    train, val = train_test_split(np.arange(len(images)), test_size=0.2, stratify=digits.target, random_state=0)
    return dict(images=images, target=digits.target, train=train, val=val)


def digits_arrays() -> Dict[str, np.ndarray]:
    """`_split_digits()`, kept in the cache (one .npz per scikit-learn version) after the first use: importing
    scikit-learn costs each process 1-2 s, more than the rest of a tiny run's start. A cache that cannot be read
    is made again; one that cannot be written is left out."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        path = default_cache_dir() / f"digits-sklearn-{version('scikit-learn')}.npz"
    except PackageNotFoundError:  # no installed metadata to key the file by: no cache
        return _split_digits()
    try:
        with np.load(path, allow_pickle=False) as cached:
            return {name: cached[name] for name in DIGITS_ARRAYS}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        pass
    arrays, temporary = _split_digits(), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
            temporary = Path(f.name)
            np.savez(f, **arrays)
        os.replace(temporary, path)  # whole or not at all, whoever writes last
    except OSError as e:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
        _logger.debug("digits not cached in %s: %s", path.parent, e)
    return arrays


def _digits(split: str, mode: str) -> ArrayImages:
    arrays = digits_arrays()
    idx = arrays[split]
    return ArrayImages(arrays["images"][idx], arrays["target"][idx], [str(c) for c in range(10)], mode)


def _cifar(name: str, root: Path, split: str, download: bool, mode: str) -> ArrayImages:
    import http.client
    import shutil
    import tarfile

    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if name == "cifar10" else CIFAR100
    if not download:
        try:
            ds = cls(str(root), train=split == "train", download=False)
        except RuntimeError as e:
            raise InputError(f"{name} not found in {str(root)!r} ({e}): pass --download to fetch it there") from None
        return ArrayImages(ds.data, np.asarray(ds.targets), ds.classes, mode)
    # torchvision makes the root (and its parents) before fetching: a failed download takes away what it made
    created = next((p for p in reversed([root, *root.parents]) if not p.exists()), None)
    try:
        ds = cls(str(root), train=split == "train", download=True)
    except (OSError, RuntimeError, EOFError, tarfile.TarError, http.client.HTTPException) as e:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        reason = " ".join(str(getattr(e, "reason", None) or e).split()) or type(e).__name__  # one line
        raise InputError(
            f"{name} could not be downloaded to {str(root)!r} ({reason}): check the network connection, or put "
            f"torchvision's {name} files there by hand and leave out --download"
        ) from None
    return ArrayImages(ds.data, np.asarray(ds.targets), ds.classes, mode)


# timm's dataset specs, passed through, and what its reader of each imports: (module, pip package)
TIMM_SPEC_NEEDS = {
    "hfds/": ("datasets", "'t2t-vit[hfds]'"),
    "hfids/": ("datasets", "'t2t-vit[hfds]'"),
    "wds/": ("webdataset", "webdataset"),
    "tfds/": ("tensorflow_datasets", "tensorflow tensorflow-datasets"),
}


def _check_reader(kind: str) -> None:
    """InputError naming the pip install where the library timm reads a `kind` spec with is missing."""
    import importlib.util

    module, package = next(need for prefix, need in TIMM_SPEC_NEEDS.items() if kind.startswith(prefix))
    if importlib.util.find_spec(module) is None:
        raise InputError(
            f"--data {kind!r} is read by timm with {module}, which is not installed: pip install {package}"
        )


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Hugging Face `datasets` and `huggingface_hub` resolve names from local folders and their cache only."""
    import datasets
    import huggingface_hub.constants

    flags = (datasets.config, huggingface_hub.constants)  # each read at call time, by datasets >= 3
    saved = [module.HF_HUB_OFFLINE for module in flags]
    for module in flags:
        module.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for module, value in zip(flags, saved):
            module.HF_HUB_OFFLINE = value


def _timm_spec(kind: str, root: Optional[str], split: str, download: bool) -> Dataset:
    """timm's dataset for a `hfds/`, `hfids/`, `wds/` or `tfds/` spec (timm names the val split "validation")."""
    from timm.data import create_dataset as timm_dataset

    _check_reader(kind)

    def read(name: str) -> Dataset:
        return timm_dataset(kind, root=root, split=name, is_training=split == "train", download=download)

    if kind.startswith("hf"):
        return _hugging_face(kind, root, split, download, read)
    return read("train" if split == "train" else "validation")


def _hugging_face(kind: str, root: Optional[str], split: str, download: bool, read: Callable) -> Dataset:
    """An `hfds/` or `hfids/` dataset, from the Hugging Face Hub only with `download`.

    Without it, an `hfds/` name is read from a local folder or the datasets cache, and an `hfids/` name (streamed
    as it trains) must be a local folder: timm's readers would otherwise reach the Hub unasked. A dataset without
    a validation split is validated on its test split.
    """
    prefix, _, name = kind.partition("/")
    if prefix == "hfids" and not download and not Path(name).expanduser().is_dir():
        raise InputError(
            f"--data {kind!r} streams {name!r} from the Hugging Face Hub: pass --download to fetch it (timm then "
            "downloads and prepares it), or name a local dataset folder"
        )
    try:
        with contextlib.nullcontext() if download else _hub_offline():
            if split == "train":
                return read("train")
            try:
                return read("validation")
            except ValueError as e:  # `datasets`: Unknown split "validation". Should be one of [...]
                if "split" not in str(e).lower():
                    raise
                _logger.info("%s has no validation split: validating on its test split", kind)
                return read("test")
    except (ConnectionError, FileNotFoundError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, ValueError):
            lacks = " has no validation or test split to validate on" if split == "val" else ""
            raise InputError(f"--data {kind!r}{lacks} ({reason})") from None
        if download:
            raise InputError(
                f"--data {kind!r} could not be read or downloaded ({reason}): check the name and the network connection"
            ) from None
        where = f"in {root!r}" if root else "in the Hugging Face datasets cache"
        raise InputError(
            f"--data {kind!r} is neither a local folder nor {where} ({reason}): pass --download to fetch it from "
            "the Hugging Face Hub"
        ) from None


def create_dataset(spec: str, split: str, download: bool = False, in_chans: int = 3) -> Dataset:
    """The `split` ("train" or "val") of the dataset a `--data` spec names; images in RGB (or L for 1 channel)."""
    if split not in SPLITS:
        raise InputError(f"split {split!r} is not one of {SPLITS}")
    mode = "L" if in_chans == 1 else "RGB"
    kind, sep, rest = spec.partition(":")
    if spec == "digits":
        return _digits(split, mode)
    if kind.startswith(tuple(TIMM_SPEC_NEEDS)):
        return _timm_spec(kind, rest or None, split, download)
    if sep and kind in FILE_KINDS:
        root = Path(rest).expanduser()
        if not root.is_dir() and not (download and kind.startswith("cifar")):
            fetch = ", or pass --download to fetch it there" if kind.startswith("cifar") else ""
            raise InputError(f"data dir {rest!r} for {kind} does not exist: check the path{fetch}")
        if kind.startswith("cifar"):
            return _cifar(kind, root, split, download, mode)
        classes = FASHION_CLASSES if kind == "fashion-mnist" else [str(c) for c in range(10)]
        return _idx_dataset(root, split, classes, mode)
    root = Path(spec).expanduser()
    if not root.is_dir() and kind in FILE_KINDS:  # the kind without its folder
        holds = {
            "mnist": "its four IDX .gz files",
            "fashion-mnist": "its four IDX .gz files (Debian's dataset-fashion-mnist puts them in "
            "/usr/share/datasets/fashion-mnist)",
            "cifar10": "cifar-10-batches-py/ as torchvision reads it, or a new one with --download",
            "cifar100": "cifar-100-python/ as torchvision reads it, or a new one with --download",
        }[kind]
        raise InputError(f"--data {spec!r} needs its folder: {kind}:DIR, DIR the folder holding {holds}")
    if not root.is_dir():
        near = difflib.get_close_matches(kind.lower(), ["digits", *FILE_KINDS], n=1, cutoff=0.7)
        folder = sep + rest if sep or not near or near[0] == "digits" else ":DIR"
        hint = f": did you mean {near[0] + folder!r}?" if near else ""
        raise InputError(
            f"--data {spec!r} is neither a known dataset (digits, mnist:DIR, fashion-mnist:DIR, cifar10:DIR, "
            f"cifar100:DIR, hfds/..., wds/...) nor an existing directory{hint}"
        )
    folder = _split_folder(root, split)
    if folder is None and _held_out_only(root, split):
        _logger.info("%s holds class folders and no split folders: they are the held-out split", spec)
        folder = root
    if folder is None:
        up = root.parent
        holds = _split_folder(up, "train") is not None and _split_folder(up, "val") is not None
        hint = f": did you mean {str(up)!r}, which holds them?" if holds else ""
        where = f"data dir {spec!r} has no {split}/ folder ({'/, '.join(SPLIT_FOLDERS[split])}/)"
        if split == "val" and _split_folder(root, "train") is not None:  # a training set with nothing held out
            raise InputError(
                f"{where} beside its training split: hold some images of each class out in val/<class>/ (a tenth, "
                "say), scored after each epoch and never trained on"
            )
        alone = " (a held-out split's class folders alone also do)" if split == "val" else ""
        raise InputError(
            f"{where}: an ImageFolder root needs train/ and val/, each of one sub-folder of images per "
            f"class{alone}{hint}"
        )
    if folder != root and folder.name != split:
        _logger.info("%s: the %s split is %s/", spec, split, folder.name)
    return ImageFiles(folder, mode)


def _held_out_only(root: Path, split: str) -> bool:
    """Whether `root` is itself a held-out split (class folders, as ImageNet's val/ after sorting), which `eval`
    scores as timm's validate.py does: no split folders in it, and not named as a training split."""
    if split != "val" or root.name in SPLIT_FOLDERS["train"] or _split_folder(root, "train") is not None:
        return False
    return any(p.is_dir() for p in root.iterdir())


def _split_folder(root: Path, split: str) -> Optional[Path]:
    """The folder of `split` in an ImageFolder root: the first of its names (timm's, and test/ for val) there."""
    return next((root / name for name in SPLIT_FOLDERS[split] if (root / name).is_dir()), None)


def stratified_subset(dataset: Dataset, n: int, seed: int = 0) -> Dataset:
    """A fixed subset of `n` samples keeping the class proportions (datasets with `labels` or `samples`, and
    `hfds/` ones, whose reader lists its targets)."""
    from sklearn.model_selection import train_test_split

    labels = getattr(dataset, "labels", None)
    reader = getattr(dataset, "reader", None)
    if labels is None and hasattr(dataset, "samples"):
        labels = [label for _, label in dataset.samples]
    elif labels is None and hasattr(reader, "iter_targets") and hasattr(dataset, "__len__"):
        labels = list(reader.iter_targets())
    if labels is None:
        raise InputError("train_subset needs a dataset that lists its labels, not a streamed one (hfids/, wds/, tfds/)")
    if not 0 < n < len(labels):
        raise InputError(f"train_subset {n} must be between 1 and the {len(labels)} training images")
    classes = len(set(labels))
    if n < classes:
        raise InputError(f"train_subset {n} is fewer than the {classes} classes it keeps: pass {classes} or more")
    idx, _ = train_test_split(np.arange(len(labels)), train_size=n, stratify=labels, random_state=seed)
    subset = torch.utils.data.Subset(dataset, sorted(idx.tolist()))
    subset.classes = dataset_classes(dataset)  # type: ignore[attr-defined]
    return subset


def imagenet_rows(
    num_classes: Optional[int], stored: Optional[Sequence[str]], classes: Sequence[str], data: str
) -> Optional[List[str]]:
    """ImageNet-1k's WordNet ids, to number the data's labels by, where the head is ImageNet's (1000 classes, no
    names stored or ImageNet's descriptions, as the authors' releases) and the data's class folders are such ids:
    ImageNet's own layout, or a subset of it (Imagenette, a few classes of val/); None otherwise."""
    from ..hub import class_names, imagenet_ids

    if num_classes != 1000 or (stored is not None and [str(n) for n in stored] != class_names(1000)):
        return None
    ids = imagenet_ids()
    if not classes or not set(map(str, classes)) <= set(ids):
        return None
    if len(classes) < len(ids):
        _logger.info(
            "--data %s: its %d class folders are ImageNet-1k ids, scored as those of the head's 1000 classes",
            data,
            len(classes),
        )
    return ids


def align_classes(val_set: Dataset, classes: Sequence[str], data: str, against: str, warn: bool = True) -> None:
    """Number the held-out split's labels as `classes` (the training split's, or a checkpoint's). An ImageFolder
    numbers each split's class folders on its own, so a class missing from val/ would shift every label after it;
    a held-out class that `against` lacks is an InputError, and the classes it has no images of are logged (with
    `warn`: one torchrun rank says it for all)."""
    own = [str(c) for c in dataset_classes(val_set)]
    classes = [str(c) for c in classes]
    if own == classes:
        return
    extra = [c for c in own if c not in classes]
    if extra or not hasattr(val_set, "samples"):
        shown = ", ".join(map(repr, (extra or own)[:4])) + (" ..." if len(extra or own) > 4 else "")
        raise InputError(
            f"--data {data!r}: the held-out split's classes ({shown}) are not among those of {against}: give "
            "both the same class folders (rename or remove the held-out ones it lacks)"
        )
    index = {c: i for i, c in enumerate(classes)}
    val_set.samples = [(path, index[own[label]]) for path, label in val_set.samples]  # type: ignore[attr-defined]
    val_set.classes = classes  # type: ignore[attr-defined]
    absent = [c for c in classes if c not in own]
    if absent and warn:
        _logger.warning(
            "--data %s: the held-out split has no images of %d of the %d classes (%s) of %s; scored on the others",
            data,
            len(absent),
            len(classes),
            ", ".join(absent[:4]) + (" ..." if len(absent) > 4 else ""),
            against,
        )


def dataset_classes(dataset: Dataset) -> List[str]:
    """Class names of a dataset (numbers as names when it has none)."""
    classes = getattr(dataset, "classes", None)
    if classes is None:
        reader = getattr(dataset, "reader", None)
        classes = getattr(reader, "class_names", None) or getattr(reader, "classes", None)
        to_idx = getattr(reader, "class_to_idx", None)  # timm's Hugging Face readers
        if classes is None and isinstance(to_idx, dict) and sorted(to_idx.values()) == list(range(len(to_idx))):
            classes = sorted(to_idx, key=to_idx.__getitem__)
    if classes is None:
        raise InputError("the dataset does not tell its classes: set num_classes in the config")
    return [str(c) for c in classes]
