"""`make gpu-check`: the project's CUDA paths run, checked and measured on one GPU, in one call of at most 7 minutes
on one H200. Writes cuda.md and cuda.json (GPU, torch, CUDA, driver, commit; every check and figure) and exits 1 if
a check failed. In that order:

    1. at once, in their own processes: (a) the CUDA tests, pytest -m cuda (tests/test_cuda.py; the compile test in a
       process of its own), and the real loop on CUDA: fashion_mnist with a 60 s budget, the digits demo, a SIGTERM
       stop and its resume
    2. alone on the GPU: (b) training and inference img/s, peak memory and MFU at 224 px, eager (gpu_speed.py)
    3. alone: `benchmark --loader` (digits, Fashion-MNIST, an ImageFolder of JPEGs): the input path against the step
    4. the compiled variants, as many as the time left allows; what did not fit is named

    PYTHONPATH=src python3 benchmarks/gpu_check.py [--out DIR] [--budget SECONDS]
    PYTHONPATH=src python3 benchmarks/gpu_check.py --sections tests,loop --budget 200 --name cuda_checks   # a recheck
    python benchmarks/gpu_check.py --dry-run --out /tmp/x    # the CPU: tiny sizes, the CUDA parts skipped, named

The Fashion-MNIST files come from `make gpu-pack` (.gpu/fashion-mnist, carried to the GPU machine) or --fashion-mnist.
"""

import argparse
import csv
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor, wait
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Optional, Set

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
import gpu_speed  # noqa: E402
import torch  # noqa: E402

from t2t_vit.deploy.benchmark import device_name  # noqa: E402
from t2t_vit.study.report import source_commit  # noqa: E402

CLI = [sys.executable, "-m", "t2t_vit"]
ENV = dict(
    os.environ,
    PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    PYTHONUNBUFFERED="1",  # a child killed at the deadline has written all it printed
)
FASHION_DIRS = (ROOT / ".gpu" / "fashion-mnist", Path("/usr/share/datasets/fashion-mnist"))
JPEGS_PER_CLASS = 700  # 54 batches of 128 an epoch: the loader benchmark's 16 warm-up and 30 timed ones in one
SECTIONS = ("tests", "loop", "speed", "loaders")  # (a) the CUDA tests, (c) the real loop, (b) throughput, loaders
CHILDREN: Set[subprocess.Popen] = set()  # the check's child processes, each the leader of a process group of its own
CHILDREN_LOCK = threading.Lock()


class Report:
    """Every check (section, name, passed/failed/skipped, seconds, detail) and the throughput rows."""

    def __init__(self, dry: bool) -> None:
        self.dry, self.checks, self.speed, self.left_out = dry, [], [], []
        self.peaks: Dict[str, Optional[float]] = {}
        self.started = time.monotonic()
        self.stopped = ""  # why the check's processes were killed, once they were

    def add(self, section: str, name: str, status: str, seconds: float, detail: str = "") -> None:
        if status == "failed" and self.stopped:
            detail = f"{self.stopped}: {detail}"
        self.checks.append(dict(section=section, name=name, status=status, seconds=round(seconds, 1), detail=detail))
        print(f"[{status:7}] {section}: {name} ({seconds:.0f} s) {detail}", flush=True)

    @property
    def failed(self) -> List[Dict[str, Any]]:
        return [c for c in self.checks if c["status"] == "failed"]


def environment(device: torch.device) -> Dict[str, Any]:
    """The machine and the code: GPU, driver, torch, CUDA, timm, Python, commit."""
    import timm

    driver = None
    if shutil.which("nvidia-smi"):
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True
        )
        driver = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    return dict(
        gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else f"none (CPU: {device_name('cpu')})",
        driver=driver,
        torch=torch.__version__,
        cuda=torch.version.cuda,
        timm=timm.__version__,
        python=platform.python_version(),
        commit=source_commit(),
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    )


# The CUDA tests in two processes at once: the compile test (a minute and more of compiling on the host's CPUs)
# beside the others, which the one GPU runs alongside it; a recheck then takes the compile test's time, not the sum.
TEST_PARTS = {"compile": "compile", "others": "not compile"}


OUTCOMES = {"PASSED": "passed", "SKIPPED": "skipped", "FAILED": "failed", "ERROR": "failed"}


def cuda_tests(report: Report, work: Path, part: str) -> None:
    """(a) `pytest -m cuda -k TEST_PARTS[part]`, one check per test (skipped ones with pytest's reason). A pytest
    that did not finish (killed at the deadline) leaves no JUnit file: its verbose log gives the tests it ended and
    the one it was in."""
    junit, log = work / f"cuda_tests_{part}.xml", work / f"cuda_tests_{part}.log"
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-k", TEST_PARTS[part], "-v", "-p", "no:cacheprovider", "-rs"]
    start = time.monotonic()
    proc = _run([*cmd, f"--junitxml={junit}", "tests/test_cuda.py"], ROOT, None)
    log.write_text(proc.stdout + proc.stderr)
    if not junit.is_file():
        for name, outcome in re.findall(r"^tests/test_cuda\.py::(\S+) ([A-Z]+)", proc.stdout, re.M):
            report.add("tests", name, OUTCOMES.get(outcome, "failed"), 0, "" if outcome == "PASSED" else "see the log")
        running = re.findall(r"^tests/test_cuda\.py::(\S+) *$", proc.stdout, re.M)
        name = running[-1] if running else f"pytest -m cuda -k '{TEST_PARTS[part]}'"
        report.add("tests", name, "failed", time.monotonic() - start, (proc.stdout + proc.stderr)[-600:])
        return
    for case in ET.parse(junit).iter("testcase"):
        status, detail = "passed", ""
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                status = "skipped" if tag == "skipped" else "failed"
                detail = (found.get("message") or "").splitlines()[0][:300] if found.get("message") else tag
        report.add("tests", case.get("name", "?"), status, float(case.get("time", 0)), detail)


def _popen(cmd: List[str], cwd: Path) -> subprocess.Popen:
    """A child process (text pipes) in a session of its own, so that `stop_children` reaches what it starts too
    (torchrun's workers, DataLoader workers)."""
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    with CHILDREN_LOCK:
        CHILDREN.add(proc)
    return proc


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop_children() -> None:
    """Kill every child's process group still running: the check's deadline has come, and its page must be written."""
    with CHILDREN_LOCK:
        for proc in CHILDREN:
            _kill(proc)


def _run(cmd: List[str], cwd: Path, timeout: Optional[float]) -> subprocess.CompletedProcess:
    """`subprocess.run` with output captured, through `_popen`; TimeoutExpired after killing its process group."""
    proc = _popen(cmd, cwd)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        proc.communicate()
        raise
    finally:
        with CHILDREN_LOCK:
            CHILDREN.discard(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _top1(text: str) -> Optional[float]:
    found = re.findall(r"held-out top-1: ([0-9.]+)%", text)
    return float(found[-1]) if found else None


def _metrics(run_dir: Path) -> List[Dict[str, str]]:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _check_command(report: Report, name: str, cmd: List[str], cwd: Path, timeout: float, floor: float = 0.0) -> None:
    """Run a command that ends with `held-out top-1: X%`; passed when it exits 0 at or above `floor`."""
    start = time.monotonic()
    try:
        proc = _run(cmd, cwd, timeout)
    except subprocess.TimeoutExpired:
        report.add("loop", name, "failed", time.monotonic() - start, f"over {timeout:.0f} s: {' '.join(cmd[2:])}")
        return
    top1 = _top1(proc.stdout)
    ok = proc.returncode == 0 and top1 is not None and top1 >= floor
    detail = f"held-out top-1 {top1}%" if top1 is not None else f"exit {proc.returncode}: {proc.stderr[-400:]}"
    report.add("loop", name, "passed" if ok else "failed", time.monotonic() - start, detail)


def fashion_dir(given: Optional[str]) -> Optional[Path]:
    for d in [Path(given)] if given else FASHION_DIRS:
        if (d / "train-images-idx3-ubyte.gz").is_file() or (d / "train-images-idx3-ubyte").is_file():
            return d
    return None


def jpeg_folder(root: Path, per_class: int) -> Path:
    """An ImageFolder of JPEGs (train/ and val/, 10 classes) from the digits scaled to 320 px, noise added: the
    decode, crop and RandAugment work of an ImageNet-like input path. A class's digits repeat under new noise."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", min(max(per_class // 5, 1), 20))):
        for label in range(10):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            images = digits.images[digits.target == label]
            for i, image in enumerate(images[j % len(images)] for j in range(count)):
                big = np.kron(image * 15, np.ones((40, 40))) + rng.normal(0, 20, (320, 320))
                rgb = np.repeat(big.clip(0, 255).astype(np.uint8)[..., None], 3, axis=2)
                Image.fromarray(rgb).save(folder / f"{i}.jpg", quality=90)
    return root


def loader_speed(
    report: Report, name: str, data: str, config: str, device: str, work: Path, extra: List[str], deadline: float
) -> None:
    """`benchmark --loader`: the input path's img/s beside the training step's, and which one bounds the run; stopped
    at `deadline` (30 s at least)."""
    cmd = [*CLI, "benchmark", "--loader", data, "--config", config, "--device", device, *extra]
    start = time.monotonic()
    try:
        proc = _run(cmd, work, max(deadline - start, 30))
    except subprocess.TimeoutExpired:
        report.add("loop", f"benchmark --loader {name}", "failed", time.monotonic() - start, "killed at the deadline")
        return
    if proc.returncode != 0:
        report.add("loop", f"benchmark --loader {name}", "failed", time.monotonic() - start, proc.stderr[-400:])
        return
    line = " ".join(proc.stdout.split())
    report.add("loop", f"benchmark --loader {name}", "passed", time.monotonic() - start, line[-300:])


def sigterm_resume(report: Report, device: str, work: Path, extra: List[str], epochs: int) -> None:
    """A run stopped by SIGTERM after its first epoch saves and exits 143; `--resume auto` then finishes every
    epoch, each in metrics.csv once."""
    cmd = [*CLI, "train", "--config", "digits", "--device", device, "--output", str(work), "--name", "sigterm"]
    cmd += ["--epochs", str(epochs), "--no-progress", *extra]
    run_dir, start = work / "sigterm", time.monotonic()
    proc = _popen(cmd, work)
    while proc.poll() is None and not _metrics(run_dir) and time.monotonic() - start < 240:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    with CHILDREN_LOCK:
        CHILDREN.discard(proc)
    if proc.returncode != 128 + signal.SIGTERM:
        detail = f"exit {proc.returncode} (expected 143: stopped before its end): {err[-300:]}"
        report.add("loop", "SIGTERM stop and resume", "failed", time.monotonic() - start, detail)
        return
    resumed = _run([*cmd, "--resume", "auto"], work, 300)
    epochs_logged = [int(r["epoch"]) for r in _metrics(run_dir)]
    ok = resumed.returncode == 0 and epochs_logged == list(range(1, epochs + 1))
    detail = f"stopped at: {err.strip().splitlines()[-1][:160]}; resumed: exit {resumed.returncode}, epochs logged"
    detail += f" {epochs_logged[:1]}..{epochs_logged[-1:]} of {epochs}"
    report.add("loop", "SIGTERM stop and resume", "passed" if ok else "failed", time.monotonic() - start, detail)


def real_loop(report: Report, args: argparse.Namespace, work: Path) -> List[Any]:
    """(c) The training commands users run, end to end, as callables to run at once; in a dry run the CPU stands in
    where it takes seconds."""
    device = "cpu" if args.dry_run else "cuda"
    sizes = "{embed_dim: 32, depth: 1, num_heads: 2, token_dim: 16, soft_splits: [[3, 1, 1], [3, 1, 1], [3, 2, 1]]}"
    tiny = ["--model-kwargs", sizes] if args.dry_run else []
    fashion = fashion_dir(args.fashion_mnist)
    jobs = [lambda: sigterm_resume(report, device, work, tiny, 4 if args.dry_run else 30)]
    if args.dry_run:
        report.add("loop", "fashion_mnist, 60 s budget", "skipped", 0, "dry run: a minute of CUDA")
        report.add("loop", "digits demo", "skipped", 0, "dry run: on the CPU it is `make demo`")
        return jobs
    if fashion is None:
        report.add("loop", "fashion_mnist, 60 s budget", "skipped", 0, "no Fashion-MNIST: run `make gpu-pack` first")
    else:
        cmd = [*CLI, "train", "--config", "fashion_mnist", "--device", device, "--time-budget", "60"]
        cmd += ["--data", f"fashion-mnist:{fashion}", "--output", str(work), "--name", "fashion", "--no-progress"]
        jobs.append(lambda: _check_command(report, "fashion_mnist, 60 s budget", cmd, work, 300, floor=80.0))
    demo = [*CLI, "demo", "--device", device]
    jobs.append(lambda: _check_command(report, "digits demo", demo, work / "demo", 300, floor=90.0))
    return jobs


def loaders(report: Report, args: argparse.Namespace, work: Path, deadline: float) -> None:
    """`benchmark --loader` on digits, Fashion-MNIST and an ImageFolder of JPEGs (the dry run: digits on the CPU)."""
    device = "cpu" if args.dry_run else "cuda"
    loader_speed(report, "digits", "digits", "digits", device, work, [], deadline)
    if args.dry_run:
        return
    fashion = fashion_dir(args.fashion_mnist)
    if fashion is not None:
        loader_speed(report, "Fashion-MNIST", f"fashion-mnist:{fashion}", "fashion_mnist", device, work, [], deadline)
    jpegs = work / "jpegs"  # built while the tests and the loop ran
    loader_speed(
        report, "ImageFolder of JPEGs", str(jpegs), "t2t_vit_14", device, work, ["--batch-size", "128"], deadline
    )


def guarded(report: Report, job: Any) -> None:
    """Run a check; an exception in the harness itself is a failed check, not a lost one."""
    try:
        job()
    except Exception as e:  # noqa: BLE001 - reported as a failure, with its type
        report.add("harness", getattr(job, "__name__", "job"), "failed", 0, f"{type(e).__name__}: {e}")


def speed(report: Report, device: torch.device, groups: List[gpu_speed.Group], deadline: float, img: int) -> None:
    rows, left_out, failed = gpu_speed.measure(groups, device, img, deadline, report.peaks)
    report.speed += rows
    report.left_out += left_out
    for what, error in failed:
        report.add("speed", what, "failed", 0, error)


def markdown(report: Report, env: Dict[str, Any], command: str, wall: float, sections: List[str]) -> str:
    """cuda.md: the machine, the checks, the throughput table (where `sections` measured it)."""
    some = f" Sections run: {', '.join(sections)} (of {', '.join(SECTIONS)})." if len(sections) < len(SECTIONS) else ""
    lines = [
        "# The CUDA paths, checked and measured",
        "",
        f"`{command}` on {env['gpu']} (driver {env['driver']}), torch {env['torch']} (CUDA {env['cuda']}), timm "
        f"{env['timm']}, Python {env['python']}; commit {env['commit']}, {env['date']}; {wall:.0f} s in all.{some}",
        "",
        "## Checks",
        "",
        "| section | check | result | s | detail |",
        "|---|---|---|---:|---|",
    ]
    for c in report.checks:
        detail = c["detail"].replace("|", "/").replace("\n", " ")
        lines.append(f"| {c['section']} | {c['name']} | {c['status']} | {c['seconds']:.0f} | {detail} |")
    if "speed" not in sections:
        return "\n".join(lines) + "\n"
    peaks = report.peaks
    sheet = f"{peaks['datasheet'] / 1e12:.0f}" if peaks.get("datasheet") else "not in the table"
    measured = f"{peaks['measured'] / 1e12:.0f}" if peaks.get("measured") else "-"
    lines += [
        "",
        "## Throughput at 224 px" + (" (dry run: CPU, tiny sizes; the numbers mean nothing)" if report.dry else ""),
        "",
        f"MFU: model FLOPs per second (a training step counts 3x the forward's) over the dense bf16 peak, the "
        f"datasheet's ({sheet} TFLOP/s) and a bf16 8192^3 matmul measured in this run ({measured} TFLOP/s).",
        "",
        "| mode | model | variant | batch | dtype | img/s | ms/step | TFLOP/s | MFU (sheet) | MFU (matmul) | peak MiB "
        "| first step s |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def pct(x: Optional[float]) -> str:
        return f"{100 * x:.1f}%" if x is not None else "-"

    for r in report.speed:
        mib = f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else "-"
        lines.append(
            f"| {r['mode']} | {r['model']} | {r['variant']} | {r['batch']} | {r['dtype']} | {r['img_per_s']:.0f} | "
            f"{r['step_ms']:.1f} | {r['tflops']:.1f} | {pct(r['mfu_datasheet'])} | {pct(r['mfu_measured'])} | {mib} | "
            f"{r['first_step_s']:.1f} |"
        )
    if report.left_out:
        lines += ["", "Left out (they did not fit the time budget):", ""] + [f"- {x}" for x in report.left_out]
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="the CPU, tiny sizes; the CUDA parts skipped with a reason")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="where cuda.md and cuda.json go")
    p.add_argument(
        "--budget",
        type=float,
        default=400.0,
        help="seconds for the whole check (default 400); what still runs then is killed and reported",
    )
    p.add_argument("--fashion-mnist", help="folder of the four Fashion-MNIST IDX files (default: .gpu/fashion-mnist)")
    p.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"a comma list of {', '.join(SECTIONS)} (default: all)"
    )
    p.add_argument("--name", default="cuda", help="the files' name: NAME.md and NAME.json (default: cuda)")
    args = p.parse_args(argv)
    sections = [s for s in SECTIONS if s in args.sections.split(",")]
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown or not sections:
        p.error(
            f"--sections {args.sections}: {', '.join(sorted(unknown)) or 'none given'}; take from {', '.join(SECTIONS)}"
        )
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; --dry-run runs it on the CPU with tiny sizes", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    report = Report(args.dry_run)
    deadline = report.started + args.budget
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = environment(device)
    img = 32 if args.dry_run else 224
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)
        (work / "demo").mkdir()
        jobs = [partial(cuda_tests, report, work, part) for part in TEST_PARTS] if "tests" in sections else []
        jobs += real_loop(report, args, work) if "loop" in sections else []
        if "loaders" in sections and not args.dry_run:  # enough batches that 16 workers are measured busy
            jobs.append(lambda: jpeg_folder(work / "jpegs", JPEGS_PER_CLASS))
        with ThreadPoolExecutor(max(len(jobs), 1)) as pool:  # processes of their own, none timed against another
            futures = [pool.submit(guarded, report, job) for job in jobs]
            if wait(futures, timeout=max(deadline - time.monotonic(), 0)).not_done:
                report.stopped = f"killed at the check's deadline (--budget {args.budget:.0f} s)"
                stop_children()  # each check still running then reports its process's end as its failure
        report.stopped = ""  # what fails from here failed by itself
        eager, compiled = gpu_speed.plan(args.dry_run)
        if "speed" in sections:
            report.peaks = gpu_speed.peak_flops(device, args.dry_run)
            loaders_s = 10 if args.dry_run else 60  # kept free for the loaders
            speed(report, device, eager, deadline - (loaders_s if "loaders" in sections else 0), img)
        if "loaders" in sections:
            loaders(report, args, work, deadline)
        if "speed" in sections and args.dry_run:
            report.left_out += ["compiled variants: left out in a dry run (a minute of compile each on the CPU)"]
        elif "speed" in sections:
            speed(report, device, compiled, deadline, img)
        for log in sorted(work.glob("cuda_tests_*")):
            shutil.copy(log, out / log.name)
    wall = time.monotonic() - report.started
    command = "python benchmarks/gpu_check.py --dry-run" if args.dry_run else "make gpu-check"
    if len(sections) < len(SECTIONS):
        command = f"{command if args.dry_run else 'python3 benchmarks/gpu_check.py'} --sections {','.join(sections)}"
    (out / f"{args.name}.md").write_text(markdown(report, env, command, wall, sections))
    result = dict(env=env, wall_s=wall, sections=sections, peaks=report.peaks, checks=report.checks)
    result = dict(result, speed=report.speed, left_out=report.left_out)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out / (args.name + '.md')}: {len(report.checks)} checks, {len(report.failed)} failed, {wall:.0f} s")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
