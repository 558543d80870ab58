"""Pictures people would rather look at than read: token feature maps (the paper's Fig. 2), attention maps per
head and as attention rollout, and training curves, as `t2t-vit visualize` draws them.
"""

import math
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..checkpoint import written_atomically
from ..errors import InputError, missing_file
from ..training.metrics import plot_curves as plot_curves  # the curves of run directories, as training draws them
from ..training.run_dir import RunDir


def read_metrics(run_dir: Path) -> Dict[str, List[float]]:
    """A run directory's metrics per epoch, as columns of floats (NaN where not measured)."""
    return RunDir(run_dir).read_metrics()


def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def output_path(out: Path, force: bool = False, inputs: Sequence[Path] = ()) -> Path:
    """The file a figure saved to `out` becomes (matplotlib adds .png to a name without a suffix), checked: a format
    matplotlib writes, a folder that can hold it, not an input, and not a file that exists unless `force`."""
    from ..checkpoint import check_new_file

    out = Path(out)
    if not out.suffix:
        out = out.with_name(out.name + ".png")
    kinds = _pyplot().figure().canvas.get_supported_filetypes()
    _pyplot().close("all")
    if out.suffix[1:].lower() not in kinds:
        raise InputError(f"--out {str(out)!r}: {out.suffix} is not a picture format; use .png, .pdf, .svg or .jpg")
    if out.is_dir():
        raise InputError(f"--out {str(out)!r} is a directory: give a file name, e.g. {str(out / 'plot.png')!r}")
    check_new_file(out, "--out", force, inputs)
    existing = next(p for p in out.absolute().parents if p.exists())  # the folders are made when the figure is saved
    if not existing.is_dir():
        raise InputError(f"--out {str(out)!r} cannot be written: {str(existing)!r} is a file, not a folder")
    return out


def _save(fig: Any, out: Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with written_atomically(out) as tmp:  # a stop mid-write leaves no cut picture under its name
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight", pad_inches=0.05)  # tight_layout cuts titles
    _pyplot().close(fig)
    return out


def load_image(path: Path, model: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """An image file as the model's eval input (1, C, H, W) and as the (H, W, C) picture in [0, 1] it shows.

    Preprocessing is the model's pretrained cfg (resize to img_size / crop_pct, center crop to img_size, normalize):
    the release's, or a checkpoint's own when the model came from `load_model`.
    """
    from PIL import Image, UnidentifiedImageError
    from timm.data import create_transform

    path = Path(path)
    if not path.is_file():
        raise missing_file("image", path)
    try:
        with Image.open(path) as img:
            img = img.convert("RGB" if model.in_chans == 3 else "L")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise InputError(f"image {str(path)!r} could not be read ({e}): pass a PNG or JPEG file") from None
    cfg = model.pretrained_cfg
    mean, std = cfg["mean"], cfg["std"]
    if len(mean) != model.in_chans:  # e.g. a grayscale model: one channel at the average statistics
        mean, std = (sum(mean) / len(mean),) * model.in_chans, (sum(std) / len(std),) * model.in_chans
    transform = create_transform(
        input_size=(model.in_chans, *model.img_size),
        interpolation=cfg["interpolation"],
        mean=mean,
        std=std,
        crop_pct=cfg["crop_pct"],
    )
    x = transform(img).unsqueeze(0)
    picture = x[0] * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    return x, picture.clamp(0, 1).permute(1, 2, 0)  # (C, H, W) -> (H, W, C)


def _block_index(model: nn.Module, block: int, name: str) -> int:
    """A block index (negative counts from the end) checked against the model's depth."""
    depth = len(model.blocks)
    if not -depth <= block < depth:
        raise InputError(
            f"block {block} is out of range: {name} has blocks 0..{depth - 1} (negative indices count from the end)"
        )
    return block % depth


@torch.no_grad()
def token_feature_maps(model: nn.Module, x: torch.Tensor, block: int = 0) -> torch.Tensor:
    """The patch tokens after block `block` of the first image, as channel maps (C, H, W) over the token grid."""
    block = _block_index(model, block, type(model).__name__)
    (maps,) = model.forward_intermediates(x, indices=[block], stop_early=True, intermediates_only=True)
    return maps[0]


def _softmax_attention(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Attention probabilities (B, heads, N, N) of an attention layer on its input x, by the eager math."""
    B, N, _ = x.shape
    # (B, N, 3C) -> (3, B, heads, N, head_dim)
    q, k, _ = attn.qkv(x).reshape(B, N, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)


@torch.no_grad()
def attention_weights(model: nn.Module, x: torch.Tensor, blocks: Sequence[int]) -> Dict[int, torch.Tensor]:
    """Attention probabilities (B, heads, N, N) of the backbone blocks `blocks`, class token first in N.

    Forward hooks take each block's attention input and recompute the softmax with the eager math; the model's
    own forward (fused attention) runs unchanged and stops after the last block asked for.
    """
    name = type(model).__name__
    blocks = sorted({_block_index(model, b, name) for b in blocks})
    captured: Dict[int, torch.Tensor] = {}

    def capture(i: int, module: nn.Module, args: Tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        captured[i] = _softmax_attention(module, args[0])

    hooks = []
    try:
        for i in blocks:
            attn = getattr(model.blocks[i], "attn", None)
            if attn is None:
                raise InputError(f"block {i} of {name} has no attention (a transition layer): pick another block")
            hooks.append(attn.register_forward_hook(partial(capture, i)))
        model.forward_intermediates(x, indices=[blocks[-1]], stop_early=True, intermediates_only=True)
    finally:
        for hook in hooks:
            hook.remove()
    return captured


def attention_rollout(attentions: Sequence[torch.Tensor]) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020) through consecutive layers, first to last: each layer's head-mean
    attention plus the identity for the residual path, rows renormalised, multiplied up. (B, N, N)."""
    rollout = None
    for attn in attentions:
        a = attn.mean(dim=1)  # (B, heads, N, N) -> (B, N, N)
        a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], dtype=a.dtype)
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    if rollout is None:
        raise InputError("attention rollout needs at least one attention layer")
    return rollout


def _class_token_map(attn: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """The class token's attention to the patch tokens of the first image, as a grid: (B, N, N) -> (H, W)."""
    return attn[0, 0, 1:].reshape(grid)


def _tile(maps: torch.Tensor) -> torch.Tensor:
    """Channel maps (C, h, w), each scaled to [0, 1], tiled into a near-square mosaic with NaN gutters."""
    C, h, w = maps.shape
    lo = maps.flatten(1).min(1).values[:, None, None]
    hi = maps.flatten(1).max(1).values[:, None, None]
    maps = (maps - lo) / (hi - lo).clamp_min(1e-12)
    cols = math.ceil(math.sqrt(C))
    rows = math.ceil(C / cols)
    mosaic = torch.full((rows * (h + 1) - 1, cols * (w + 1) - 1), float("nan"))
    for c in range(C):
        r, q = divmod(c, cols)
        mosaic[r * (h + 1) : r * (h + 1) + h, q * (w + 1) : q * (w + 1) + w] = maps[c]
    return mosaic


def _show(ax: Any, picture: torch.Tensor) -> None:
    """An (H, W, C) picture in [0, 1] on a matplotlib axis, grayscale if one channel."""
    ax.imshow(picture.squeeze(-1).numpy(), cmap="gray" if picture.shape[-1] == 1 else None)


def plot_feature_maps(
    image: Path, models: Sequence[Tuple[str, nn.Module]], out: Path, block: int = 0, channels: int = 36
) -> Path:
    """The paper's Fig. 2 style: the input and, per (label, model), its first `channels` token channels after
    block `block` reshaped to maps and tiled (each map scaled to its own range), as a PNG."""
    if not models:
        raise InputError("no models to show: pass at least one --model")
    if channels < 1:
        raise InputError(f"channels={channels}: show at least one channel map")
    inputs = [load_image(image, model) for _, model in models]
    plt = _pyplot()
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")  # white gutters between the maps
    fig, axes = plt.subplots(1, 1 + len(models), figsize=(4 * (1 + len(models)), 4.4), squeeze=False)
    axes = axes[0]
    _show(axes[0], inputs[0][1])
    axes[0].set_title(Path(image).name, fontsize=9)
    for ax, (label, model), (x, _) in zip(axes[1:], models, inputs):
        maps = token_feature_maps(model, x, block)
        C, H, W = maps.shape
        shown = min(channels, C)
        ax.imshow(_tile(maps[:shown]).numpy(), cmap=cmap, interpolation="nearest")
        ax.set_title(f"{label}\nblock {block % len(model.blocks)}: {shown} of {C} channels, {H}x{W}", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, out)


def plot_attention(
    image: Path,
    model: nn.Module,
    out: Path,
    blocks: Sequence[int] = (0, -1),
    heads: Optional[int] = None,
    label: str = "",
) -> Path:
    """Per chosen block (one row): the input, the class token's attention to the patches for each head, and the
    attention rollout from block 0 through that block, each upsampled over the image, as a PNG."""
    name = label or type(model).__name__
    chosen = sorted({_block_index(model, b, name) for b in blocks})
    x, picture = load_image(image, model)
    with_attn = [i for i in range(chosen[-1] + 1) if getattr(model.blocks[i], "attn", None) is not None]
    for b in chosen:
        if b not in with_attn:
            raise InputError(f"block {b} of {name} has no attention (a transition layer): pick another block")
    attn = attention_weights(model, x, with_attn)
    num_heads = attn[chosen[0]].shape[1]
    shown = num_heads if heads is None else max(1, min(heads, num_heads))
    grid = tuple(model.grid_size)  # load_image gives the model's img_size

    def overlay(ax: Any, amap: torch.Tensor, title: str) -> None:
        up = torch.nn.functional.interpolate(amap[None, None], size=picture.shape[:2], mode="bilinear")[0, 0]
        _show(ax, picture)
        ax.imshow((up / up.max().clamp_min(1e-12)).numpy(), cmap="inferno", alpha=0.6)
        ax.set_title(title, fontsize=8)

    plt = _pyplot()
    fig, axes = plt.subplots(len(chosen), shown + 2, figsize=(1.8 * (shown + 2), 1.9 * len(chosen)), squeeze=False)
    for row, b in zip(axes, chosen):
        _show(row[0], picture)
        row[0].set_title(f"block {b}", fontsize=8)
        for h in range(shown):
            overlay(row[1 + h], _class_token_map(attn[b][:, h], grid), f"head {h}")
        rollout = attention_rollout([attn[i] for i in with_attn if i <= b])
        overlay(row[-1], _class_token_map(rollout, grid), f"rollout 0..{b}")
        for ax in row:
            ax.axis("off")
    fig.suptitle(name, fontsize=9)  # over the whole figure: a release's name is wider than a column
    fig.tight_layout()
    return _save(fig, out)
