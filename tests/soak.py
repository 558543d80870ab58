"""Soak test of restarts (slow; not part of `make test`): 2 gloo processes under torchrun --max-restarts 20,
interrupted 20 times at random by SIGKILL or SIGTERM, must end with the weights and metrics of the run that was
never interrupted.

    .venv/bin/python -m tests.soak [--interruptions 20] [--seed 0] [--out DIR]

Exits 0 and prints PASS when the final model, EMA and metrics.csv (timings aside) equal the uninterrupted run's.
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List

import torch

from .helpers import TINY_MODEL, last_checkpoint, metrics_rows, subprocess_env


def _torchrun(out: Path, name: str, restarts: int) -> List[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        f"--max-restarts={restarts}",
        "-m",
        "t2t_vit",
        "train",
        "--config",
        "digits",
        "--no-progress",
        "--output",
        str(out),
        "--name",
        name,
        "--epochs",
        "30",
        "--warmup-epochs",
        "1",
        "--batch-size",
        "32",
        "--model-kwargs",
        json.dumps(TINY_MODEL),
        "--drop-path",
        "0.1",
        "--model-ema",
        "true",
        "--model-ema-decay",
        "0.9",
        "--scale",
        "[0.6, 1.0]",
        "--log-interval",
        "5",
    ]


def _workers(agent: int) -> List[int]:
    """The training processes torchrun's agent `agent` runs now (its children)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == agent:
            pids.append(int(stat.parent.name))
    return sorted(pids)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interruptions", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="where the two runs go (default: a temporary folder)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="t2t-soak-"))
    rng = random.Random(args.seed)
    start = time.time()

    print(f"uninterrupted run in {out / 'straight'} ...", flush=True)
    done = subprocess.run(_torchrun(out, "straight", 0), env=subprocess_env(), cwd=out, capture_output=True, text=True)
    if done.returncode != 0:
        print(done.stdout[-3000:] + done.stderr[-3000:])
        return 1
    straight_s = time.time() - start

    log = open(out / "soak.log", "w")
    agent = subprocess.Popen(
        _torchrun(out, "soak", args.interruptions), env=subprocess_env(), cwd=out, stdout=log, stderr=subprocess.STDOUT
    )
    sent: List[str] = []
    while len(sent) < args.interruptions and agent.poll() is None:
        workers = _workers(agent.pid)
        if len(workers) < 2:
            time.sleep(0.2)
            continue
        time.sleep(rng.uniform(1.0, 12.0))  # from just started (still importing) to well into an epoch
        if agent.poll() is not None or _workers(agent.pid) != workers:
            continue
        victim, sig = rng.choice(workers), rng.choice((signal.SIGKILL, signal.SIGTERM))
        try:
            os.kill(victim, sig)
        except ProcessLookupError:
            continue
        sent.append(sig.name)
        print(f"  {len(sent):2d}: {sig.name} to pid {victim} at {time.time() - start:.0f} s", flush=True)
        deadline = time.time() + 120
        while _workers(agent.pid) and set(_workers(agent.pid)) & set(workers) and time.time() < deadline:
            time.sleep(0.2)  # until torchrun has replaced the workers (or the run ended)
    code = agent.wait()
    log.close()
    wall = time.time() - start

    a, b = out / "straight", out / "soak"
    sa, sb = last_checkpoint(a), last_checkpoint(b)
    same = all(torch.equal(sa[k][n], sb[k][n]) for k in ("model", "model_ema") for n in sa[k])
    same = same and metrics_rows(a) == metrics_rows(b) and sa["epoch"] == sb["epoch"]
    kinds = {s: sent.count(s) for s in sorted(set(sent))}
    print(
        f"{len(sent)} interruptions {kinds}; torchrun exit {code}; final epoch {sb['epoch']}; "
        f"uninterrupted run {straight_s:.0f} s, whole soak {wall:.0f} s"
    )
    ok = same and code == 0 and len(sent) == args.interruptions
    print(
        "PASS: final weights, EMA and metrics.csv equal the uninterrupted run's"
        if ok
        else f"FAIL (equal: {same}); torchrun's log: {out / 'soak.log'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
