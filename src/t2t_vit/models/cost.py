"""Model cost: parameters as the authors' release counts them, and multiply-accumulates of a forward pass."""

from typing import Any, Dict, Tuple

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: torch.nn.Module) -> int:
    """Parameters as the authors' release counts them: every tensor of the state dict, so the fixed position table
    and the Performer's random features (buffers here, as timm keeps such tensors; parameters in their code) count."""
    return sum(t.numel() for t in model.state_dict().values())


def model_cost(name: str, batch_size: int = 1, **model_kwargs: Any) -> Tuple[int, int]:
    """(parameters, multiply-accumulates of one forward pass of `batch_size` images, attention matmuls included).

    The model is built on the meta device (no memory, no compute) with the eager attention, whose matmuls the
    flop counter sees; the fused kernels do the same arithmetic. `timm:NAME` is a timm baseline as training builds
    it: `img_size` passed where its constructor takes one, its input that size (else its pretrained config's).
    """
    with torch.device("meta"):
        if name.startswith("timm:"):
            model, x = _timm_baseline(name, batch_size, model_kwargs)
        else:
            model = timm.create_model(name, attn_impl="eager", **model_kwargs).eval()
            x = torch.empty(batch_size, model.in_chans, *model.img_size)
        with FlopCounterMode(display=False) as counter:
            model(x)
    return count_params(model), counter.get_total_flops() // 2


def _timm_baseline(name: str, batch_size: int, kwargs: Dict[str, Any]) -> Tuple[torch.nn.Module, torch.Tensor]:
    from ..factory import constructor_keywords

    kwargs = dict(kwargs)
    size = kwargs.pop("img_size", None)
    if size is not None and "img_size" in (constructor_keywords(name) or []):
        kwargs["img_size"] = size
    model = timm.create_model(name.removeprefix("timm:"), **kwargs).eval()
    side = (size, size) if size is not None else tuple(model.pretrained_cfg["input_size"][1:])
    return model, torch.empty(batch_size, kwargs.get("in_chans", 3), *side)
