"""Hugging Face folders and names as checkpoints, and the class names a folder carries.

A hub folder is what `t2t-vit convert` (or timm's `save_for_hf`) writes: config.json (architecture, num_classes,
model_args, pretrained_cfg, label_names) beside model.safetensors or pytorch_model.bin. `hf-hub:USER/REPO` names one
on the Hub, fetched into huggingface_hub's cache (read from it alone under HF_HUB_OFFLINE=1). Reading the weights is
`checkpoint.read_checkpoint`'s; this module imports nothing of the package but its error type.
"""

import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from .errors import InputError

PathLike = Union[str, Path]
HUB_PREFIX = "hf-hub:"
LOCAL_PREFIX = "local-dir:"  # timm's name for a hub folder on disk: timm.create_model("local-dir:DIR", pretrained=True)
CONFIG_FILE = "config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what a hub folder may hold, preferred first
RUN_CHECKPOINTS = ("best.pth.tar", "last.pth.tar")  # what a run directory of `t2t-vit train` holds
DATA_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct")

# The label order of the data sets' own files (batches.meta, meta), as torchvision reads them.
CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100 = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can castle "
    "caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin elephant "
    "flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man "
    "maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree "
    "plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper "
    "snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor train "
    "trout tulip turtle wardrobe whale willow_tree wolf woman worm"
).split()


def is_hub_source(path: PathLike) -> bool:
    """True for an `hf-hub:` or `local-dir:` name or a folder (which must then be a hub folder)."""
    text = str(path)
    try:
        return text.startswith((HUB_PREFIX, LOCAL_PREFIX)) or Path(text).expanduser().is_dir()
    except (ValueError, RuntimeError, OSError):  # a name no folder can have (a NUL byte, an unknown ~user)
        return False


def local_folder(path: PathLike) -> Path:
    """The path a `local-dir:DIR` name (timm's) or a plain path names, ~ expanded."""
    return Path(str(path).removeprefix(LOCAL_PREFIX)).expanduser()


def resolve(path: PathLike) -> Path:
    """The local folder of a hub folder (`local-dir:DIR`, timm's name, or DIR), or of an `hf-hub:USER/REPO[@REVISION]`
    name (fetched into the cache)."""
    text = str(path)
    if text.startswith(HUB_PREFIX):
        return _fetch(text[len(HUB_PREFIX) :])
    folder = local_folder(text)
    if not folder.is_dir():
        raise InputError(f"{text!r}: there is no folder {str(folder)!r}: check the path")
    if not (folder / CONFIG_FILE).is_file():
        run = [str(folder / name) for name in RUN_CHECKPOINTS if (folder / name).is_file()]
        fix = f"give one of its checkpoints, {' or '.join(map(repr, run))}" if run else "give a checkpoint file"
        raise InputError(f"{text!r} is a folder without {CONFIG_FILE}: {fix}, or a folder `t2t-vit convert` wrote")
    return folder


def _fetch(name: str) -> Path:
    """The cached snapshot folder of repo `name` (USER/REPO[@REVISION]) holding its config and weights."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id, _, revision = name.partition("@")
    where = f"{HUB_PREFIX}{name}"
    try:
        folder = Path(hf_hub_download(repo_id, CONFIG_FILE, revision=revision or None)).parent
        for weights in WEIGHT_FILES:
            try:
                hf_hub_download(repo_id, weights, revision=revision or None)
                return folder
            except EntryNotFoundError:  # remote: not in the repo; offline: not in the cache
                continue
        raise InputError(f"{where} holds none of {', '.join(WEIGHT_FILES)}: it is not a timm model repo")
    except HFValidationError:
        raise InputError(
            f"{where!r} does not name a Hub repo: write hf-hub:USER/REPO (or USER/REPO@REVISION)"
        ) from None
    except RepositoryNotFoundError:
        raise InputError(
            f"{where}: no such model repo on the Hub, or it is private or gated (log in with `hf auth login`)"
        ) from None
    except RevisionNotFoundError:
        raise InputError(f"{where}: the repo has no revision {revision!r}") from None
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hub could not be reached"
        raise InputError(
            f"{where} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}: fetch it once where "
            "there is a network (same HF_HOME), or give a local folder"
        ) from None
    except EntryNotFoundError:
        raise InputError(f"{where} has no {CONFIG_FILE}: it is not a timm model repo") from None
    except (HfHubHTTPError, OSError) as e:
        raise InputError(f"could not fetch {where} ({one_line(e)}): check the name and your network") from None


def weights_in(folder: Path) -> Path:
    """The weight file of a hub folder, safetensors first."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise InputError(f"{str(folder)!r} holds none of {', '.join(WEIGHT_FILES)}: write it with `t2t-vit convert`")


def read_config(folder: Path) -> Dict[str, Any]:
    """A hub folder's config.json as a dict."""
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{str(folder / CONFIG_FILE)!r} is not readable JSON ({e}): write the folder again") from None
    if not isinstance(config, dict) or not isinstance(config.get("architecture"), str):
        raise InputError(f"{str(folder / CONFIG_FILE)!r} names no architecture: it is not a timm model folder")
    return config


def meta_of(config: Dict[str, Any]) -> Dict[str, Any]:
    """The meta `factory.load_model` reads beside a checkpoint's weights, from a hub folder's config: arch,
    model_kwargs (model_args with the root num_classes), class_names (label_names) and data_config."""
    pretrained_cfg = config.get("pretrained_cfg", config)  # timm's older single-dict layout has none
    kwargs = dict(config.get("model_args") or {})
    num_classes = config.get("num_classes", pretrained_cfg.get("num_classes"))
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    data = {k: tuple(v) if isinstance(v, list) else v for k, v in pretrained_cfg.items() if k in DATA_KEYS}
    labels = config.get("label_names", pretrained_cfg.get("label_names"))
    return dict(
        arch=config["architecture"],
        model_kwargs=kwargs,
        num_classes=num_classes,
        class_names=_as_list(labels),
        data_config=data or None,
        grid_size=None,
    )


def _as_list(labels: Any) -> Optional[List[str]]:
    """label_names as a list by class index (timm allows a dict {index: name} too)."""
    if isinstance(labels, dict):
        try:
            labels = [labels[k] for k in sorted(labels, key=int)]
        except (TypeError, ValueError):
            return None
    return [str(name) for name in labels] if isinstance(labels, (list, tuple)) else None


def class_names(num_classes: int, dataset: Optional[str] = None, stored: Optional[Sequence[str]] = None) -> List[str]:
    """Names for a head of `num_classes`: those stored with the weights, else the data set's (CIFAR-10/100; ImageNet-1k
    from timm's own metadata, which a 1000-class head is taken to be, as timm and transformers take it), else the
    indices."""
    if stored is not None and len(stored) == num_classes:
        return [str(name) for name in stored]
    known = {"cifar10": CIFAR10, "cifar100": CIFAR100}.get(dataset or "")
    if known is not None and len(known) == num_classes:
        return list(known)
    if num_classes == 1000 and dataset in (None, "imagenet-1k"):
        from timm.data import ImageNetInfo

        info = ImageNetInfo("imagenet-1k")
        return [info.index_to_description(i) for i in range(num_classes)]
    return [str(i) for i in range(num_classes)]


def imagenet_ids() -> List[str]:
    """ImageNet-1k's WordNet ids (n01440764, ...) in its class order: the names of its folders (and Imagenette's)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    return [info.index_to_label_name(i) for i in range(info.num_classes())]


def imagenet_descriptions(names: Sequence[str]) -> Dict[str, str]:
    """ImageNet-1k's descriptions of those `names` that are its WordNet ids ('n01440764': 'tench, Tinca tinca'):
    what a head trained on id folders (Imagenette, a few classes of val/) means; {} where none is one."""
    if not any(re.fullmatch(r"n\d{8}", str(name)) for name in names):
        return {}
    described = dict(zip(imagenet_ids(), class_names(1000)))
    return {str(name): described[str(name)] for name in names if str(name) in described}


def one_line(error: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, cut to `limit` characters."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
