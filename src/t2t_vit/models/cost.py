"""Model cost: parameters as the authors' release counts them, and multiply-accumulates of a forward pass."""

from typing import Any, Tuple

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
    flop counter sees; the fused kernels do the same arithmetic.
    """
    with torch.device("meta"):
        model = timm.create_model(name, attn_impl="eager", **model_kwargs).eval()
        return forward_cost(model, torch.empty(batch_size, model.in_chans, *model.img_size))


def forward_cost(model: torch.nn.Module, x: torch.Tensor) -> Tuple[int, int]:
    """(parameters as `count_params` counts them, multiply-accumulates of `model(x)`); `x` on the meta device costs
    nothing to run."""
    with FlopCounterMode(display=False) as counter:
        model(x)
    return count_params(model), counter.get_total_flops() // 2
