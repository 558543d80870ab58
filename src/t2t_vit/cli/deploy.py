"""`t2t-vit predict`, `export`, `benchmark`: using a trained model, and measuring one."""
import argparse
import json
from typing import Any

from ..errors import InputError
from .common import checkpoint_args, non_negative_int, positive_int, precision_arg

FORMATS = ("onnx", "torchscript", "safetensors")


def register(sub: Any) -> None:
    p = sub.add_parser("predict", help="classify image files, folders or globs with a checkpoint")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="files, folders (searched recursively) or globs")
    checkpoint_args(p)
    p.add_argument("--top-k", type=positive_int, default=5)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--device", default="cpu")
    precision_arg(p)
    p.add_argument("--json", action="store_true", help="one JSON list on stdout, for machines")
    p.set_defaults(func=_predict)

    e = sub.add_parser("export", help="export a checkpoint to ONNX, TorchScript or safetensors")
    checkpoint_args(e)
    e.add_argument("--format", required=True, choices=FORMATS)
    e.add_argument("--output", required=True, help="file to write")
    e.add_argument("--no-ema", action="store_true", help="the raw weights, not the EMA ones")
    e.set_defaults(func=_export)

    b = sub.add_parser(
        "benchmark",
        help="params, MACs, img/s and peak memory of a model (fast path, or against the authors' eager one)",
        description="Median of repeated steps after warm-up. Peak memory comes from a fresh process per model.",
    )
    b.add_argument("--model", required=True, help="a registered model name, e.g. t2t_vit_14")
    b.add_argument("--mode", choices=("infer", "train"), default="infer",
                   help="infer: forward; train: forward, backward, AdamW")  # fmt: skip
    b.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    b.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32", help="autocast dtype (fp32: none)")
    b.add_argument("--compile", action="store_true", help="torch.compile the model")
    b.add_argument("--batch-size", type=positive_int, default=16)
    b.add_argument("--img-size", type=positive_int, default=224)
    b.add_argument("--warmup", type=non_negative_int, default=2, help="untimed steps first")
    b.add_argument("--repeats", type=positive_int, default=5, help="timed steps (the median is reported)")
    b.add_argument("--attn-impl", choices=("sdpa", "eager"), default="sdpa", help="the implementation to measure")
    b.add_argument("--compare-eager", action="store_true", help="also measure attn_impl='eager'; print ratios")
    b.add_argument("--no-memory", action="store_true", help="skip the peak memory measurement")
    b.add_argument("--json", action="store_true", help="print the result as JSON")
    b.set_defaults(func=_benchmark)


def _predict(args: argparse.Namespace) -> None:
    from ..predict import predict

    results = predict(args.images, args.checkpoint, args.model, args.top_k, args.batch_size, args.device,
                      args.precision)  # fmt: skip
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            if "error" in r:
                print(f"{r['file']}: skipped, {r['error']}")
            else:
                print(f"{r['file']}: " + ", ".join(f"{t['class']} {100 * t['prob']:.1f}%" for t in r["top_k"]))
    if all("error" in r for r in results):  # some readable: exit 0, the skipped ones are listed above
        raise InputError(f"none of the {len(results)} inputs could be read: give image files (PNG, JPEG, ...)")


def _export(args: argparse.Namespace) -> None:
    from ..export import export

    out = export(args.checkpoint, args.format, args.output, args.model, not args.no_ema)
    print(f"wrote {out} ({args.format})")


def _benchmark(args: argparse.Namespace) -> None:
    from ..benchmark import BenchConfig, benchmark, format_result

    cfg = BenchConfig(
        model=args.model, mode=args.mode, device=args.device, dtype=args.dtype, compile=args.compile,
        batch_size=args.batch_size, img_size=args.img_size, warmup=args.warmup, repeats=args.repeats,
    )  # fmt: skip
    res = benchmark(cfg, compare_eager=args.compare_eager, attn_impl=args.attn_impl, memory=not args.no_memory)
    print(json.dumps(res, indent=2) if args.json else format_result(res))
