"""`make gpu-study`: the paper's claims (`t2t-vit reproduce all`) at a budget where the models have learned, on one
GPU in at most 9 minutes: the full Fashion-MNIST, 5 seeds, several runs at once on the one GPU (each run a
`t2t-vit train` process of its own, one CPU thread each; the capped runs share the GPU alike, arm for arm).

The study's recipe at batch 512 (its lr scaled with the batch, as the recipe states it per 128 images): a step of
these 28 px models is bound by kernel launches, not by the GPU's arithmetic, so four times the images per step is
about four times the images per second. The equal-epoch runs go first; the capped runs then get the seconds the
deadline leaves them, in whole waves of `--jobs` runs, so that the study ends inside its deadline at any pace.

The pages go to docs/results/<machine>/ beside the CPU study's, and docs/results/README.md's table gains them as a
budget of their own; everything written is also packed into OUT/gpu_study.tar.gz (a device call returns few files).

    PYTHONPATH=src python3 benchmarks/gpu_study.py [--seeds 5] [--epochs 15] [--batch-size 512] [--jobs 20]
    python benchmarks/gpu_study.py --dry-run       # digits on the CPU, 2 seeds (or --seeds), 1 epoch: the script runs
    ... --claims mixer,depth                       # some of the claims (default: all)
"""

import argparse
import math
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
ENV = dict(
    os.environ,
    PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    OMP_NUM_THREADS="1",  # many runs at once: one CPU thread each, not a thread per core each
)
from t2t_vit.config import resolve_config  # noqa: E402
from t2t_vit.study.claims import CLAIMS, RECIPE  # noqa: E402
from t2t_vit.study.report import write_report, write_summary_table  # noqa: E402
from t2t_vit.study.runs import parse_seconds, planned_runs  # noqa: E402
from t2t_vit.training.run_dir import RunDir  # noqa: E402

FASHION_DIRS = (ROOT / ".gpu" / "fashion-mnist", Path("/usr/share/datasets/fashion-mnist"))
Run = Tuple[str, int, Dict[str, Any]]
VENDOR_WORDS = {"nvidia", "tesla", "geforce", "quadro"}
SERIES = {"RTX", "GTX", "TITAN"}
MIN_CAP = 15  # training seconds: a capped run shorter than this says little
STOP_GRACE = 30  # seconds a run has to save and exit after its SIGTERM at the deadline
DRY_CAP = 2  # a dry run's capped runs: the computed seconds, at most these


def _train(overrides: Dict[str, Any], configs: Path, deadline: float) -> Tuple[str, float, Optional[str]]:
    """One run in a process of its own (`t2t-vit train --config` its resolved config), stopped by SIGTERM (it saves
    and exits) at `deadline`: (name, seconds, error or None)."""
    name = f"{Path(overrides['output']).name}/{overrides['name']}"
    config = configs / f"{name.replace('/', '-')}.yaml"
    config.write_text(yaml.safe_dump(resolve_config(RECIPE, overrides)))
    cmd = [sys.executable, "-m", "t2t_vit", "train", "--config", str(config), "--resume", "auto", "--no-progress"]
    start = time.monotonic()
    if start > deadline:
        return name, 0.0, "not started: past the deadline"
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=err, text=True)
        try:
            proc.wait(timeout=max(deadline - start, 1))
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:  # the study's pages are written after the runs: none may hold them
                proc.kill()
                proc.wait()
                return (
                    name,
                    time.monotonic() - start,
                    f"killed {STOP_GRACE} s after SIGTERM (its last checkpoint stands)",
                )
            return name, time.monotonic() - start, "stopped at the deadline (saved; resumable)"
        err.seek(0)
        error = None if proc.returncode == 0 else f"exit {proc.returncode}: {err.read().strip()[-300:]}"
    return name, time.monotonic() - start, error


def run_all(
    runs: List[Run], jobs: int, common: Dict[str, Any], configs: Path, deadline: float
) -> Tuple[List[str], List[float]]:
    """Every run (each once: claims share arms) with the `common` overrides, `jobs` at once. Returns the failures
    and the runs the deadline cut, and each finished run's wall seconds per training second (start-up and
    evaluations included)."""
    unique: Dict[Tuple[str, str], Dict[str, Any]] = {}
    for _, _, overrides in runs:
        unique.setdefault((overrides["output"], overrides["name"]), dict(overrides, **common))
    problems, ratios = [], []
    with ThreadPoolExecutor(jobs) as pool:
        futures = {pool.submit(_train, o, configs, deadline): o for o in unique.values()}
        for job in as_completed(futures):
            name, seconds, error = job.result()
            print(f"  {name}: {seconds:.0f} s{f' {error}' if error else ''}", flush=True)
            if error:
                problems.append(f"{name}: {error}")
                continue
            metrics = RunDir(Path(futures[job]["output"]) / futures[job]["name"]).read_metrics()
            if metrics.get("train_s"):
                ratios.append(seconds / metrics["train_s"][-1])
    return problems, ratios


def machine_name(device_name: str) -> str:
    """A GPU's short name for the study's folder, from the name torch reports: "NVIDIA H100 80GB HBM3" -> h100,
    "NVIDIA A100-SXM4-80GB" -> a100, "NVIDIA GeForce RTX 3090" -> rtx-3090, "Tesla T4" -> t4."""
    words = [w for w in device_name.split() if w.lower() not in VENDOR_WORDS] or ["gpu"]
    model = words[0].split("-")[0]
    if model.upper() in SERIES and len(words) > 1:  # "RTX 3090", "RTX A6000": the series says little alone
        model = f"{model}-{words[1].split('-')[0]}"
    return model.lower()


def capped_seconds(left: float, runs: int, jobs: int, ratio: float) -> int:
    """The training seconds each capped run can have when `runs` of them go `jobs` at once in the `left` seconds,
    a run's wall seconds being `ratio` times its training seconds (as the equal-epoch runs measured)."""
    waves = math.ceil(runs / jobs)
    return int(0.9 * left / waves / ratio)


def _command(args: argparse.Namespace, defaults: Dict[str, Any]) -> str:
    """The command that made the pages, as the pages show it: `make gpu-study`, or the script with the options given
    that change what runs (not the paths of this machine)."""
    given = []
    for key, value in vars(args).items():
        if key not in {"out", "results", "fashion_mnist"} and value != defaults[key]:
            flag = f"--{key.replace('_', '-')}"
            given.append(flag if value is True else f"{flag} {value}")
    if not given:
        return "make gpu-study"
    return " ".join(["python" if args.dry_run else "python3", "benchmarks/gpu_study.py", *given])


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="digits on the CPU, tiny: the script runs, nothing more")
    p.add_argument("--seeds", type=int, help="seeds per arm (default 5; 2 in a dry run)")
    p.add_argument("--epochs", type=int, default=15, help="the equal-epoch budget (default 15)")
    p.add_argument("--batch-size", type=int, default=512, help="images per step (default 512; the lr scales)")
    p.add_argument("--budget", help="the capped runs' training seconds (default: what the deadline leaves them)")
    p.add_argument("--jobs", type=int, help="runs at once (default 20 on the GPU: two waves of 40; 2 in a dry run)")
    p.add_argument("--deadline", type=float, default=500, help="seconds after which no run is waited for")
    p.add_argument("--fashion-mnist", help="folder of the four IDX files (default: .gpu/fashion-mnist)")
    p.add_argument("--results", help="where the pages go (default: docs/results/<the GPU's short name>)")
    p.add_argument("--out", default=os.environ.get("OUT", "."), help="where gpu_study.tar.gz goes (default: $OUT)")
    p.add_argument("--claims", default=",".join(CLAIMS), help=f"a comma list of {', '.join(CLAIMS)} (default: all)")
    args = p.parse_args(argv)
    claims = [c for c in CLAIMS if c in args.claims.split(",")]
    unknown = set(args.claims.split(",")) - set(CLAIMS)
    if unknown or not claims:
        p.error(f"--claims {args.claims}: {', '.join(sorted(unknown)) or 'none given'}; take from {', '.join(CLAIMS)}")
    for name in ("seeds", "epochs", "batch_size", "jobs"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: give 1 or more")
    command = _command(args, vars(p.parse_args([])))
    args.jobs = args.jobs or (2 if args.dry_run else 20)
    import torch

    if args.dry_run:
        device, data, seeds, epochs, seconds, subset, batch = "cpu", "digits", range(args.seeds or 2), 1, None, 256, 64
        results = Path(args.results or "/tmp/gpu_study_dry/results")
        output = str(results.parent / "runs")
    else:
        if not torch.cuda.is_available():
            print("gpu_study: no CUDA device here; --dry-run runs it on the CPU", file=sys.stderr)
            return 2
        candidates = [Path(args.fashion_mnist)] if args.fashion_mnist else FASHION_DIRS
        folder = next((d for d in candidates if any(d.glob("train-images-idx3-ubyte*"))), None)
        if folder is None:
            print("gpu_study: no Fashion-MNIST IDX files: run `make gpu-pack` first", file=sys.stderr)
            return 2
        device, data, seeds, subset = "cuda", f"fashion-mnist:{folder}", range(args.seeds or 5), None
        epochs, batch = args.epochs, args.batch_size
        seconds = round(parse_seconds(args.budget)) if args.budget else None
        gpu = machine_name(torch.cuda.get_device_name())
        results = Path(args.results or ROOT / "docs" / "results" / gpu)
        output = str(ROOT / "runs" / f"reproduce-{gpu}")
    start = time.monotonic()
    deadline = start + args.deadline
    common = dict(device=device, batch_size=batch, workers=0)
    problems: List[str] = []
    with tempfile.TemporaryDirectory(prefix="gpu_study_") as configs:
        runs = [r for c in claims for r in planned_runs(c, "epochs", data, seeds, epochs, 0, subset, output)]
        print(f"{epochs} epochs: {len(runs)} runs, {args.jobs} at once, batch {batch}", flush=True)
        failed, ratios = run_all(runs, args.jobs, common, Path(configs), deadline)
        problems += failed
        if seconds is None:  # what the deadline leaves, in whole waves (the capped runs are as many as these)
            capped = len({(o["output"], o["name"]) for _, _, o in runs})
            seconds = capped_seconds(deadline - time.monotonic(), capped, args.jobs, max(ratios, default=2.0))
            seconds = min(seconds, DRY_CAP) if args.dry_run else seconds
            if seconds < MIN_CAP and not args.dry_run:
                problems.append(f"capped runs: not run, the deadline left {seconds} s each (under {MIN_CAP} s)")
        if seconds >= MIN_CAP or args.dry_run:  # the capped runs' schedules follow the pace of the equal-epoch runs
            runs = [r for c in claims for r in planned_runs(c, "time", data, seeds, epochs, seconds, subset, output)]
            print(f"{seconds} s of training: {len(runs)} runs, {args.jobs} at once", flush=True)
            problems += run_all(runs, args.jobs, common, Path(configs), deadline)[0]
    setup = dict(
        data=data, seeds=list(seeds), epochs=epochs, seconds=seconds, train_subset=subset, output=output, batch=batch
    )
    for name in claims:
        write_report(name, setup, results, command)
    written = [results]
    if not args.dry_run:
        written.append(write_summary_table(results.parent))
    out = Path(args.out) / "gpu_study.tar.gz"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:gz") as tar:
        for path in written:
            tar.add(path, arcname=str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name))
    wall = time.monotonic() - start
    print(f"wrote {results} and {out}: {wall:.0f} s; {len(problems)} problems", *problems, sep="\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
