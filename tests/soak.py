"""Soak test of restarts (slow; not part of `make test`): 2 gloo processes under torchrun --max-restarts 20,
interrupted 20 times by SIGKILL or SIGTERM to a random worker, must end with the weights and metrics of the run that
was never interrupted. tests/soak_nodes.py does the same for two torchrun agents (two nodes) on this machine.

    .venv/bin/python -m tests.soak [--interruptions 20] [--seed 0] [--out DIR]

The interruptions, not the clock, decide how long the run lasts: each is sent when the run's log shows it has reached
a given step (or, for some, while the restarted workers are still starting), so all of them land inside the run at
any pace. Exits 0 and prints PASS when the final model, EMA and metrics.csv (timings aside) equal the uninterrupted
run's, bitwise.
"""

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

import torch

from .helpers import TINY_MODEL, last_checkpoint, metrics_rows, subprocess_env

# the log line a worker writes every --log-interval steps without a progress bar: "epoch 3/30 step 10/22  loss ..."
STEP_LINE = re.compile(r"epoch (\d+)/\d+ step (\d+)/(\d+)")
# how long the soak waits for a run's next step line before it gives up (a hung run: far above any pace's gap)
STALL_S = 600


def train_args(out: Path, name: str, epochs: int) -> List[str]:
    """`python -m t2t_vit train` of the tiny model on the digits, on the CPU, a log line every 5 steps, and a save
    within the epoch at nearly every one of those reads (--checkpoint-minutes: 0.3 s), which a kill falls back to."""
    return [
        *("-m", "t2t_vit", "train", "--config", "digits", "--device", "cpu", "--no-progress"),
        *("--output", str(out), "--name", name, "--epochs", str(epochs), "--warmup-epochs", "1"),
        *("--batch-size", "32", "--model-kwargs", json.dumps(TINY_MODEL), "--drop-path", "0.1"),
        *("--model-ema", "true", "--model-ema-decay", "0.9", "--scale", "[0.6, 1.0]", "--log-interval", "5"),
        *("--checkpoint-minutes", "0.005"),
    ]


def _torchrun(out: Path, name: str, restarts: int, epochs: int) -> List[str]:
    return [
        sys.executable,
        *("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", f"--max-restarts={restarts}"),
        *train_args(out, name, epochs),
    ]


def children(pid: int) -> List[int]:
    """The processes whose parent is `pid` (a torchrun agent's workers)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            pids.append(int(stat.parent.name))
    return sorted(pids)


def steps_per_epoch(log: str) -> int:
    """The steps of an epoch, from a run's log ("step S/M")."""
    found = STEP_LINE.search(log)
    if found is None:
        raise RuntimeError(f"no step line in the run's log:\n{log[-3000:]}")
    return int(found.group(3))


class StepLog:
    """The steps a run has reached, read from its log files as they grow (a torchrun's rank 0 writes them; on two
    nodes, either agent's file may hold rank 0)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)
        self.offsets = {p: 0 for p in self.paths}

    def skip(self) -> None:
        """Forget what is written so far (lines an interrupted round wrote after its signal)."""
        for p in self.paths:
            self.offsets[p] = p.stat().st_size if p.exists() else 0

    def reached(self) -> Optional[int]:
        """The furthest step (counted from the run's start) in the complete lines written since the last call."""
        best = None
        for p in self.paths:
            if not p.exists():
                continue
            with open(p, "rb") as f:
                f.seek(self.offsets[p])
                text = f.read().decode(errors="replace")
            complete = text[: text.rfind("\n") + 1]
            self.offsets[p] += len(complete.encode(errors="replace"))
            for m in STEP_LINE.finditer(complete):
                step = (int(m.group(1)) - 1) * int(m.group(3)) + int(m.group(2))
                best = step if best is None else max(best, step)
        return best


class Interruption(NamedTuple):
    """When to interrupt: at a step of the run (`at_step`), or while the restarted workers start (`at_step` None:
    `delay` seconds after they appear, or at their first step line, whichever comes first)."""

    at_step: Optional[int]
    delay: float


def plan(rng: random.Random, n: int, last_step: int, at_start: float = 0.25) -> List[Interruption]:
    """`n` interruptions: a share `at_start` of them, at random places but never the last (a step comes after
    each), while the restarted workers start; the rest at steps drawn from 1..`last_step`, in increasing order."""
    starts = set(rng.sample(range(n - 1), round(at_start * n))) if n > 1 else set()
    steps = iter(sorted(rng.sample(range(1, last_step + 1), n - len(starts))))
    return [
        Interruption(None, rng.uniform(0.5, 6.0)) if i in starts else Interruption(next(steps), 0.0) for i in range(n)
    ]


def wait_for(when: Interruption, log: StepLog, running: Callable[[], bool]) -> Optional[int]:
    """Wait until `when` comes; the step the run reached then (None: not yet at a step). Raises TimeoutError if
    no new step line comes for STALL_S; returns None at once if the run ends (`running` false)."""
    start = progress = time.time()
    reached = None
    while running():
        step = log.reached()
        if step is not None:
            reached, progress = step, time.time()
        if when.at_step is None and (reached is not None or time.time() - start >= when.delay):
            return reached
        if when.at_step is not None and reached is not None and reached >= when.at_step:
            return reached
        if time.time() - progress > STALL_S:
            raise TimeoutError(f"no new step line for {STALL_S} s on the way to step {when.at_step} (last: {reached})")
        time.sleep(0.1)
    return None


def same_run(a: Path, b: Path) -> bool:
    """The final model, EMA, epoch and metrics.csv (timings aside) of two runs bitwise equal."""
    sa, sb = last_checkpoint(a), last_checkpoint(b)
    same = all(torch.equal(sa[k][n], sb[k][n]) for k in ("model", "model_ema") for n in sa[k])
    return same and metrics_rows(a) == metrics_rows(b) and sa["epoch"] == sb["epoch"]


def kinds(sent: List[str]) -> Dict[str, int]:
    return {s: sent.count(s) for s in sorted(set(sent))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interruptions", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="where the two runs go (default: a temporary folder)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="t2t-soak-"))
    rng = random.Random(args.seed)
    start = time.time()
    sys.stdout.reconfigure(line_buffering=True)  # each interruption's line as it happens, also into a file

    print(f"uninterrupted run in {out / 'straight'} ...", flush=True)
    cmd = _torchrun(out, "straight", 0, args.epochs)
    done = subprocess.run(cmd, env=subprocess_env(), cwd=out, capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stdout[-3000:] + done.stderr[-3000:])
        return 1
    straight_s = time.time() - start
    # the last interruption lands before the last epoch starts: the run then always has steps left to take
    schedule = plan(rng, args.interruptions, (args.epochs - 1) * steps_per_epoch(done.stdout + done.stderr))

    log_path = out / "soak.log"
    log, steps = open(log_path, "w"), StepLog([log_path])
    cmd = _torchrun(out, "soak", args.interruptions, args.epochs)
    agent = subprocess.Popen(cmd, env=subprocess_env(), cwd=out, stdout=log, stderr=subprocess.STDOUT)
    sent: List[str] = []
    try:
        while len(sent) < len(schedule):
            while agent.poll() is None and len(children(agent.pid)) < 2:
                time.sleep(0.1)
            workers = children(agent.pid)
            steps.skip()  # a step line from now on is this round's
            at = wait_for(schedule[len(sent)], steps, lambda: agent.poll() is None)
            if agent.poll() is not None:
                break
            victim, sig = rng.choice(workers), rng.choice((signal.SIGKILL, signal.SIGTERM))
            try:
                os.kill(victim, sig)
                sent.append(sig.name)
                where = f"step {at}" if at is not None else "start-up"
                print(f"  {len(sent):2d}: {sig.name} to pid {victim} at {where}, {time.time() - start:.0f} s")
            except ProcessLookupError:  # the round ended by itself (torchrun restarts it): the next round gets this one
                pass
            while agent.poll() is None and set(children(agent.pid)) & set(workers):
                time.sleep(0.1)  # until torchrun has replaced the workers (or the run ended)
    except TimeoutError as e:
        print(f"FAIL: {e}; torchrun's log: {log_path}")
        agent.kill()
        return 1
    code = agent.wait()
    log.close()
    wall = time.time() - start

    same = same_run(out / "straight", out / "soak")
    print(
        f"{len(sent)} interruptions {kinds(sent)}; torchrun exit {code}; final epoch "
        f"{last_checkpoint(out / 'soak')['epoch']}; uninterrupted run {straight_s:.0f} s, whole soak {wall:.0f} s"
    )
    ok = same and code == 0 and len(sent) == args.interruptions
    print(
        "PASS: final weights, EMA and metrics.csv equal the uninterrupted run's"
        if ok
        else f"FAIL (equal: {same}); torchrun's log: {log_path}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
