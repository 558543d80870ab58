"""The process a run lives in: torchrun ranks, the device, seeds and RNG states, stop signals."""
import logging
import os
import random
import signal
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist

from .errors import InputError

_logger = logging.getLogger(__name__)


def setup_distributed() -> Tuple[int, int, int]:
    """(rank, world size, local rank); initialises the process group under torchrun (nccl on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend)
    return rank, world, local_rank


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` (this rank's GPU, else the CPU), or a torch device name checked against what is here."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"device {name!r} is not a torch device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r} asked for but CUDA is not available here: use --device cpu")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) alike."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> Dict[str, Any]:
    """Every RNG the run draws from, as plain types (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    state = dict(
        python=random.getstate(),
        numpy=dict(keys=torch.from_numpy(np_state[1].astype(np.int64)), pos=np_state[2],
                   has_gauss=np_state[3], cached_gaussian=np_state[4]),  # fmt: skip
        torch=torch.get_rng_state(),
    )
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def all_rng_states(world: int) -> List[Dict[str, Any]]:
    """Every rank's `rng_state`, by rank (a collective when world > 1: every rank must call it)."""
    if world == 1:
        return [rng_state()]
    states: List[Any] = [None] * world
    dist.all_gather_object(states, rng_state())
    return states


class StopSignal:
    """SIGTERM / SIGINT set a flag so the loop can checkpoint and leave; a second SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self._previous: Dict[int, Any] = {}

    def __enter__(self) -> "StopSignal":
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum
        _logger.warning("%s received: finishing this step, then writing a checkpoint", signal.Signals(signum).name)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
