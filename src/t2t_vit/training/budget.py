"""The training clock across resumes and ranks, the time budget it is spent against (`time_budget`), and the lr
schedule on that clock (`schedule_on_time`)."""

import time
from typing import Any, Callable, Optional


class Budget:
    """The run's training seconds and its time budget.

    This process's clock counts on from the seconds saved by earlier sessions and epochs (`restart`, at each epoch's
    start: evaluations are not training time). With many processes the run follows the clock they agree on at each
    host read (the engine's, every log_interval updates: the maximum of the ranks' clocks), so that every rank takes
    the same lr and ends at the same epoch; a stop within an epoch follows each rank's own clock, and the ranks agree
    on it at the next read.
    """

    def __init__(self, limit: Optional[float] = None, world: int = 1, seconds: float = 0.0) -> None:
        self.limit, self.world = limit, world  # limit: the budget in training seconds; None: none
        self.agreed = seconds  # the ranks' clock at the last read
        self.restart(seconds)

    def restart(self, seconds: float) -> None:
        """Count this process's clock on from `seconds`, from now."""
        self._start, self._before = time.perf_counter(), seconds

    def seconds(self) -> float:
        """This process's clock."""
        return self._before + time.perf_counter() - self._start

    def run_seconds(self) -> float:
        """The clock the lr and the run's end follow: this process's, or the one the ranks agreed on."""
        return self.seconds() if self.world == 1 else self.agreed

    def spent(self, seconds: Optional[float] = None) -> bool:
        """Whether the budget is spent at `seconds` (by default the run's clock)."""
        return self.limit is not None and (self.run_seconds() if seconds is None else seconds) >= self.limit

    def schedule(self, scheduler: Any, updates: float) -> "TimeSchedule":
        """`scheduler` (per update, over `updates`) driven by the run's clock: it ends at the budget at any pace."""
        assert self.limit is not None, "a schedule on time needs a time budget (check_config asks for one)"
        return TimeSchedule(scheduler, updates, self.limit, self.run_seconds)


class TimeSchedule:
    """A per-update timm schedule driven by the clock: after s of `budget` training seconds it gives the lr of
    update s / budget x `updates`, so that the schedule ends at the budget at whatever pace the machine goes."""

    def __init__(self, scheduler: Any, updates: float, budget: float, seconds: Callable[[], float]) -> None:
        self.scheduler, self.updates, self.budget, self.seconds = scheduler, updates, budget, seconds

    def step_update(self, num_updates: int) -> None:
        """`num_updates` is not used: the clock says where the schedule is."""
        self.scheduler.step_update(num_updates=round(self.updates * min(1.0, self.seconds() / self.budget)))
