"""Model cost: parameters and MACs (counted with `torch.utils.flop_counter`)."""
from typing import Any, Tuple

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: torch.nn.Module) -> int:
    """Every tensor of the model's parameters, the fixed ones (position table, random features) included."""
    return sum(p.numel() for p in model.parameters())


def model_cost(name: str, batch_size: int = 1, **model_kwargs: Any) -> Tuple[int, int]:
    """(parameters, multiply-accumulates of one forward pass of `batch_size` images, attention matmuls included).

    The model is built on the meta device (no memory, no compute) with the eager attention, whose matmuls the
    flop counter sees; the fused kernels do the same arithmetic.
    """
    with torch.device("meta"):
        model = timm.create_model(name, attn_impl="eager", **model_kwargs).eval()
        x = torch.empty(batch_size, model.in_chans, *model.img_size)
        with FlopCounterMode(display=False) as counter:
            model(x)
    return count_params(model), counter.get_total_flops() // 2
