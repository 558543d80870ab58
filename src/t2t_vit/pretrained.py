"""The released weights: where they are, fetching them (only when asked), and the folders `t2t-vit convert` writes
for timm and transformers (config with class names, model card), pushed to the Hugging Face Hub when asked.

`pretrained=True` (timm or ours), `t2t-vit download` and `local-dir:` folders all end in the project's safe reader
(`checkpoint.read_checkpoint`: weights_only, argparse.Namespace the one class allowed), never in an unpickler that
could run code.
"""

import json
import logging
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
import yaml

from . import hub
from .checkpoint import apply_umask, check_new_file, input_files, peek_checkpoint, read_checkpoint
from .errors import InputError
from .models.t2t_vit import set_pretrained_source
from .models.variants import RELEASES, Release

_logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
CHUNK = 1 << 20


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


def download(url: str, directory: Optional[PathLike] = None, progress: bool = False, force: bool = False) -> Path:
    """The file at `url` in `directory` (default: torch's hub cache), fetched once and checked: a file of that name
    is used as it is, never replaced, unless `force` (then fetched again and replaced once complete).

    The transfer goes to a temporary file that becomes the cached one only when it is complete (every byte the
    server announced) and reads as a checkpoint; otherwise nothing is left behind and InputError says why.
    """
    name = url.rstrip("/").rsplit("/", 1)[-1]
    folder = Path(directory) if directory is not None else cache_dir()
    dst = folder / name
    if dst.is_file() and not force:
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
        overlay.update(source="", file=str(hub.weights_in(Path(cfg.file))))
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


HUB_DATASETS = {  # data set -> its id on the Hub, for the card's `datasets`
    "imagenet-1k": "imagenet-1k",
    "cifar10": "cifar10",
    "cifar100": "cifar100",
    "fashion-mnist": "fashion_mnist",
    "mnist": "mnist",
}
DATASET_NAMES = {"imagenet-1k": "ImageNet-1k", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
AUTHORS_LICENSE = "bsd-3-clause-clear"  # the authors' repository (and so their weights): The Clear BSD License
AUTHORS_REPO = "https://github.com/yitu-opensource/T2T-ViT"


def convert(
    checkpoint: PathLike,
    out: PathLike,
    model_name: Optional[str] = None,
    push_to_hub: Optional[str] = None,
    force: bool = False,
) -> Path:
    """Write the folder timm and transformers read: model.safetensors, config.json (with the class names) and a
    README.md model card; with `push_to_hub` (USER/REPO) also upload that folder as one commit (needs a login).

    `timm.create_model("local-dir:OUT", pretrained=True)`, `AutoModelForImageClassification.from_pretrained(OUT)` and
    `pipeline("image-classification", model=OUT)` then give the checkpoint's model (after `import t2t_vit`).
    A folder that holds files is written into only with `force`, and never over the checkpoint itself.
    """
    from timm.models import save_for_hf

    from .factory import load_model

    if str(out).startswith(hub.HUB_PREFIX):
        raise InputError(
            f"--out {str(out)!r} is a Hub name: give a local folder, and --push-to-hub USER/REPO to upload it"
        )
    out = Path(str(out).removeprefix(hub.LOCAL_PREFIX))  # timm's name for the folder, as `convert` prints it
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {str(out)!r} is a file: give a folder to write the model into")
    _check_folder(out, checkpoint, force)
    if push_to_hub is not None:
        _check_push(push_to_hub)
    model, meta = load_model(checkpoint, model_name)
    release = RELEASES.get(meta["arch"])
    arch = meta["arch"].split(".")[0]
    names = hub.class_names(model.num_classes, release.dataset if release else None, meta.get("class_names"))
    model.pretrained_cfg = _pretrained_cfg(model.pretrained_cfg, arch, meta["arch"], release, checkpoint)
    data = {k: meta["data_config"][k] for k in hub.DATA_KEYS}
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")  # the files go into `out` once all are written
    try:
        save_for_hf(
            model, str(partial), model_config=dict(label_names=names), safe_serialization=True, data_config=data
        )
        apply_umask(partial / hub.WEIGHT_FILES[0])  # safetensors writes 0600
        config_path = partial / hub.CONFIG_FILE
        config = json.loads(config_path.read_text())
        # transformers' TimmWrapper passes num_classes itself (from the root num_classes): never twice
        config.get("model_args", {}).pop("num_classes", None)
        config_path.write_text(json.dumps(config, indent=2) + "\n")
        location = f"{hub.HUB_PREFIX}{push_to_hub}" if push_to_hub else str(out.resolve())
        result = None if release else _recorded_result(checkpoint)
        (partial / "README.md").write_text(model_card(Path(checkpoint).name, meta, model, location, release, result))
        out.mkdir(exist_ok=True)
        for written in partial.iterdir():
            os.replace(written, out / written.name)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    if push_to_hub is not None:
        push_folder(out, push_to_hub)
    return out


def _check_folder(out: Path, checkpoint: PathLike, force: bool) -> None:
    """InputError if `out` holds files (unless `force`), or if convert would write over the checkpoint it reads."""
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held and not force:
        shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
        raise InputError(
            f"--out {str(out)!r} holds files ({shown}): pass --force to replace them, or give a new folder"
        )
    for name in (hub.WEIGHT_FILES[0], hub.CONFIG_FILE, "README.md"):
        check_new_file(out / name, "--out", True, input_files(checkpoint))


def _pretrained_cfg(
    cfg: Dict[str, Any], arch: str, name: str, release: Optional[Release], checkpoint: PathLike
) -> Dict[str, Any]:
    """The pretrained cfg the folder records: the release's tag and description, or none for our own weights."""
    cfg = {k: v for k, v in cfg.items() if k not in ("tag", "description", "url", "hf_hub_id")}
    cfg.update(architecture=arch, license=AUTHORS_LICENSE if release else "other")
    if release is not None:
        cfg.update(tag=name.split(".", 1)[1], description=f"authors' release {release.file}")
    else:
        cfg.update(description=f"converted from {Path(checkpoint).name} by t2t-vit convert")
    return cfg


def _recorded_result(checkpoint: PathLike) -> Optional[Dict[str, Any]]:
    """{metric, value, epoch, data} of one of our checkpoints whose weights are those its best top-1 was measured
    on (the epoch it records and the EMA or raw weights, as `load_model` reads them), else None."""
    from .config import data_tag

    saved = peek_checkpoint(checkpoint)
    best = saved.get("best") if isinstance(saved, dict) else None
    if not best or best.get("metric") not in ("top1", "ema_top1") or best.get("epoch") != saved.get("epoch"):
        return None
    if (best["metric"] == "ema_top1") != isinstance(saved.get("model_ema"), dict):
        return None
    data = (saved.get("config") or {}).get("data")
    return dict(best, data=data_tag(data) if data else None)


def model_card(
    source: str,
    meta: Dict[str, Any],
    model: torch.nn.Module,
    location: str,
    release: Optional[Release] = None,
    result: Optional[Dict[str, Any]] = None,
) -> str:
    """The folder's README.md: Hub front matter (library, task, license, data, metrics with their source), what the
    weights are, and timm and transformers snippets that load them from `location` (a folder or `hf-hub:` name)."""
    from .models.cost import count_params

    arch = meta["arch"].split(".")[0]
    front, figure = _front_matter(meta["arch"], release, result)
    size = "x".join(str(s) for s in meta["data_config"]["input_size"][1:])
    if release is not None:
        origin = f"the authors' release `{source}` ({release.url})"
        accuracy = f"{figure}% top-1 on {DATASET_NAMES[release.dataset]} (the authors' figure, {AUTHORS_REPO})"
        license_text = f"The Clear BSD License, as the authors' repository ({AUTHORS_REPO}) releases the weights."
    else:
        origin = f"`{source}`, a checkpoint of `t2t-vit train`"
        accuracy = f"{figure}% top-1" if figure else "not recorded"
        accuracy += " (measure it with `t2t-vit eval --checkpoint THIS_FOLDER --data DATA`)"
        license_text = "Not set (`other`): the weights are yours, so set the license that applies before sharing them."
    repo = location[len(hub.HUB_PREFIX) :] if location.startswith(hub.HUB_PREFIX) else location
    timm_name = location if location.startswith(hub.HUB_PREFIX) else f"{hub.LOCAL_PREFIX}{location}"
    yaml_text = yaml.safe_dump(front, sort_keys=False, allow_unicode=True, width=1000)
    return f"""---
{yaml_text}---
# {arch}

Tokens-to-Token ViT ({arch}, Yuan et al., ICCV 2021) image classifier, converted by `t2t-vit convert` from {origin}.

- Accuracy: {accuracy}
- Classes: {model.num_classes} (names in config.json); input {size} px; parameters and fixed tensors: \
{count_params(model):,}
- License: {license_text}

The architecture is registered in timm by the `t2t_vit` package of the t2t-vit project (its `hf` extra adds
transformers): import `t2t_vit` before loading. Both snippets classify `image.jpg`.

## timm

```python
import timm
import torch
from PIL import Image

import t2t_vit  # noqa: F401  (registers the T2T-ViT architectures in timm)

model = timm.create_model("{timm_name}", pretrained=True).eval()
transform = timm.data.create_transform(**timm.data.resolve_data_config({{}}, model=model))
with torch.no_grad():
    probs = model(transform(Image.open("image.jpg").convert("RGB")).unsqueeze(0)).softmax(-1)[0]
names = model.pretrained_cfg["label_names"]
for p, i in zip(*probs.topk({min(5, model.num_classes)})):
    print(f"{{names[i]}}: {{p:.3f}}")
```

## transformers

```python
from transformers import pipeline

import t2t_vit  # noqa: F401  (registers the T2T-ViT architectures in timm)

classify = pipeline("image-classification", model="{repo}")
print(classify("image.jpg"))
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


def _front_matter(
    name: str, release: Optional[Release], result: Optional[Dict[str, Any]]
) -> Tuple[Dict[str, Any], Optional[float]]:
    """The card's YAML header as the Hub reads it, and the top-1 it reports (None if none). A release's figure is
    the authors' (its source: their repository); ours is the best top-1 the training run recorded for these weights
    (self-reported, so without a source link), named with its epoch and data."""
    dataset = release.dataset if release else (result or {}).get("data")
    front: Dict[str, Any] = dict(
        library_name="timm",
        pipeline_tag="image-classification",
        license=AUTHORS_LICENSE if release else "other",
        tags=["image-classification", "timm", "transformers", "t2t-vit", "vision-transformer"],
    )
    if dataset in HUB_DATASETS:
        front["datasets"] = [HUB_DATASETS[dataset]]
    if release is None and result is None:
        return front, None
    metric = dict(type="accuracy", name="Top-1 accuracy", value=release.top1 if release else round(result["value"], 2))
    entry: Dict[str, Any] = dict(
        task=dict(type="image-classification", name="Image Classification"),
        dataset=dict(
            name=DATASET_NAMES.get(dataset or "", dataset or "held-out data"),
            type=HUB_DATASETS.get(dataset or "", dataset or "custom"),
            split="validation",
        ),
        metrics=[metric],
    )
    if release is not None:
        entry["source"] = dict(name="Tokens-to-Token ViT (ICCV 2021), the authors' release table", url=AUTHORS_REPO)
    else:
        metric["name"] += f" (t2t-vit train, epoch {result['epoch']}, {result['metric']})"
    front.update(metrics=["accuracy"], **{"model-index": [dict(name=name, results=[entry])]})
    return front, metric["value"]


def _cause(error: BaseException, kind: type) -> Any:
    """The first exception of `kind` in `error`'s chain (itself, what it was raised from or during), else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _check_push(repo_id: str) -> None:
    """InputError before any work when `repo_id` is no repo id or no Hub login is found (no network used)."""
    from huggingface_hub import get_token
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise InputError(f"--push-to-hub {repo_id!r} is not a Hub repo id: write USER/REPO") from None
    if get_token() is None:
        raise InputError(
            f"not logged in to the Hugging Face Hub, so nothing can go to {repo_id}: run `hf auth login` "
            "(or set HF_TOKEN to a write token) and try again"
        )


def push_folder(folder: Path, repo_id: str) -> str:
    """Upload `folder` to the model repo `repo_id` (created if missing; yours, it gets a new commit) in one commit;
    the commit's URL. Every failure is one InputError line: no login, no network, a repo you may not write."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    _check_push(repo_id)
    api = HfApi(library_name="t2t-vit")
    written = f"{folder} was written, but pushing it to {repo_id} failed"
    try:
        repo = api.create_repo(repo_id, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo.repo_id, folder_path=str(folder), commit_message="Add a T2T-ViT converted by t2t-vit convert"
        )
    except Exception as e:  # the client's own types: HTTP errors (some wrapped), transport errors, bad metadata
        http = _cause(e, HfHubHTTPError)
        status = http.response.status_code if http is not None and http.response is not None else None
        if status is None:
            raise InputError(
                f"{written}: could not reach the Hub at {constants.ENDPOINT} ({type(e).__name__}: "
                f"{hub.one_line(e, 200)}); check the network, then run the command again"
            ) from None
        why = {
            401: "the Hub refused the login (401): run `hf auth login` with a write token",
            403: f"you may not write to {repo_id} (403): it belongs to another user or organization, or the token is "
            "read-only; push to a repo of your own",
            404: f"no repo {repo_id} and none could be made (404): check the user or organization name",
        }.get(status, f"the Hub answered {status} ({hub.one_line(http, 200)})")
        raise InputError(f"{written}: {why}") from None
    _logger.info("pushed %s to %s", folder, info.commit_url)
    return info.commit_url


set_pretrained_source(pretrained_overlay)
