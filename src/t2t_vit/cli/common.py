"""Arguments several commands share, and argument types that refuse nonsense with argparse's own usage error."""

import argparse
from typing import Union

RUNTIMES = ("torch", "onnxruntime", "openvino")  # deploy.runtimes.RUNTIMES, named here: --help loads no torch


def positive_int(text: str) -> int:
    """An integer >= 1 (batch sizes, image sizes, counts)."""
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """An integer >= 0 (worker processes, warm-up steps: 0 means none)."""
    return _int_at_least(text, 0, "an integer >= 0")


def workers_arg(text: str) -> Union[int, str]:
    """auto (the cores this process may use), or a number of loader processes."""
    return text if text == "auto" else _int_at_least(text, 0, "auto or an integer >= 0")


def _int_at_least(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"{value} is not {what}")
    return value


def precision_arg(p: argparse.ArgumentParser) -> None:
    """--precision, as every command that runs a model takes it (train: the amp and amp_dtype keys)."""
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default="auto",
        help="autocast dtype; auto: as training evaluates (bf16 on CUDA, fp32 on the CPU)",
    )


def checkpoint_args(p: argparse.ArgumentParser) -> None:
    """--checkpoint (required) and --model, as every command that reads one checkpoint takes them."""
    p.add_argument(
        "--checkpoint",
        required=True,
        help="our checkpoint, an authors' release file, a folder `t2t-vit convert` wrote, or hf-hub:USER/REPO",
    )
    p.add_argument("--model", help="model name or release tag (the authors' files whose name does not say it)")


def runtime_args(p: argparse.ArgumentParser) -> None:
    """--runtime, --threads, --int8: what runs the model on the CPU."""
    p.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default=None,
        help="torch: the PyTorch model; onnxruntime, openvino: its ONNX export, made once and cached "
        "beside the checkpoint (pip install 't2t-vit[deploy]'); default: onnxruntime for an .onnx file, else torch",
    )
    p.add_argument("--threads", type=positive_int, help="CPU threads (default: the runtime's own choice)")
    p.add_argument(
        "--int8",
        action="store_true",
        help="int8 weights (onnxruntime: dynamic quantization; openvino: NNCF weight compression)",
    )


def default_runtime(args: argparse.Namespace) -> None:
    """--runtime where it was not given: onnxruntime for an .onnx file (which torch cannot run), else torch."""
    if args.runtime is None:
        onnx = str(args.checkpoint or "").lower().endswith(".onnx")
        args.runtime = "onnxruntime" if onnx else "torch"
