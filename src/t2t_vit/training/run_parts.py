"""What a run is made of besides its state (`state.TrainState`): built by `run`, used by its epochs and by
`rollback`."""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from torch import nn

from .engine import StepContext
from .run_dir import RunDir
from .setup import Data
from .state import TrainState


@dataclass
class Run:
    """What the epochs of a run use besides its state."""

    cfg: Dict[str, Any]
    run_dir: RunDir
    data: Data
    model: nn.Module  # evaluated and saved
    train_model: nn.Module  # what the steps run through: compiled, DDP
    ctx: StepContext
    scheduler: Any  # the timm schedule (ctx.scheduler may drive it by the clock)
    lr: float  # the peak lr, scaled to the global batch
    total_epochs: int
    updates_per_epoch: int
    is_main: bool
    rank: int = 0
    tried: List[float] = field(default_factory=list)  # the lrs (as `lr` states them) rollbacks went on at
    judged: Dict[Tuple[str, int], Optional[float]] = field(default_factory=dict)  # held-out losses of saved files
    diverged: Optional[str] = None  # what an epoch's exploded held-out loss was, for the message

    def schedule_at(self, state: TrainState) -> None:
        """Set the lr the (rebuilt) schedule gives at the state's position, over what the optimizer state loaded."""
        for group in state.optimizer.param_groups:
            group["initial_lr"] = self.lr
        if self.cfg["sched_on_updates"]:
            self.scheduler.step_update(num_updates=state.updates)
        else:
            self.scheduler.step(state.epoch)
