"""The process a run lives in: torchrun ranks, the device, seeds and RNG states, stop signals."""

import logging
import os
import random
import signal
from datetime import timedelta
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist

from ..device import launched_rank, launched_world, pick_device
from ..errors import InputError

_logger = logging.getLogger(__name__)
_made_group = False  # whether setup_distributed made the default process group (a caller's own is the caller's)


def setup_distributed(device_name: str = "auto") -> Tuple[int, int, torch.device]:
    """(rank, world size, this rank's device); under torchrun, initialises the process group with the backend of
    the device the run uses (nccl for CUDA, gloo for the CPU, also on a machine that has GPUs). One process under
    torchrun gets its group too, so that it runs the collectives a run of many runs."""
    global _made_group
    world = launched_world()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if world == 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
        return 0, 1, device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    rank = launched_rank()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        _init_process_group(backend, rank, world)
        _made_group = True
        _logger.info("process group %s: rank %d of %d", backend, rank, world)
    return rank, world, device


def end_distributed() -> None:
    """Destroy the process group `setup_distributed` made, for a command that has returned on every rank. Left to
    the interpreter's exit, gloo's threads can abort the process ('terminate called without an active exception',
    3 of 8 two-process runs of a bare group here) and NCCL warns of leaked communicators. Not after an error: a rank
    that failed alone would wait in it for the others."""
    global _made_group
    if _made_group and dist.is_initialized():
        dist.destroy_process_group()
    _made_group = False


def _init_process_group(backend: str, rank: int, world: int) -> None:
    """The default process group. Under a torchrun restart on one node, its keys get a space of their own: torchrun
    keeps one store across restarts, which still holds the previous workers' addresses, and a new worker reading
    one dials a dead process ("Connection refused", pytorch/pytorch#135712). One node's workers share the restart
    count; across nodes it can differ, so there the README asks for TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1."""
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    shared = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and os.environ.get("GROUP_WORLD_SIZE") == "1"
    if not shared or restart == "0":
        dist.init_process_group(backend)
        return
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timedelta(minutes=10)
    )
    dist.init_process_group(
        backend, store=dist.PrefixStore(f"t2t_vit/restart_{restart}", store), rank=rank, world_size=world
    )


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) alike."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state(device: Optional[torch.device] = None) -> Dict[str, Any]:
    """Every RNG the run draws from, as plain types (loadable with weights_only=True): Python, NumPy, torch's CPU
    generator and, on a CUDA `device`, that device's generator only (a resume may see other GPUs)."""
    np_state = np.random.get_state()
    state = dict(
        python=random.getstate(),
        numpy=dict(
            keys=torch.from_numpy(np_state[1].astype(np.int64)),
            pos=np_state[2],
            has_gauss=np_state[3],
            cached_gaussian=np_state[4],
        ),
        torch=torch.get_rng_state(),
    )
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Dict[str, Any], device: Optional[torch.device] = None) -> None:
    """Restore what `rng_state` captured (its CUDA generator onto `device`, when both have one)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if isinstance(cuda, list):  # written by earlier versions: one state per visible GPU
        cuda = cuda[device.index or 0] if device is not None and (device.index or 0) < len(cuda) else None
    if cuda is not None and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)


def gather(obj: Any, world: int) -> List[Any]:
    """Every rank's `obj`, by rank (a collective when world > 1: every rank must call it)."""
    if world == 1:
        return [obj]
    objects: List[Any] = [None] * world
    dist.all_gather_object(objects, obj)
    return objects


def agree(error: Optional[str], world: int) -> None:
    """Raise InputError(error) on every rank if any rank has one (a collective when world > 1), so that a check
    made by one rank (the run directory's lock) stops all of them instead of leaving the others waiting."""
    errors = [e for e in gather(error, world) if e]
    if errors:
        raise InputError(errors[0])


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


def world_size() -> int:
    """The processes of the run: the process group's size, 1 without one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce(values: torch.Tensor, op: Any = None) -> torch.Tensor:
    """`values` reduced (summed by default) over the ranks in place; unchanged without a process group."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values, op=op or dist.ReduceOp.SUM)
    return values
