"""`t2t-vit predict`, `export`, `benchmark`: using a trained model, and measuring one."""

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List

from ..config_keys import TASKS
from ..errors import InputError
from .common import (
    checkpoint_args,
    default_runtime,
    non_negative_int,
    positive_int,
    precision_arg,
    runtime_args,
    workers_arg,
)

FORMATS = ("onnx", "torchscript", "safetensors")
TOP_K, BATCH_SIZE = 5, 32  # predict's defaults for a classifier
DRAWINGS = "predictions"  # where predict draws a dense checkpoint's predictions by default
SCORE_THRESHOLD = 0.5  # as deploy.dense_predict's; not imported, so that --help loads no torch


def register(sub: Any) -> None:
    p = sub.add_parser(
        "predict",
        help="classify image files, folders or globs with a checkpoint; or draw a dense one's boxes, masks, class map",
        description="A classification checkpoint prints each image's top-k classes. A detection, instance or "
        f"segmentation checkpoint draws its predictions on each image, written as DIR/<image stem>.png (--out, default "
        f"{DRAWINGS}/), and prints what it wrote; with --json it prints the predictions instead and draws only where "
        "--out is given: boxes [x0, y0, x1, y1] in the image's pixels, instance masks as COCO RLE ({size, counts}, "
        "as pycocotools' mask.decode reads it) with their area, a class map as each class's pixels and fraction.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="files, folders (searched recursively) or globs")
    checkpoint_args(p)
    p.add_argument("--task", choices=TASKS, help="the checkpoint's task, checked against the one it records")
    p.add_argument("--top-k", type=positive_int, help=f"classification: the classes listed (default {TOP_K})")
    p.add_argument("--batch-size", type=positive_int, help=f"classification: images a step (default {BATCH_SIZE})")
    p.add_argument(
        "--out",
        "--output",
        metavar="DIR",
        help=f"detection, instance, segmentation: the folder for the drawings (default {DRAWINGS}; with --json: none)",
    )
    p.add_argument(
        "--score-thresh",
        type=_fraction,
        metavar="S",
        help=f"detection, instance: the lowest score drawn and listed (default {SCORE_THRESHOLD})",
    )
    p.add_argument("--force", action="store_true", help="overwrite drawings that exist")
    p.add_argument("--device", default="cpu")
    precision_arg(p)
    runtime_args(p)
    p.add_argument("--json", action="store_true", help="one JSON list on stdout, for machines")
    p.set_defaults(func=_predict)

    e = sub.add_parser("export", help="export a checkpoint to ONNX, TorchScript or safetensors")
    checkpoint_args(e)
    e.add_argument("--format", choices=FORMATS, help="default: the one --output's suffix names (.onnx, .safetensors)")
    e.add_argument("--output", "--out", required=True, help="file to write")
    e.add_argument("--no-ema", action="store_true", help="the raw weights, not the EMA ones")
    e.add_argument("--force", action="store_true", help="overwrite --output if it exists (never the checkpoint)")
    e.set_defaults(func=_export)

    b = sub.add_parser(
        "benchmark",
        help="params, MACs, img/s and peak memory of a model (fast path, or against the authors' eager one)",
        description="Median of repeated steps after warm-up. Peak memory comes from a fresh process per model. "
        "With --runtime onnxruntime or openvino: CPU inference of --checkpoint, or of --model with random weights "
        "(seed 0), in img/s and ms per batch.",
    )
    b.add_argument("--model", help="a registered model name, e.g. t2t_vit_14 (with --checkpoint: as for predict)")
    b.add_argument("--checkpoint", help="--runtime onnxruntime/openvino: measure this checkpoint")
    runtime_args(b)
    b.add_argument(
        "--agreement",
        metavar="DATA",
        help="with --checkpoint: top-1 agreement with fp32 (--int8) or with torch, on DATA's validation "
        "split (a --data spec: digits, fashion-mnist:DIR, an ImageFolder root, ...)",
    )
    b.add_argument("--agreement-images", type=positive_int, metavar="N", help="a fixed random N of them")
    b.add_argument(
        "--mode", choices=("infer", "train"), default="infer", help="infer: forward; train: forward, backward, AdamW"
    )
    b.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    b.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32", help="autocast dtype (fp32: none)")
    b.add_argument("--compile", action="store_true", help="torch.compile the model")
    b.add_argument("--batch-size", type=positive_int, help="default 16; with --loader, the recipe's")
    b.add_argument("--img-size", type=positive_int, help="default 224; a checkpoint runs at its own")
    b.add_argument(
        "--loader",
        metavar="DATA",
        help="the training input path alone on DATA (a --data spec), beside the model's training step "
        "alone, both as --config's recipe runs them: which one bounds the run",
    )
    b.add_argument("--config", help="with --loader: the recipe (a config name or YAML; default: --model's own)")
    b.add_argument(
        "--workers", type=workers_arg, help="with --loader: loader processes, or auto (default: the recipe's)"
    )
    b.add_argument("--warmup", type=non_negative_int, default=2, help="untimed steps first")
    b.add_argument("--repeats", type=positive_int, default=5, help="timed steps (the median is reported)")
    b.add_argument("--attn-impl", choices=("sdpa", "eager"), default="sdpa", help="the implementation to measure")
    b.add_argument("--compare-eager", action="store_true", help="also measure attn_impl='eager'; print ratios")
    b.add_argument("--no-memory", action="store_true", help="skip the peak memory measurement")
    b.add_argument("--json", action="store_true", help="print the result as JSON")
    b.set_defaults(func=_benchmark)


def _fraction(text: str) -> float:
    """A number in [0, 1] (a score threshold)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not in [0, 1]")
    return value


def _refuse(given: Dict[str, bool], why: str) -> None:
    """InputError naming the options given that the checkpoint's task has no use for."""
    names = [name for name, is_given in given.items() if is_given]
    if names:
        raise InputError(f"{', '.join(names)}: {why}")


def _predict(args: argparse.Namespace) -> None:
    from ..deploy.predict import checkpoint_task, predict

    default_runtime(args)
    task = checkpoint_task(args.checkpoint, args.task)
    if task != "classification":
        return _predict_dense(args, task)
    dense_only = {"--out": args.out is not None, "--score-thresh": args.score_thresh is not None, "--force": args.force}
    _refuse(dense_only, f"for a dense checkpoint; {args.checkpoint!r} holds a classification model")
    results = predict(
        args.images,
        args.checkpoint,
        args.model,
        args.top_k or TOP_K,
        args.batch_size or BATCH_SIZE,
        device=args.device,
        precision=args.precision,
        runtime=args.runtime,
        threads=args.threads,
        int8=args.int8,
    )
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            if "error" in r:
                print(f"{r['file']}: skipped, {r['error']}")
            else:
                print(f"{r['file']}: " + ", ".join(f"{_class_said(t)} {100 * t['prob']:.1f}%" for t in r["top_k"]))
    _none_read(results)


def _predict_dense(args: argparse.Namespace, task: str) -> None:
    from ..deploy.dense_predict import predict_dense

    classification_only = {
        "--top-k": args.top_k is not None,
        "--batch-size": args.batch_size is not None,
        f"--runtime {args.runtime}": args.runtime != "torch",
        "--int8": args.int8,
    }
    why = f"for a classification checkpoint; {args.checkpoint!r} holds a {task} model, run by torch an image at a time"
    _refuse(classification_only, why)
    if task == "segmentation":
        _refuse({"--score-thresh": args.score_thresh is not None}, "for detection and instance: a class map has none")
    threshold = SCORE_THRESHOLD if args.score_thresh is None else args.score_thresh
    records = predict_dense(
        args.images,
        args.checkpoint,
        args.model,
        task,
        threshold,
        args.out if args.out is not None or args.json else DRAWINGS,
        args.force,
        args.device,
        args.precision,
        args.threads,
    )
    results = []
    for r in records:
        results.append(r)
        if not args.json:
            print(f"{r['file']}: skipped, {r['error']}" if "error" in r else _dense_line(r, threshold))
    if args.json:
        print(json.dumps(results, indent=1))
    _none_read(results)


def _dense_line(r: Dict[str, Any], threshold: float, most: int = 5) -> str:
    """One image's predictions in a line: the best detections, or the classes by the share of the map they cover."""
    if "classes" in r:
        parts = [f"{c['name']} {100 * c['fraction']:.1f}%" for c in sorted(r["classes"], key=lambda c: -c["pixels"])]
        what = ", ".join(parts[:most]) + (f" and {len(parts) - most} more" if len(parts) > most else "")
    elif r["detections"]:
        parts = [f"{d['name']} {d['score']:.2f}" for d in r["detections"]]
        n = len(parts)
        what = (
            f"{n} object{'s' if n > 1 else ''}: "
            + ", ".join(parts[:most])
            + (f" and {n - most} more" if n > most else "")
        )
    else:
        what = f"no object scoring {threshold} or more"
    return f"{r['file']}: {what} -> wrote {r['drawing']}"


def _none_read(results: List[Dict[str, Any]]) -> None:
    if all("error" in r for r in results):  # some readable: exit 0, the skipped ones are listed above
        raise InputError(f"none of the {len(results)} inputs could be read: give image files (PNG, JPEG, ...)")


def _class_said(ranked: Dict[str, Any]) -> str:
    """A predicted class as the console shows it: an ImageNet id with what it is ('n01440764 (tench)')."""
    description = ranked.get("description")
    return f"{ranked['class']} ({description.split(',')[0]})" if description else str(ranked["class"])


def _export(args: argparse.Namespace) -> None:
    from ..deploy.export import export, output_format

    fmt = output_format(Path(args.output).expanduser(), args.format)
    out = export(args.checkpoint, fmt, args.output, args.model, not args.no_ema, args.force)
    print(f"wrote {out} ({fmt})")


def _benchmark(args: argparse.Namespace) -> None:
    from ..deploy.benchmark import BenchConfig, format_result
    from ..deploy.runtimes import check_runtime
    from ..deploy.speed import benchmark_runtime, benchmark_torch, format_runtime_result

    default_runtime(args)
    check_runtime(args.runtime, args.int8)
    if args.loader is not None:
        return _benchmark_loader(args)
    args.batch_size = args.batch_size or 16
    if args.runtime != "torch":
        torch_only = {
            "--mode train": args.mode != "infer",
            f"--dtype {args.dtype}": args.dtype != "fp32",
            "--compile": args.compile,
            f"--device {args.device}": args.device != "cpu",
            "--attn-impl eager": args.attn_impl != "sdpa",
            "--compare-eager": args.compare_eager,
        }
        if any(torch_only.values()):
            given = ", ".join(k for k, v in torch_only.items() if v)
            raise InputError(f"{given}: for --runtime torch only; {args.runtime} measures fp32 inference on the CPU")
        res = benchmark_runtime(
            args.runtime,
            args.model,
            args.checkpoint,
            args.img_size,
            args.threads,
            args.int8,
            args.batch_size,
            args.warmup,
            args.repeats,
            args.agreement,
            args.agreement_images,
        )
        print(json.dumps(res, indent=2) if args.json else format_runtime_result(res))
        return
    if args.checkpoint is not None or args.agreement is not None:
        raise InputError(
            "--checkpoint and --agreement go with --runtime onnxruntime or openvino: torch measures "
            "--model with random weights"
        )
    if args.model is None:
        raise InputError("name the model to measure: --model NAME, e.g. --model t2t_vit_14")
    cfg = BenchConfig(
        model=args.model,
        mode=args.mode,
        device=args.device,
        dtype=args.dtype,
        compile=args.compile,
        batch_size=args.batch_size,
        img_size=args.img_size or 224,
        warmup=args.warmup,
        repeats=args.repeats,
    )
    res = benchmark_torch(
        cfg, args.threads, compare_eager=args.compare_eager, attn_impl=args.attn_impl, memory=not args.no_memory
    )
    print(json.dumps(res, indent=2) if args.json else format_result(res))


def _benchmark_loader(args: argparse.Namespace) -> None:
    from ..config import resolve_config
    from ..deploy.input_speed import format_input_and_model, input_and_model

    recipe = args.config or args.model
    if recipe is None:
        raise InputError(
            "--loader measures a recipe's input path: name it with --config NAME (e.g. digits, "
            "t2t_vit_14) or --model NAME"
        )
    overrides = dict(data=args.loader, device=args.device)
    for key, value in (("batch_size", args.batch_size), ("workers", args.workers), ("img_size", args.img_size)):
        if value is not None:
            overrides[key] = value
    cfg = resolve_config(recipe, overrides)
    res = input_and_model(cfg, batches=max(args.repeats * 6, 10), repeats=args.repeats)
    print(json.dumps(res, indent=2) if args.json else format_input_and_model(res))
