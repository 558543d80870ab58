"""Soak test of a two-node run on this one machine (slow; `make soak` runs it after tests/soak.py): two torchrun
agents with the README's two-node command (--nnodes 2, --max-restarts 3, c10d rendezvous, here on 127.0.0.1), one
process each. The second node is killed with its worker (SIGKILL to the agent and every process under it, as a
machine that goes down) at a step mid-epoch, then started again with the same command, twice; the run must end
with the weights and metrics of an uninterrupted two-node run.

    .venv/bin/python -m tests.soak_nodes [--kills 2] [--seed 0] [--out DIR]

The first node is started first and so hosts the c10d rendezvous store (torchrun's agent on HOST0 does): it is the
one node a c10d job cannot lose, so the second node is the one killed. Exits 0 and prints PASS when the final
model, EMA and metrics.csv (timings aside) equal the uninterrupted run's, bitwise.
"""

import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List

from .helpers import free_port, last_checkpoint, subprocess_env
from .soak import STALL_S, StepLog, children, plan, same_run, steps_per_epoch, train_args, wait_for


def node_command(out: Path, name: str, port: int, epochs: int) -> List[str]:
    """The README's two-node command, one process a node, for the tiny digits run: the same on both nodes."""
    return [
        sys.executable,
        *("-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", "--max-restarts=3"),
        *("--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id={name}"),
        *train_args(out, name, epochs),
        *("--resume", "auto"),
    ]


class Nodes:
    """The two agents of one run, each writing to its own log (a restarted node appends to its node's log)."""

    def __init__(self, out: Path, name: str, epochs: int) -> None:
        self.out, self.port = out, free_port()
        self.cmd = node_command(out, name, self.port, epochs)
        self.logs = [out / f"{name}-node{i}.log" for i in (0, 1)]
        self.agents: List[subprocess.Popen] = []

    def start(self, node: int) -> None:
        with open(self.logs[node], "a") as log:
            env = subprocess_env(TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
            agent = subprocess.Popen(self.cmd, env=env, cwd=self.out, stdout=log, stderr=subprocess.STDOUT)
        if node < len(self.agents):
            self.agents[node] = agent
        else:
            self.agents.append(agent)

    def start_both(self) -> None:
        """Node 0, then (once it listens: it hosts the rendezvous) node 1."""
        self.start(0)
        deadline = time.time() + STALL_S
        while not _listening(self.port):
            if self.agents[0].poll() is not None or time.time() > deadline:
                raise RuntimeError(f"node 0 never hosted the rendezvous on port {self.port}: see {self.logs[0]}")
            time.sleep(0.1)
        self.start(1)

    def running(self) -> bool:
        return all(a.poll() is None for a in self.agents)

    def workers_up(self) -> bool:
        return all(children(a.pid) for a in self.agents)

    def kill(self, node: int) -> List[int]:
        """SIGKILL the node's agent and every process under it, the agent first (so it restarts nothing)."""
        agent = self.agents[node]
        tree, todo = [agent.pid], [agent.pid]
        while todo:
            found = children(todo.pop())
            tree += found
            todo += found
        for pid in tree:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        agent.wait()
        return tree

    def wait(self) -> List[int]:
        return [a.wait(timeout=STALL_S) for a in self.agents]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=2, help="at most --max-restarts (3): each costs node 0 one")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="where the two runs go (default: a temporary folder)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="t2t-soak-nodes-"))
    rng = random.Random(args.seed)
    start = time.time()

    print(f"uninterrupted two-node run in {out / 'straight'} ...", flush=True)
    straight = Nodes(out, "straight", args.epochs)
    straight.start_both()
    codes = straight.wait()
    if codes != [0, 0]:
        print(f"FAIL: the uninterrupted two-node run exited {codes}; logs: {straight.logs}")
        return 1
    straight_s = time.time() - start
    per_epoch = steps_per_epoch("".join(p.read_text() for p in straight.logs))
    # kills at steps inside epochs 1..E-1, none in the last: the run then always has steps left to take
    schedule = plan(rng, args.kills, (args.epochs - 1) * per_epoch, at_start=0.0)

    soak = Nodes(out, "soak", args.epochs)
    steps = StepLog(soak.logs)
    soak.start_both()
    at: List[int] = []
    try:
        while len(at) < len(schedule):
            while soak.running() and not soak.workers_up():
                time.sleep(0.1)
            steps.skip()  # a step line from now on is this round's
            reached = wait_for(schedule[len(at)], steps, soak.running)
            if not soak.running():
                break
            killed = soak.kill(1)
            at.append(reached)
            print(
                f"  {len(at)}: SIGKILL to node 1 (agent and worker, pids {killed}) at step {reached} "
                f"(epoch {reached // per_epoch + 1}, step {reached % per_epoch} of {per_epoch}), "
                f"{time.time() - start:.0f} s",
                flush=True,
            )
            time.sleep(rng.uniform(1.0, 5.0))  # the machine comes back
            soak.start(1)
    except (TimeoutError, RuntimeError) as e:
        print(f"FAIL: {e}; logs: {soak.logs}")
        for a in soak.agents:
            a.kill()
        return 1
    codes = soak.wait()
    wall = time.time() - start

    same = same_run(out / "straight", out / "soak")
    print(
        f"{len(at)} kills of node 1 at steps {at}; agents exit {codes}; final epoch "
        f"{last_checkpoint(out / 'soak')['epoch']}; uninterrupted two-node run {straight_s:.0f} s, "
        f"whole soak {wall:.0f} s"
    )
    ok = same and codes == [0, 0] and len(at) == args.kills
    print(
        "PASS: two nodes, final weights, EMA and metrics.csv equal the uninterrupted two-node run's"
        if ok
        else f"FAIL (equal: {same}); logs: {soak.logs}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
