"""Running the arms: each arm of a claim, seed by seed, through `train` with `resume="auto"` into
runs/reproduce/<budget>/<arm>-s<seed>/, under both budgets (equal epochs; equal training seconds, runs capped at the
budget), so that an interrupted study continues where it stopped and an arm that several claims share trains once."""

import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..config import resolve_config
from ..errors import InputError
from ..training.run import train
from ..training.run_dir import RunDir
from .claims import ARMS, CLAIMS, FASHION, RECIPE

_logger = logging.getLogger(__name__)


class StudyStopped(Exception):
    """A study stopped by a signal, its last run checkpointed: (signal number, where)."""


def parse_seconds(text: str) -> float:
    """'600', '600s', '10m', '1.5h' -> seconds; InputError for anything else."""
    units = {"s": 1, "m": 60, "h": 3600}
    text = str(text).strip().lower()
    scale = units.get(text[-1:], None)
    try:
        value = float(text[:-1] if scale else text) * (scale or 1)
    except ValueError:
        value = -1.0
    if not value > 0 or not math.isfinite(value):
        raise InputError(f"budget {text!r} is not a duration: use e.g. 600s, 10m or 1.5h")
    return value


def budget_names(epochs: int, seconds: float) -> Dict[str, str]:
    """The run folders of the two budgets, by budget: 2-epochs, 600-seconds."""
    return {"epochs": f"{epochs}-epochs", "time": f"{seconds:.0f}-seconds"}


def _slug(arm: str) -> str:
    return "_".join("".join(c if c.isalnum() else " " for c in arm.lower()).split())


def run_dir(output: str, budget: str, arm: str, seed: int) -> Path:
    """Where seed `seed` of `arm` trains under `budget` (a folder of `budget_names`)."""
    return Path(output) / budget / f"{_slug(arm)}-s{seed}"


def arm_runs(output: str, budget: str, arm: str, seeds: Sequence[int]) -> List[Dict[str, List[float]]]:
    """The metrics of each seed's run of `arm` under `budget` that has written them."""
    dirs = [RunDir(run_dir(output, budget, arm, s)) for s in seeds]
    return [d.read_metrics() for d in dirs if d.metrics.is_file()]


def _seconds_per_epoch(output: str, budget: str, arm: str, seeds: Sequence[int]) -> Optional[float]:
    """Training seconds per epoch of `arm` in its equal-epoch runs (the fastest seed: the one least slowed by other
    work on the machine), None before any has finished an epoch."""
    times = [m["train_s"][-1] / m["epoch"][-1] for m in arm_runs(output, budget, arm, seeds) if m.get("train_s")]
    return min(times, default=None)


def _span(output: str, budget: str, arm: str, seeds: Sequence[int], seconds: float) -> Optional[float]:
    """The epochs `arm` trains in `seconds` at the pace of its equal-epoch runs: the span of its capped runs'
    schedule, which the clock then drives (warm-up: its first epoch; the epochs run on to twice the span, so that
    the cap ends every run, on a machine up to twice as fast too)."""
    per_epoch = _seconds_per_epoch(output, budget, arm, seeds)
    return seconds / per_epoch if per_epoch else None


def planned_runs(
    name: str,
    budget: str,
    data: str = FASHION,
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int = 2,
    seconds: float = 600.0,
    train_subset: Optional[int] = None,
    output: str = "runs/reproduce",
) -> List[Tuple[str, int, Dict[str, Any]]]:
    """(arm, seed, config overrides) of every run of claim `name` under `budget` ("epochs" or "time"), in the order
    they train. A capped run's schedule spans the epochs its arm trains in `seconds` at the pace of its equal-epoch
    runs, so those go first."""
    if name not in CLAIMS:
        raise InputError(f"unknown claim {name!r}: one of {', '.join(CLAIMS)}, or all")
    claim, names = CLAIMS[name], budget_names(epochs, seconds)
    spans = {
        arm: _span(output, names["epochs"], arm, seeds, seconds) if budget == "time" else None for arm in claim.arms
    }
    # capped runs take turns across the arms, seed by seed, so that a drift in the machine's pace hits each alike
    if budget == "epochs":
        order = [(a, s) for a in claim.arms for s in seeds]
    else:
        order = [(a, s) for s in seeds for a in claim.arms]
    runs = []
    for arm, seed in order:
        span = spans[arm]
        overrides = dict(
            ARMS[arm],
            data=data,
            seed=seed,
            train_subset=train_subset,
            output=str(Path(output) / names[budget]),
            name=run_dir(output, "", arm, seed).name,
            epochs=max(1, math.ceil(2 * span)) if span else epochs,
            schedule_epochs=span,
            warmup_epochs=min(1, math.ceil(span or epochs) - 1),
        )
        if budget == "time":  # the lr follows the training seconds and ends at the cap, at any pace
            overrides.update(time_budget=seconds, schedule_on_time=True)
        runs.append((arm, seed, overrides))
    return runs


def run_claim(
    name: str,
    data: str = FASHION,
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int = 2,
    seconds: float = 600.0,
    train_subset: Optional[int] = None,
    output: str = "runs/reproduce",
    progress: bool = False,
) -> Dict[str, Any]:
    """Train every arm of claim `name` with every seed under both budgets (the equal-epoch runs first, whose speed
    sizes the capped runs' schedules), resuming what exists. Returns the study's setup, as `write_report` takes it."""
    names = budget_names(epochs, seconds)
    for budget in ("epochs", "time"):
        for arm, seed, overrides in planned_runs(name, budget, data, seeds, epochs, seconds, train_subset, output):
            _logger.info("%s, %s budget: %s, seed %d", name, names[budget], arm, seed)
            result = train(resolve_config(RECIPE, overrides), resume="auto", progress=progress)
            if result.get("stopped"):  # a signal: the same command continues the study from here
                raise StudyStopped(result["stopped"], f"{name}: {arm}, seed {seed}, {result['at']}")
    return dict(data=data, seeds=list(seeds), epochs=epochs, seconds=seconds, train_subset=train_subset, output=output)
