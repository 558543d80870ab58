"""`t2t-vit train`, `finetune`, `eval`, `demo`: runs over a resolved config, and held-out evaluation."""

import argparse
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any, List

from ..config import (
    ConfigError,
    data_tag,
    describe_keys,
    describe_sources,
    parse_overrides,
    resolve_config,
    value_sources,
)
from ..config_keys import TASKS
from ..errors import InputError
from .common import checkpoint_args, default_runtime, non_negative_int, positive_int, precision_arg, runtime_args

FINETUNE_CONFIG = "finetune_cifar"
HEADLINES = (("val_top1", "top-1"), ("val_map", "mAP"), ("val_miou", "mIoU"))  # a run's main held-out number


def _keys(config: Any = None) -> str:
    """The --help epilog: the config keys with the defaults a command uses (its --config's where it has one)."""
    where = f"--config {config}'s values over the defaults" if config else "their defaults"
    return (
        "config keys (--key value, dashes or underscores; values are YAML), with "
        f"{where}. A mapping (--model-kwargs, --dense-kwargs) merges into the config's key by key ({{key: null}} "
        "removes one), except --model-kwargs with another --model, which replaces it.\n"
        + describe_keys(resolve_config(config) if config else None)
    )


def register(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (the paper's recipe by default)",
        description="Train with the defaults < --config YAML < --key value overrides, e.g. --data digits --epochs 30 "
        "--batch-size 64 --model-kwargs '{embed_dim: 128}'. Many processes: torchrun --nproc_per_node=8 -m t2t_vit "
        "train ...",
        epilog=_keys(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="YAML file, or a config shipped with the package (e.g. t2t_vit_14, digits)")
    _run_args(p)

    f = sub.add_parser(
        "finetune",
        help="fine-tune our or the authors' weights on a dataset (new head, new resolution, backbone lr ratio)",
        description="Fine-tune with the defaults < --config (default: the authors' CIFAR recipe) < --key value "
        "overrides, e.g. --data cifar10:DIR --img-size 384 --backbone-lr-ratio 0.1 --layer-decay 0.75 "
        "--freeze-backbone true.",
        epilog=_keys(FINETUNE_CONFIG),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    f.add_argument("--checkpoint", required=True, help="weights to start from: ours, or an authors' file")
    f.add_argument("--model", help="model name or release tag (the authors' files whose name does not say it)")
    f.add_argument(
        "--config", default=FINETUNE_CONFIG, help=f"YAML file or shipped config (default: {FINETUNE_CONFIG})"
    )
    _run_args(f)

    e = sub.add_parser(
        "eval",
        help="evaluate a checkpoint on a dataset's held-out split: top-1, top-5, loss, img/s (detection: mAP; "
        "segmentation: mIoU)",
    )
    checkpoint_args(e)
    e.add_argument(
        "--data",
        help="dataset spec; its held-out split is used (default: the data the checkpoint's run trained on, which the "
        "checkpoints a training run saves record)",
    )
    e.add_argument("--task", choices=TASKS, help="the checkpoint's task, checked against the one it records")
    e.add_argument("--batch-size", type=positive_int, default=128)
    e.add_argument("--workers", type=non_negative_int, default=4)
    e.add_argument("--device", default="auto")
    precision_arg(e)
    runtime_args(e)  # classification on the CPU: the checkpoint's ONNX export, as predict and benchmark run it
    e.add_argument("--no-ema", action="store_true", help="the raw weights, not the EMA ones")
    e.add_argument("--download", action="store_true", help="fetch the dataset where the source can (CIFAR)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=_eval)


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", help="'auto' (continue the run directory's last checkpoint) or a checkpoint path")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (they show only on a terminal)")
    p.set_defaults(func=_train, takes_overrides=True)


def _train(args: argparse.Namespace, overrides: List[str]) -> int:
    from ..device import launched_rank
    from ..training.run import train

    values = parse_overrides(overrides)
    cfg, sources = resolve_config(args.config, values), value_sources(args.config, values)
    if args.command == "finetune":
        cfg["init_checkpoint"], cfg["model"] = args.checkpoint, args.model
        sources.update(init_checkpoint="--checkpoint", model="--model" if args.model else "the checkpoint")
        if "name" not in values:  # named for where it starts and the data it learns
            cfg["name"] = f"{_checkpoint_stem(args.checkpoint)}-ft-{data_tag(cfg['data'])}"
    try:
        result = train(cfg, resume=args.resume, progress=not args.no_progress)
    except ConfigError as e:  # say where the values it names came from
        raise ConfigError(f"{e} ({describe_sources(e.keys, cfg, sources)})", e.keys) from None
    if launched_rank() != 0:
        return 128 + result["stopped"] if result.get("stopped") else 0
    if result.get("stopped"):  # a signal: the run is not finished, and says so to the shell and the scheduler
        print(
            f"t2t-vit {args.command}: stopped at {result['at']} by {signal.Signals(result['stopped']).name}; "
            f"continue with: {_continue_command(args.argv)}",
            file=sys.stderr,
        )
        return 128 + result["stopped"]
    held_out = [f"{name}: {result[key]:.2f}%" for key, name in HEADLINES if result.get(key) is not None]
    if held_out:
        print(f"held-out {held_out[0]}  (run directory: {result['run_dir']})")
    return 0


def _continue_command(argv: List[str]) -> str:
    """The command that continues a stopped run: this one with --resume auto (torchrun's own line under torchrun)."""
    kept, skip = [], False
    for arg in argv:
        if skip or arg.startswith("--resume="):
            skip = False
            continue
        skip = arg == "--resume"
        if not skip:
            kept.append(arg)
    if "TORCHELASTIC_RUN_ID" in os.environ:
        return "the same torchrun command with --resume auto"
    return shlex.join(["t2t-vit", *kept, "--resume", "auto"])


def _eval_runtime(args: argparse.Namespace) -> dict:
    """eval of a classifier's ONNX export under onnxruntime or OpenVINO, on the CPU."""
    from ..deploy.predict import checkpoint_task
    from ..deploy.runtimes import load_runner
    from ..deploy.speed import evaluate_runner
    from ..device import launched_world

    world = launched_world()
    if world > 1:  # each process would score every image: torchrun's processes add nothing
        raise InputError(
            f"--runtime {args.runtime} scores in one process, with --threads threads: run it without torchrun "
            f"(here {world} processes)"
        )
    torch_only = [f"--{k} {v}" for k, v in (("device", args.device), ("precision", args.precision)) if v != "auto"]
    if checkpoint_task(args.checkpoint, args.task) != "classification" or torch_only:
        raise InputError(
            f"--runtime {args.runtime} evaluates a classifier on the CPU in fp32"
            + (f": drop {', '.join(torch_only)}" if torch_only else ": this checkpoint holds a dense model")
        )
    runner = load_runner(args.checkpoint, args.model, args.runtime, args.threads, args.int8, not args.no_ema)
    r = evaluate_runner(runner, args.data, args.batch_size, args.workers, args.download, not args.no_progress)
    return {**r, "task": "classification", "model": f"{runner.meta['arch']} ({runner.name})"}


def _checkpoint_stem(path: str) -> str:
    """A run's name for its last/best checkpoint, else the file's name without suffixes."""
    p = Path(path)
    stem = p.name.split(".pth")[0].split(".safetensors")[0]
    return p.parent.name if stem in ("last", "best") or stem.startswith("epoch_") else stem


def _eval(args: argparse.Namespace) -> None:
    from ..device import launched_rank
    from ..training.evaluate import evaluate_checkpoint

    default_runtime(args)
    if args.data is None:
        from ..deploy.predict import recorded_data

        args.data = recorded_data(args.checkpoint)
    if args.runtime != "torch":
        r = _eval_runtime(args)
    elif args.threads is not None or args.int8:
        raise InputError("--threads and --int8 go with --runtime onnxruntime or openvino")
    else:
        r = evaluate_checkpoint(
            args.checkpoint,
            args.data,
            args.model,
            args.batch_size,
            args.workers,
            not args.no_ema,
            args.device,
            args.download,
            not args.no_progress,
            args.precision,
            args.task,
        )
    if launched_rank() != 0:  # under torchrun: the totals are every rank's; rank 0 says them
        return
    if r["task"] == "classification":
        scores = f"top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%  loss {r['loss']:.4f}"
    elif r["task"] == "segmentation":
        scores = f"mIoU {r['miou']:.2f}%  pixel acc {r['pixel_acc']:.2f}%"
    else:
        scores = f"mAP {r['map']:.2f}%  AP50 {r['map50']:.2f}%  AP75 {r['map75']:.2f}%"
        scores += f"  mask mAP {r['mask_map']:.2f}%" if "mask_map" in r else ""
    what = r["model"] if r["task"] == "classification" else f"{r['model']} {r['task']}"
    what += f" ({r['ran']})" if "ran" in r else ""  # what scored it (the runtimes name theirs in the model)
    print(
        f"{what} on {args.data} ({r['n']} images): {scores}  {r['img_per_s']:.0f} img/s"
        + (f"  skipped {r['skipped']}" if r["skipped"] else "")
    )
