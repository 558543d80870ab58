"""The released weights: where they are, fetching them (only when asked), and hub-ready folders for timm.

`pretrained=True` (timm or ours), `t2t-vit download` and `local-dir:` folders all end in the project's safe reader
(`checkpoint.read_checkpoint`: weights_only, argparse.Namespace the one class allowed), never in an unpickler that
could run code.
"""

import logging
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch

from .checkpoint import read_checkpoint
from .errors import InputError
from .models.t2t_vit import set_pretrained_source
from .models.variants import RELEASES, Release

_logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
CHUNK = 1 << 20
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what a local-dir folder may hold, preferred first


def release_of(name: str) -> Tuple[str, Release]:
    """(tag, release) for a release tag (`t2t_vit_14.in1k_ft_cifar10`) or an architecture (its first tag)."""
    if name in RELEASES:
        return name, RELEASES[name]
    tags = [t for t in RELEASES if t.split(".")[0] == name]
    if not tags:
        raise InputError(f"{name!r} has no released weights: `t2t-vit models` lists the release tags")
    return tags[0], RELEASES[tags[0]]


def cache_dir() -> Path:
    """torch's hub cache for checkpoints (`$TORCH_HOME/hub/checkpoints`), where timm keeps downloads too."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def download(url: str, directory: Optional[PathLike] = None, progress: bool = False) -> Path:
    """The file at `url` in `directory` (default: torch's hub cache), fetched once and checked.

    The transfer goes to a temporary file that becomes the cached one only when it is complete (every byte the
    server announced) and reads as a checkpoint; otherwise nothing is left behind and InputError says why.
    """
    name = url.rstrip("/").rsplit("/", 1)[-1]
    folder = Path(directory) if directory is not None else cache_dir()
    dst = folder / name
    if dst.is_file():
        _logger.info("using %s (already downloaded)", dst)
        return dst
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot put the download in {str(folder)!r} ({e.strerror}): give a writable folder") from None
    tmp = dst.with_name(f"{name}.{os.getpid()}.part")
    try:
        received, expected = _fetch(url, tmp, progress)
        if expected is not None and received != expected:
            raise InputError(f"the download of {url} stopped after {received:,} of {expected:,} bytes: try again")
        try:
            read_checkpoint(tmp)
        except InputError as e:
            raise InputError(f"the download of {url} is not a usable checkpoint: {e}") from None
        os.replace(tmp, dst)
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise InputError(
            f"could not download {url} ({reason}); fetch it where there is a network and pass the file instead, "
            f"e.g. timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file='{name}'))"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
        if created and not dst.exists() and not any(folder.iterdir()):
            folder.rmdir()  # a failed download leaves no empty folder behind
    _logger.info("downloaded %s to %s", url, dst)
    return dst


def _fetch(url: str, out: Path, progress: bool) -> Tuple[int, Optional[int]]:
    """Stream `url` into `out`: (bytes received, bytes announced by Content-Length or None)."""
    from tqdm import tqdm

    request = urllib.request.Request(url, headers={"User-Agent": "t2t-vit"})
    with urllib.request.urlopen(request, timeout=60) as response:
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        received = 0
        with (
            open(out, "wb") as f,
            tqdm(
                total=expected,
                unit="B",
                unit_scale=True,
                desc=out.name.split(".part")[0],
                disable=None if progress else True,
            ) as bar,
        ):
            while chunk := response.read(CHUNK):
                f.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    return received, expected


def pretrained_overlay(variant: str, pretrained_cfg: Any, overlay: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The `pretrained_cfg_overlay` that makes timm hand a local file to `T2TViT.load_pretrained`.

    A release address is downloaded here (checked, cached), a `local-dir:` folder gives its weight file, a `file`
    is read as it is. Hub ids (`hf-hub:`) are left to timm, which reads them as safetensors or weights_only.
    """
    from timm.models import resolve_pretrained_cfg

    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=overlay)
    overlay = dict(overlay or {})
    if cfg.source == "hf-hub" or cfg.state_dict is not None:
        return overlay
    if cfg.source == "local-dir":
        overlay.update(source="", file=str(_weights_in(Path(cfg.file))))
    elif cfg.file:
        pass
    elif cfg.url:
        overlay["file"] = str(download(cfg.url, progress=True))
    else:
        tags = ", ".join(t for t in RELEASES if t.split(".")[0] == variant) or "none"
        raise InputError(
            f"{variant} has no released weights (its tags with weights: {tags}): pass pretrained=False, or a file "
            "with pretrained_cfg_overlay=dict(file=PATH)"
        )
    overlay["custom_load"] = True
    return overlay


def _weights_in(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise InputError(f"{str(folder)!r} holds none of {', '.join(WEIGHT_FILES)}: write it with `t2t-vit convert`")


def convert(
    checkpoint: PathLike, out: PathLike, model_name: Optional[str] = None, push_to_hub: Optional[str] = None
) -> Path:
    """Write the folder timm's hub loader reads: model.safetensors, config.json and a README.md model card.

    `timm.create_model("local-dir:OUT", pretrained=True)` then gives the checkpoint's model; with `push_to_hub`
    (a repo id) the folder goes to the Hugging Face Hub through timm's `push_to_hf_hub` (needs a login).
    """
    from timm.models import push_to_hf_hub, save_for_hf

    from .factory import load_model

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {str(out)!r} is a file: give a folder to write the model into")
    model, meta = load_model(checkpoint, model_name)
    model.pretrained_cfg = {**model.pretrained_cfg, "architecture": meta["arch"].split(".")[0]}
    data = {k: meta["data_config"][k] for k in ("input_size", "interpolation", "mean", "std", "crop_pct")}
    model_args = {k: v for k, v in meta["model_kwargs"].items() if k != "num_classes"}
    config = dict(label_names=meta["class_names"]) if meta.get("class_names") else {}
    save_for_hf(model, str(out), model_config=config, model_args=model_args, safe_serialization=True, data_config=data)
    (out / "README.md").write_text(model_card(Path(checkpoint).name, meta, model))
    if push_to_hub:
        try:
            push_to_hf_hub(
                model,
                push_to_hub,
                model_config=config,
                model_args=model_args,
                data_config=data,
                model_card=dict(details=dict(source=Path(checkpoint).name)),
            )
        except Exception as e:  # the Hub's client raises its own types for login, network and permission
            raise InputError(
                f"{out} was written, but pushing it to {push_to_hub!r} failed ({type(e).__name__}: {e}): log in with "
                "`huggingface-cli login` and check the repo id and your network"
            ) from None
    return out


def model_card(source: str, meta: Dict[str, Any], model: torch.nn.Module) -> str:
    """A README.md for the hub folder: what the weights are, where they came from, how to load and cite them."""
    from .models.cost import count_params

    release = next((r for r in RELEASES.values() if r.file == source), None)
    arch = meta["arch"].split(".")[0]
    top1 = f"{release.top1}% top-1 on {release.dataset} (the authors' figure)" if release else "not measured here"
    params = count_params(model)
    size = "x".join(str(s) for s in meta["data_config"]["input_size"][1:])
    origin = f" (the authors' release, {release.url})" if release else ""
    return f"""---
library_name: timm
license: other
tags: [image-classification, timm, t2t-vit]
---
# {arch}

Tokens-to-Token ViT ({arch}) converted from `{source}` by `t2t-vit convert`.

- Source file: `{source}`{origin}
- Accuracy: {top1}
- Classes: {model.num_classes}; input {size} px; parameters and fixed tensors: {params:,}
- License: the authors' release is under the Clear BSD License (https://github.com/yitu-opensource/T2T-ViT);
  check it before redistributing.

```python
import timm, t2t_vit  # t2t_vit registers the architecture
model = timm.create_model("local-dir:PATH_TO_THIS_FOLDER", pretrained=True)
```

## Citation

```bibtex
@inproceedings{{yuan2021tokens,
  title={{Tokens-to-Token ViT: Training Vision Transformers from Scratch on ImageNet}},
  author={{Yuan, Li and Chen, Yunpeng and Wang, Tao and Yu, Weihao and Shi, Yujun and Jiang, Zi-Hang and
          Tay, Francis E.H. and Feng, Jiashi and Yan, Shuicheng}},
  booktitle={{Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)}},
  pages={{558--567}},
  year={{2021}}
}}
```
"""


set_pretrained_source(pretrained_overlay)
