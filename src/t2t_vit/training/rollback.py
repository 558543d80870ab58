"""When a run diverges (a non-finite loss, a loss spike, a held-out loss that exploded): roll back to the last saved
state from before the divergence at a lower lr and go on (`nonfinite: rollback`), or halt with that state saved as
the run's last checkpoint and the --lr to continue with."""

import logging
import math
from typing import Optional

from torch import nn

from ..config_keys import DEFAULTS
from ..errors import InputError
from .divergence import exploded
from .engine import EpochTotals, unwrap
from .evaluate import evaluate
from .process import rng_state, seed_everything, set_rng_state
from .run_dir import read_first_good
from .run_parts import Run
from .state import TrainState
from .tasks import build_model

_logger = logging.getLogger(__name__)


def halted(run: Run, state: TrainState, where: str) -> InputError:
    """The error that ends a run its divergence halted (under nonfinite stop or skip), raised after the state from
    before the divergence is saved as its last checkpoint."""
    limit = f"{run.cfg['nonfinite_limit']} failures in a row; " if run.cfg["nonfinite"] == "skip" else ""
    advice = _advice(run, state)
    return InputError(_nonfinite_message(run, where, limit, _before_divergence(run, state, halted=True), advice))


def rollback(run: Run, state: TrainState, where: str) -> None:
    """Reload the weights and optimizer of the last saved state from before the divergence at a lower lr and go on
    past the failing batch; InputError, that state saved, after nonfinite_limit failures with no good update
    between or rollback_limit rollbacks with no healthy epoch (its held-out loss not exploded) between."""
    cfg, groups = run.cfg, state.optimizer.param_groups
    run.tried.append(cfg["lr"] * max(group.get("lr_scale", 1.0) for group in groups))
    in_a_row = state.totals.nonfinite_in_a_row >= cfg["nonfinite_limit"]
    if in_a_row or len(run.tried) > cfg["rollback_limit"]:
        advice = _advice(run, state)
        lrs = ", ".join(f"{lr:.4g}" for lr in run.tried)
        why = (
            f"{cfg['nonfinite_limit']} failures in a row; "
            if in_a_row
            else f"{len(run.tried) - 1} rollbacks did not get past it (it diverged at lr {lrs}); "
        )
        raise InputError(_nonfinite_message(run, where, why, _before_divergence(run, state, halted=False), advice))
    what = _what_failed(run)
    scales = [group["lr_scale"] for group in groups]
    back_to = _before_divergence(run, state, halted=False, keep=False)
    groups = state.optimizer.param_groups  # new ones, loaded
    for group, scale in zip(groups, scales):
        group["lr_scale"] = scale * cfg["rollback_lr_factor"]
    run.schedule_at(state)
    state.totals.rollbacks += 1
    _logger.warning(
        "%s at %s: rolled back to %s, lr x %g from here (now %.2e)",
        what,
        where,
        back_to,
        cfg["rollback_lr_factor"],
        groups[0]["lr"],
    )


def _before_divergence(run: Run, state: TrainState, halted: bool, keep: bool = True) -> str:
    """Load the state from before the divergence into `state` and, with `keep`, leave it on disk as the run's last
    checkpoint; what it is, for a message.

    That state is the halted one (`halted`: the epoch stopped before its failing update) if its held-out loss is
    not exploded, else the newest saved checkpoint's whose is not, else the run's initial weights. Exploded: over
    spike_factor x the run's best held-out loss (before any, chance's). A rollback (not
    `keep`) takes the weights and optimizer only: the position, RNGs and totals stay.
    """
    factor, reference = run.cfg["spike_factor"], reference_loss(run, state)
    if halted and not exploded(_held_out_loss(run, run.model), reference, factor):
        state.save(run.run_dir)
        return f"{str(run.run_dir.last)!r} holds the state without the failing steps"
    for path in run.run_dir.saved_checkpoints():
        try:
            _, saved = read_first_good([path])
        except InputError:
            continue
        loss = saved.get("held_out_loss")
        if loss is None:  # not evaluated where it was saved: evaluate it now (once)
            key = (str(path), path.stat().st_mtime_ns)
            if key not in run.judged:
                state.load_weights(saved)
                run.judged[key] = _held_out_loss(run, run.model)
            loss = run.judged[key]
        if exploded(loss, reference, factor):
            continue
        step = saved.get("step_in_epoch", 0)
        what = f"{path.name} (epoch {saved['epoch']}{f' step {step}' if step else ''})"
        if not keep:
            state.load_weights(saved)
            return what
        state.load_state_dict(saved)
        if path != run.run_dir.last:
            state.save(run.run_dir)
        return f"{str(run.run_dir.last)!r} holds the state from before the divergence, that of {what}"
    _load_initial(run, state, _initial_model(run), keep)
    if keep:
        state.save(run.run_dir)
    return f"{str(run.run_dir.last)!r} holds the run's initial weights, from before the divergence"


def reference_loss(run: Run, state: TrainState) -> Optional[float]:
    """What a held-out loss is exploded against: the run's best, or before any, chance's (ln of the classes)."""
    if state.best_held_out is not None or run.cfg["task"] != "classification":
        return state.best_held_out
    return math.log(state.info["meta"]["num_classes"])


def _held_out_loss(run: Run, model: nn.Module) -> Optional[float]:
    """The held-out loss of `model` (None for a dense task: its evaluation measures none)."""
    if run.cfg["task"] != "classification":
        return None
    return evaluate(model, run.data.val_loader, run.ctx.device, run.ctx.amp_dtype, desc="held-out")["loss"]


def _initial_model(run: Run) -> nn.Module:
    """The run's model as its first update found it: built again from the seed (and its init checkpoint)."""
    rng = rng_state(run.ctx.device)
    seed_everything(run.cfg["seed"])
    model, _ = build_model(run.cfg, run.data)
    set_rng_state(rng, run.ctx.device)
    return model.to(run.ctx.device)


def _load_initial(run: Run, state: TrainState, initial: nn.Module, keep: bool) -> None:
    """The initial weights into model and EMA, the optimizer's state cleared; with `keep`, the position too (a
    fresh run's, its RNGs seeded as one's)."""
    unwrap(state.model).load_state_dict(initial.state_dict())
    if state.ema is not None:
        state.ema.module.load_state_dict(initial.state_dict())
    state.optimizer.state.clear()
    if keep:
        state.epoch = state.updates = 0
        state.totals, state.train_seconds, state.best, state.best_held_out = EpochTotals(), 0.0, None, None
        seed_everything(run.cfg["seed"] + run.rank)


def _what_failed(run: Run) -> str:
    """What halted the epoch: the guard's latest spike, or a non-finite loss (a host read)."""
    guard, diverged = run.ctx.spike, run.diverged
    if diverged:
        run.diverged = None
        return diverged
    if guard is not None and guard.fired():
        what = f"loss spike ({guard.describe()})"
        guard.clear()
        return what
    return "non-finite loss"


def _advice(run: Run, state: TrainState) -> str:
    """The --lr to continue with: a tenth of the failing update's lr, as `lr` states it (for the run's global
    batch), and for the Adam family at most the recipe's (an lr a tenth of a diverging one's still kills a ViT
    silently, at chance, far below where the loss explodes)."""
    run.schedule_at(state)  # the lr the failing update took (the schedule ran on to the end of the interval)
    lr = max(group["lr"] for group in state.optimizer.param_groups) * run.cfg["lr"] / run.lr
    recipe = DEFAULTS["lr"] if "adam" in run.cfg["opt"].lower() or run.cfg["opt"] == "lamb" else math.inf
    if lr / 10 <= recipe:
        return f"--lr {lr / 10:.2g} (a tenth of the {lr:.2g} it diverged at)"
    return f"--lr {recipe:.2g} (the recipe's for {run.cfg['opt']}; it diverged at {lr:.2g})"


def _nonfinite_message(run: Run, where: str, why: str, held: str, advice: str) -> str:
    return (
        f"{_what_failed(run)} after {where}: {why}the run stopped and {held}. Continue from it with --resume auto and "
        f"a lower --lr: {advice}; or check the data"
    )
