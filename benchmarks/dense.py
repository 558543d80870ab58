"""T2T-ViT-7/14 + FPN Faster R-CNN beside ResNet-18/50 + FPN Faster R-CNN: one recipe, the same canvases, the same
epochs; held-out mAP and AP50, training and inference img/s, peak memory; and which feature pyramid does better
under T2T-ViT-7, T2T's own (`feature_pyramid: t2t`) or ViTDet's simple one (`simple`), over several seeds.

    python benchmarks/dense.py                                   # the recipe below, into runs/dense-benchmark
    python benchmarks/dense.py --epochs 20 --seeds 0,1,2,3,4     # flags override the recipe's data and epochs
    python benchmarks/dense.py --dry-run --out /tmp/x            # tiny sizes, a minute on 2 cores: checks the script

Every run goes through the project's own `train()` in its own run directory under --out, with `resume="auto"`, one at
a time: interrupt the benchmark and start it again to continue (a finished run is read back from its metrics.csv).
Then, side by side in this process, each table row's trained model (its first seed's last weights) runs a training
step (forward, backward, the run's fused AdamW at lr 0, so the weights stay) and an inference step on one fixed batch
of training canvases: the median of the repeats after warm-up. Peak memory is measured in a fresh process per row
(as many at once as there are cores: each process's peak is its own).
Writes benchmarks/results/dense.md and .json (--dry-run: into --out).
"""

import argparse
import dataclasses
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

STARTED = time.monotonic()  # the invocation's wall time counts the imports below

import torch  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from t2t_vit.checkpoint import read_checkpoint  # noqa: E402
from t2t_vit.config import resolve_config  # noqa: E402
from t2t_vit.data.canvases import cached_canvases  # noqa: E402
from t2t_vit.data.dense import canvas_config  # noqa: E402
from t2t_vit.data.dense_transforms import detection_collate  # noqa: E402
from t2t_vit.data.device_batches import to_device  # noqa: E402
from t2t_vit.deploy.benchmark import (  # noqa: E402
    _release_free_memory,
    _reset_peak_rss,
    _rss_mib,
    device_name,
    time_steps,
)
from t2t_vit.device import autocast, pick_device  # noqa: E402
from t2t_vit.errors import InputError  # noqa: E402
from t2t_vit.study.report import source_commit  # noqa: E402
from t2t_vit.training.evaluate import dense_checkpoint_model  # noqa: E402
from t2t_vit.training.run import train  # noqa: E402
from t2t_vit.training.run_dir import RunDir  # noqa: E402
from t2t_vit.training.setup import build_optimizer, sum_of_losses  # noqa: E402
from t2t_vit.training.tasks import dense_dataset  # noqa: E402

# ---------------------------------------------------------------------------------------------- the recipe
# One recipe for every model (the config keys of `t2t-vit train`); change the defaults here, in one place.
MODELS = ("t2t_vit_7", "t2t_vit_14", "timm:resnet18", "timm:resnet50")
PYRAMIDS = ("t2t", "simple")  # compared under the first T2T-ViT of --models, over --seeds
SEEDS = (0, 1, 2)  # the pyramid comparison's
OTHER_SEEDS = (0,)  # every other row's
DATA = "canvases"  # or fashion-canvases:DIR (Fashion-MNIST IDX files in DIR), or coco:DIR
RECIPE: Dict[str, Any] = dict(
    task="detection",
    detector="fasterrcnn",
    epochs=10,
    warmup_epochs=1,
    cooldown_epochs=0,
    batch_size=8,
    opt="adamw",
    lr=1e-3,
    lr_base_batch=8,  # lr is the lr at batch 8, scaled linearly to another --batch-size
    weight_decay=0.05,
    sched="cosine",
    sched_on_updates=True,  # warm up step by step: from 1e-6 to 1e-3 at one epoch's end, T2T-ViT-7's loss went NaN
    warmup_lr=1e-6,
    min_lr=1e-5,
    clip_grad=1.0,
    drop_path=0.0,
    hflip=0.0,  # a mirrored digit is another glyph
    model_ema=False,  # the reported mAP is the trained weights' own, at the last epoch
    img_size=128,  # a T2T-ViT's position table, resampled to each canvas (96-160 px, kept at its own size)
    detector_min_size=None,
    dense_kwargs=dict(  # FPN width, the box head's two layers; proposals and samples sized for 1-4 objects a canvas
        fpn_channels=64,
        representation_size=256,
        rpn_pre_nms_top_n_train=200,
        rpn_post_nms_top_n_train=100,
        rpn_batch_size_per_image=64,
        rpn_pre_nms_top_n_test=200,
        rpn_post_nms_top_n_test=50,
        box_batch_size_per_image=32,
    ),
    eval_every=1,
    workers=0,
    device="auto",
    log_interval=50,
)
SPEED = dict(warmup=2, repeats=5)

# --dry-run: the same script at tiny sizes (a 1-block T2T-ViT, small heads, a few small canvases)
DRY_TINY_T2T = dict(embed_dim=32, depth=1, num_heads=2, mlp_ratio=2.0, token_dim=16)
DRY_RECIPE = dict(
    epochs=1,
    warmup_epochs=0,
    batch_size=2,
    lr_base_batch=2,
    img_size=64,
    device="cpu",
    dense_kwargs=dict(
        fpn_channels=16,
        representation_size=32,
        rpn_pre_nms_top_n_train=100,
        rpn_post_nms_top_n_train=50,
        rpn_pre_nms_top_n_test=100,
        rpn_post_nms_top_n_test=50,
        rpn_batch_size_per_image=32,
        box_batch_size_per_image=32,
    ),
)
DRY_CANVASES = dict(train=2, val=2, side=(64, 80), object_side=(12, 24), objects=(1, 2))
DRY_SPEED = dict(warmup=1, repeats=1)
RESULTS = ROOT / "benchmarks" / "results"
# what a run directory's saved config must match for the run to be continued or read back (a re-run may change the
# device, workers, logging and evaluations)
RUN_KEYS = sorted(
    set(RECIPE) - {"device", "workers", "log_interval", "eval_every"}
    | {"data", "model", "model_kwargs", "feature_pyramid", "seed"}
)


def say(text: str) -> None:
    print(f"[{time.monotonic() - STARTED:5.0f} s] {text}", flush=True)


@dataclasses.dataclass
class Row:
    """A table row: a backbone under a pyramid ("-" for a CNN: its own stages), trained once per seed."""

    model: str
    pyramid: str
    seeds: Tuple[int, ...]

    @property
    def label(self) -> str:
        return self.model.removeprefix("timm:") + ("" if self.pyramid == "-" else f" {self.pyramid}")

    def run_name(self, seed: int) -> str:
        return f"{self.label.replace(' ', '-')}-seed{seed}"


def plan_rows(models: List[str], seeds: List[int], other_seeds: List[int]) -> List[Row]:
    """The rows: the first T2T-ViT under each pyramid over `seeds`, the other T2T-ViTs under T2T's own pyramid and the
    CNNs over `other_seeds`."""
    compared = next((m for m in models if not m.startswith("timm:")), None)
    rows = []
    for model in models:
        if model == compared:
            rows += [Row(model, pyramid, tuple(seeds)) for pyramid in PYRAMIDS]
        else:
            rows.append(Row(model, "-" if model.startswith("timm:") else "t2t", tuple(other_seeds)))
    return rows


# ---------------------------------------------------------------------------------------------- data and runs
def data_spec(data: str, train: Optional[int], val: Optional[int], out: Path, dry: bool) -> Tuple[str, str]:
    """(a coco:DIR spec, its description): canvases drawn into out/data, `train` and `val` of them per split (a
    canvas does not change with their number: fewer are a subset); any other spec as it is."""
    config = canvas_config(data)
    if config is None:
        if train or val:
            raise InputError(f"--train-subset and --val-subset apply to canvases data, not {data!r}")
        if dry:
            raise InputError(
                f"the dry run draws its own small canvases: --data canvases[:N] or fashion-canvases:DIR, not {data!r}"
            )
        return data, data
    config = dataclasses.replace(config, **(DRY_CANVASES if dry else {}))
    config = dataclasses.replace(config, train=train or config.train, val=val or config.val)
    root = cached_canvases(config, out / "data")
    return f"coco:{root}", f"{data} ({config.train} training, {config.val} held-out canvases; {root})"


def run_config(recipe: Dict[str, Any], row: Row, seed: int, spec: str, out: Path, dry: bool) -> Dict[str, Any]:
    tiny = dry and not row.model.startswith("timm:")
    overrides = dict(recipe, data=spec, model=row.model, seed=seed, output=str(out / "runs"), name=row.run_name(seed))
    overrides.update(feature_pyramid="t2t" if row.pyramid == "-" else row.pyramid)
    overrides["model_kwargs"] = dict(DRY_TINY_T2T) if tiny else {}
    return resolve_config(None, overrides)


def train_or_read(cfg: Dict[str, Any]) -> List[Dict[str, str]]:
    """The run's metrics rows: read back where it has finished all its epochs, else trained (or continued) first."""
    run_dir = RunDir.of(cfg)
    if run_dir.config.is_file():
        saved = yaml.safe_load(run_dir.config.read_text())
        changed = sorted(k for k in RUN_KEYS if saved.get(k) != cfg[k])
        if changed:
            raise InputError(
                f"{run_dir} was trained with another recipe ({', '.join(changed)} differ): use another --out"
            )
    rows = run_dir.metric_rows()
    if not rows or int(rows[-1]["epoch"]) < cfg["epochs"] + cfg["cooldown_epochs"]:
        say(f"training {run_dir.path.name}")
        result = train(cfg, resume="auto", progress=False)
        if "stopped" in result:
            raise InputError(f"stopped at {result['at']}: run the benchmark again to continue")
        rows = run_dir.metric_rows()
    else:
        say(f"read back {run_dir.path.name}: {len(rows)} epochs")
    return rows


# ---------------------------------------------------------------------------------------------- speed and memory
def fixed_batch(spec: str, batch_size: int, device: torch.device) -> Tuple[List[torch.Tensor], List[Dict]]:
    """The first `batch_size` training canvases, unflipped, as the models take them: floats in [0, 1] on `device`."""
    dataset = dense_dataset(spec, "train", "detection", 3)
    images, targets, _ = detection_collate([dataset[i] for i in range(batch_size)])
    return [image.float() / 255 for image in to_device(images, device)], to_device(targets, device)


def steps(model: torch.nn.Module, cfg: Dict[str, Any], batch: Tuple, device: torch.device) -> Dict[str, Any]:
    """A training step (the run's loss and fused AdamW, at lr 0) and an inference step of `model` on `batch`."""
    images, targets = batch
    amp = torch.bfloat16 if cfg["amp"] and device.type == "cuda" else None
    optimizer = build_optimizer(model, cfg, lr=0.0)

    def train_step() -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, amp):
            loss = sum_of_losses(model(images, targets), targets)
        loss.backward()
        optimizer.step()

    def infer_step() -> None:
        model.eval()
        with torch.inference_mode(), autocast(device, amp):
            model(images)

    return dict(train=train_step, infer=infer_step)


def measure_speed(
    rows: List[Row], cfgs: Dict[str, Dict[str, Any]], spec: str, device: torch.device, warmup: int, repeats: int
) -> Dict[str, Dict[str, Any]]:
    """Each row's parameters, and the img/s of its training and inference step, all rows taking turns on the same
    batch (of the recipe's batch size)."""
    batch = fixed_batch(spec, next(iter(cfgs.values()))["batch_size"], device)
    timed, params = {}, {}
    for row in rows:
        cfg = cfgs[row.label]
        last = RunDir.of(cfg).last
        model = dense_checkpoint_model(str(last), read_checkpoint(last), use_ema=False).to(device)
        params[row.label] = sum(p.numel() for p in model.parameters())
        for mode, step in steps(model, cfg, batch, device).items():
            timed[f"{row.label}|{mode}"] = step
    say(f"timing {len(rows)} models side by side ({warmup} warm-up, {repeats} repeats)")
    times = time_steps(timed, str(device), warmup, repeats)
    n = len(batch[0])
    img_per_s = {key: n / statistics.median(seconds) for key, seconds in times.items()}
    return {
        row.label: dict(
            params=params[row.label],
            train_img_per_s=img_per_s[f"{row.label}|train"],
            infer_img_per_s=img_per_s[f"{row.label}|infer"],
        )
        for row in rows
    }


def peak_memory_here(checkpoint: str, spec: str, batch_size: int, where: str) -> Dict[str, float]:
    """Peak memory (MiB) of the inference step and of the training step of a checkpoint's model; meant for a process
    that runs nothing else (the CPU: peak resident size less the size before the model; CUDA: peak allocated)."""
    device = torch.device(where)
    batch = fixed_batch(spec, batch_size, device)
    saved = read_checkpoint(checkpoint)
    cfg = saved["config"]
    _release_free_memory()
    base = _rss_mib()
    model = dense_checkpoint_model(checkpoint, saved, use_ema=False).to(device)
    del saved
    peaks = {}
    for mode, step in steps(model, cfg, batch, device).items():
        step()  # warm-up: allocator pools, lazy buffers
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            step()
            torch.cuda.synchronize(device)
            peaks[mode] = torch.cuda.max_memory_allocated(device) / 2**20
            continue
        _release_free_memory()
        _reset_peak_rss()  # where it cannot, the run's whole high-water mark
        step()
        peaks[mode] = _rss_mib(peak=True) - base
    return peaks


def measure_memory(jobs: List[Tuple[str, str, int, str]], workers: int) -> List[Dict[str, float]]:
    """`peak_memory_here(*job)` of each job, each in a process of its own: forked from a server that has imported
    this script and done nothing else (the children pay for no imports and inherit no work), `workers` at a time."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["__main__"])
    with context.Pool(workers, maxtasksperchild=1) as pool:
        return pool.starmap(peak_memory_here, jobs, chunksize=1)


# ---------------------------------------------------------------------------------------------- results
def spread(values: List[float], digits: int = 1) -> str:
    """ "m ± s" over seeds (the sample std), or the one value."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def pyramid_verdict(per_seed: List[Dict[str, Any]]) -> str:
    """One sentence: which pyramid does better and by how much, or that the difference is within the seed spread."""
    if not per_seed:
        return "**Which pyramid:** not compared (no T2T-ViT in --models)."
    diffs = [s["t2t"]["map"] - s["simple"]["map"] for s in per_seed]
    mean = statistics.mean(diffs)
    std = statistics.stdev(diffs) if len(diffs) > 1 else float("inf")
    t2t, simple = ([s[p]["map"] for s in per_seed] for p in PYRAMIDS)
    both = f"mAP {spread(t2t)} (t2t) against {spread(simple)} (simple) over {len(diffs)} seeds"
    if len(diffs) > 1 and abs(mean) > std and all((d > 0) == (mean > 0) for d in diffs):
        better, worse = ("T2T's own", "the simple one") if mean > 0 else ("the simple (ViTDet) one", "T2T's own")
        return (
            f"**Which pyramid:** {better} does better than {worse}: {both}, {abs(mean):.1f} ± {std:.1f} mAP points "
            f"ahead on average and ahead on every seed."
        )
    return (
        f"**Which pyramid:** neither, on this recipe: {both}; the paired difference t2t - simple, {mean:+.1f} ± "
        f"{std:.1f} points, is within the seed spread."
    )


def summarize(rows: List[Row], runs: Dict[Tuple[str, int], Dict[str, str]]) -> List[Dict[str, Any]]:
    """Per row: its seeds' last-epoch mAP, AP50, epochs and wall seconds (training and evaluation)."""
    out = []
    for row in rows:
        seeds = []
        for seed in row.seeds:
            metrics = runs[(row.label, seed)]
            last = metrics[-1]
            seeds.append(
                dict(
                    seed=seed,
                    map=float(last["val_map"]),
                    map50=float(last["val_map50"]),
                    epochs=int(last["epoch"]),
                    wall_s=sum(float(m["epoch_time_s"]) for m in metrics),
                    curve=[float(m["val_map"]) if m["val_map"] else None for m in metrics],
                )
            )
        out.append(dict(model=row.model, pyramid=row.pyramid, label=row.label, seeds=seeds))
    return out


def write_results(folder: Path, summary: List[Dict[str, Any]], per_seed: List[Dict], info: Dict[str, Any]) -> Path:
    recipe = ", ".join(f"{k} {v}" for k, v in info["recipe"].items() if k not in ("device", "log_interval"))
    lines = [
        "# Detection: T2T-ViT + FPN Faster R-CNN beside ResNet + FPN Faster R-CNN"
        + (" (dry run)" if info["dry"] else ""),
        "",
        f"- command: `{info['command']}`; commit {info['commit']}; {info['date']}",
        f"- machine: {info['machine']}; torch {info['torch']}, torchvision {info['torchvision']}, timm {info['timm']}",
        f"- wall time of this invocation {duration(info['wall_s'])}; of all the runs (training and held-out "
        f"evaluation, including runs read back) {duration(info['runs_wall_s'])}",
        f"- data: {info['data']}",
        f"- recipe, every model alike, from scratch (no pretrained weights): {recipe}",
        "- models: torchvision's FeaturePyramidNetwork and Faster R-CNN over each backbone's four levels (strides "
        "4-32). resnet18/50 are timm's ResNets, the same architecture as torchvision's (BatchNorm trained, not "
        "frozen: no pretrained statistics to keep); a T2T-ViT under T2T's own pyramid (the soft splits' token "
        "images at strides 4 and 8, the last block at 16, its max-pool at 32) or ViTDet's simple one (all four from "
        "the last block)",
        "- mAP, AP50: COCO box mAP@[.5:.95] and AP@.5 (pycocotools, %) of the last epoch's weights on the held-out "
        "canvases; mean ± sample std over the seeds where a row has several",
        "- train / infer img/s: a training step (forward, backward, the run's fused AdamW at lr 0) and an inference "
        f"step (eval, no grad) of each row's trained model (its first seed's) on the same batch of "
        f"{info['speed_batch']} training canvases, each model taking "
        f"turns with the others, median of {info['speed']['repeats']} after {info['speed']['warmup']} warm-up; "
        f"{info['threads']}",
        "- peak MB: training step / inference step, each model in a fresh process (CPU: peak resident set size less "
        "the process before the model; CUDA: peak allocated)",
        "- wall: a run's training and held-out evaluation (mean over seeds)",
        "",
        "| model | pyramid | params | mAP | AP50 | train img/s | infer img/s | peak MB | epochs | wall |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in summary:
        s = r["seeds"]
        lines.append(
            f"| {r['model'].removeprefix('timm:')} | {r['pyramid']} | {r['params'] / 1e6:.1f} M "
            f"| {spread([x['map'] for x in s])} | {spread([x['map50'] for x in s])} "
            f"| {r['train_img_per_s']:.1f} | {r['infer_img_per_s']:.1f} "
            f"| {r['peak_mib']['train']:.0f} / {r['peak_mib']['infer']:.0f} | {s[0]['epochs']} "
            f"| {duration(statistics.mean(x['wall_s'] for x in s))} |"
        )
    lines += ["", f"## Which pyramid: {info['compared'] or '-'}, T2T's own against ViTDet's simple one", ""]
    if per_seed:
        lines += [
            "| seed | t2t mAP | simple mAP | t2t - simple | t2t AP50 | simple AP50 |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for s in per_seed:
            t2t, simple = s["t2t"], s["simple"]
            lines.append(
                f"| {s['seed']} | {t2t['map']:.1f} | {simple['map']:.1f} | {t2t['map'] - simple['map']:+.1f} "
                f"| {t2t['map50']:.1f} | {simple['map50']:.1f} |"
            )
        column = {(p, m): [s[p][m] for s in per_seed] for p in PYRAMIDS for m in ("map", "map50")}
        diff = [a - b for a, b in zip(column["t2t", "map"], column["simple", "map"])]
        cells = [column["t2t", "map"], column["simple", "map"], diff, column["t2t", "map50"], column["simple", "map50"]]
        lines.append("| mean ± std | " + " | ".join(spread(c) for c in cells) + " |")
        lines.append("")
    lines.append(pyramid_verdict(per_seed))
    folder.mkdir(parents=True, exist_ok=True)
    page = folder / "dense.md"
    page.write_text("\n".join(lines) + "\n")
    (folder / "dense.json").write_text(json.dumps(dict(info, rows=summary, pyramids=per_seed), indent=2) + "\n")
    return page


def environment(device: torch.device) -> Dict[str, Any]:
    import timm
    import torchvision

    machine = f"{device_name('cpu')}, {os.cpu_count()} cores"
    if device.type == "cuda":
        machine = f"{device_name(str(device))}; {machine}"
    return dict(
        commit=source_commit(mark_changes=True),
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        machine=machine,
        device=str(device),
        threads=f"{torch.get_num_threads()} torch threads" if device.type == "cpu" else f"on {device}",
        python=platform.python_version(),
        torch=torch.__version__,
        torchvision=torchvision.__version__,
        timm=timm.__version__,
    )


# ---------------------------------------------------------------------------------------------- main
def _ints(text: str) -> List[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "dense-benchmark", help="run directories and data")
    p.add_argument("--results", type=Path, help=f"where dense.md and .json go (default {RESULTS}; dry run: --out)")
    p.add_argument("--data", default=DATA, help=f"canvases[:N], fashion-canvases:DIR or coco:DIR (default {DATA})")
    p.add_argument("--train-subset", type=int, help="canvases: the first N training canvases (default all)")
    p.add_argument("--val-subset", type=int, help="canvases: the first N held-out canvases (default all)")
    p.add_argument("--epochs", type=int, help=f"(default {RECIPE['epochs']})")
    p.add_argument("--batch-size", type=int, help=f"(default {RECIPE['batch_size']}; the lr scales with it)")
    p.add_argument("--lr", type=float, help=f"at batch {RECIPE['lr_base_batch']} (default {RECIPE['lr']})")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated; timm:NAME for a CNN")
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="the pyramid comparison's seeds")
    p.add_argument("--other-seeds", default=",".join(map(str, OTHER_SEEDS)), help="the other rows' seeds")
    p.add_argument("--device", help="auto (default: a GPU where there is one), cpu, cuda")
    p.add_argument("--dry-run", action="store_true", help="tiny sizes, 1 epoch, 2 seeds: checks the script")
    return p.parse_args(argv)


def benchmark(args: argparse.Namespace, command: str) -> Path:
    """Train (or read back) every run, time and measure each row, write the results; the page's path."""
    recipe = dict(RECIPE, **(DRY_RECIPE if args.dry_run else {}))
    given = {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "device")}
    recipe.update({k: v for k, v in given.items() if v is not None})
    seeds = _ints(args.seeds)[:2] if args.dry_run else _ints(args.seeds)
    rows = plan_rows([m.strip() for m in args.models.split(",") if m.strip()], seeds, _ints(args.other_seeds))
    device = pick_device(recipe["device"])
    spec, described = data_spec(args.data, args.train_subset, args.val_subset, args.out, args.dry_run)
    cfgs = {
        (r.label, seed): run_config(recipe, r, seed, spec, args.out, args.dry_run) for r in rows for seed in r.seeds
    }

    runs = {}
    for seed in sorted({s for row in rows for s in row.seeds}):  # seed 0 of every row first: a table early
        for row in rows:
            if seed in row.seeds:
                runs[(row.label, seed)] = train_or_read(cfgs[(row.label, seed)])
    summary = summarize(rows, runs)

    first = {row.label: cfgs[(row.label, row.seeds[0])] for row in rows}
    speed = DRY_SPEED if args.dry_run else SPEED
    speeds = measure_speed(rows, first, spec, device, **speed)
    workers = min(len(rows), os.cpu_count() or 1)  # each in a process of its own: its peak is its own
    say(f"peak memory of each model in a fresh process, {workers} at a time")
    jobs = [(str(RunDir.of(first[row.label]).last), spec, recipe["batch_size"], str(device)) for row in rows]
    for row, entry, peak in zip(rows, summary, measure_memory(jobs, workers)):
        entry.update(speeds[row.label], peak_mib=peak)

    compared = next((r.model for r in rows if r.pyramid == PYRAMIDS[1]), None)
    by_label = {entry["label"]: entry for entry in summary}
    pair = [by_label[Row(compared, p, ()).label]["seeds"] for p in PYRAMIDS] if compared else [[], []]
    per_seed = [dict(seed=a["seed"], t2t=a, simple=b) for a, b in zip(*pair)]
    info = dict(
        environment(device),
        command=command,
        dry=args.dry_run,
        data=described,
        recipe=recipe,
        models=[r.model for r in rows],
        compared=compared,
        speed=speed,
        speed_batch=recipe["batch_size"],
        runs_wall_s=sum(s["wall_s"] for e in summary for s in e["seeds"]),
        wall_s=time.monotonic() - STARTED,
    )
    return write_results(args.results or (args.out if args.dry_run else RESULTS), summary, per_seed, info)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    command = "python benchmarks/dense.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    try:
        page = benchmark(args, command)
    except InputError as e:
        sys.exit(f"benchmarks/dense.py: error: {e}")
    print(page.read_text())


if __name__ == "__main__":
    main()
