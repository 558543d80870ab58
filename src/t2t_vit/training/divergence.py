"""Divergence before it is non-finite: the loss-spike guard of the training steps, and what counts as an exploded
held-out loss when a stop or a rollback looks for the state from before the divergence."""

import math
from typing import Any, Dict, Optional

import torch


class SpikeGuard:
    """An update's loss over `factor` x the median of the last `window` accepted ones, and over the run's early
    level (the median of its first `window`), is a spike: a failure, as a non-finite loss is. It watches once
    `window` losses are in; spikes and non-finite losses are not taken in. All on the device: no host reads.

    The early level keeps the guard quiet where the loss is small and a few hard images make a batch many times the
    median (late in a fine-tune): a diverging loss climbs above where the run began.
    """

    def __init__(self, factor: float, window: int, device: torch.device) -> None:
        self.factor, self.window = factor, window
        self.losses = torch.full((window,), math.nan, device=device)  # a ring of the last accepted losses
        self.count = torch.zeros((), device=device)  # losses accepted
        self.early = torch.full((), math.nan, device=device)  # the median of the first `window`
        self.last = torch.full((2,), math.nan, device=device)  # the latest spike: (loss, median)

    def check(self, loss: torch.Tensor) -> torch.Tensor:
        """1.0 if `loss` (a 0-d float tensor, the same on every rank) is a spike, else 0.0."""
        median = self.losses.nanmedian()
        spike = (self.count >= self.window) & (loss > self.factor * median) & (loss > self.early)
        self.last = torch.where(spike, torch.stack([loss, median]), self.last)
        return spike.float()

    def accept(self, loss: torch.Tensor, keep: torch.Tensor) -> None:
        """Take `loss` in where `keep` is 1 (a finite loss, no spike, the epoch not halted)."""
        keep = keep.bool() & torch.isfinite(loss)
        slot = torch.arange(self.window, device=self.losses.device) == self.count % self.window
        self.losses = torch.where(slot & keep, loss, self.losses)
        self.count += keep.float()
        first = keep & (self.count == self.window) & torch.isnan(self.early)
        self.early = torch.where(first, self.losses.nanmedian(), self.early)

    def state_dict(self) -> Dict[str, Any]:
        return dict(losses=self.losses.cpu(), count=self.count.item(), early=self.early.item())

    def load_state_dict(self, state: Optional[Dict[str, Any]]) -> None:
        """What `state_dict` gave (None, or another window: the guard starts over)."""
        if not state or len(state["losses"]) != self.window:
            return
        device = self.losses.device
        self.losses = state["losses"].to(device)
        self.count = torch.tensor(float(state["count"]), device=device)
        self.early = torch.tensor(float(state["early"]), device=device)

    def fired(self) -> bool:
        """Whether a spike came since the last `clear` (a host read)."""
        return not bool(torch.isnan(self.last[0]).item())

    def clear(self) -> None:
        self.last = torch.full_like(self.last, math.nan)

    def describe(self) -> str:
        """The latest spike, for a message (a host read)."""
        loss, median = self.last.tolist()
        return f"loss {loss:.4g} over {self.factor:g}x its running median {median:.4g}"


def exploded(loss: Optional[float], reference: Optional[float], factor: Optional[float]) -> bool:
    """Whether a held-out `loss` is non-finite or over `factor` x `reference` (the run's best held-out loss, or its
    initial weights'); unknown (None: a task with no held-out loss) is not exploded."""
    if loss is None:
        return False
    if not math.isfinite(loss):
        return True
    return factor is not None and reference is not None and loss > factor * reference
