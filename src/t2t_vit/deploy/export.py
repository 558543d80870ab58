"""Export a checkpoint for other runtimes: ONNX (dynamic batch), TorchScript, safetensors (with metadata)."""

import json
import os
import warnings
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import nn

from ..checkpoint import apply_umask, check_new_file, input_files, written_atomically
from ..errors import InputError
from ..factory import load_model

FORMATS = ("onnx", "torchscript", "safetensors")
FORMAT_SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt", "safetensors": ".safetensors"}
SUFFIX_FORMATS = {".onnx": "onnx", ".safetensors": "safetensors"}  # .pt is also a checkpoint's: not read as one
META_FIELDS = ("arch", "model_kwargs", "class_names", "data_config", "grid_size")  # what an export keeps
META_KEY = "t2t_vit"  # safetensors / ONNX metadata entry holding the model name, sizes, classes, preprocessing


def export_onnx(model: nn.Module, path: Path, meta: Dict[str, Any], opset: int = 17) -> None:
    """ONNX with input `images` (batch, C, H, W) and output `logits`, the batch axis dynamic.

    The tracer's warnings are not shown: the values it freezes (channels, image size, feature count) are fixed for
    an exported model, and the batch axis, the one that varies, stays dynamic (tests run batches 1 and 3)."""
    import onnx

    model = model.eval()
    x = torch.zeros(2, *meta["data_config"]["input_size"], device=next(model.parameters()).device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")  # a strided slice left as is
        torch.onnx.export(
            model,
            (x,),
            str(path),
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta)
    onnx.save(proto, str(path))


def export_torchscript(model: nn.Module, path: Path, meta: Dict[str, Any]) -> None:
    """A scripted model (fixed input size) with the metadata as an extra file `t2t_vit.json`."""
    scripted = torch.jit.script(model.eval())
    torch.jit.save(scripted, str(path), _extra_files={f"{META_KEY}.json": json.dumps(meta)})


def export_safetensors(model: nn.Module, path: Path, meta: Dict[str, Any]) -> None:
    """The weights as safetensors, the metadata as JSON in its header: `create_model(..., checkpoint_path=)` and
    `load_model(path)` read it back."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={META_KEY: json.dumps(meta)})


def check_output(out: Path, fmt: str) -> None:
    """InputError unless `out` can become a file: not a directory, under a folder that is writable (or that can be
    made: missing folders are created, where the nearest existing one is writable)."""
    suffix = FORMAT_SUFFIXES[fmt]
    if out.is_dir():
        example = str(out / f"model{suffix}")
        raise InputError(f"--output {str(out)!r} is a directory: give a file name, e.g. {example!r}")
    try:
        folder = next((p for p in out.parents if p.exists()), Path("."))
    except OSError as e:  # a folder on the way that may not be looked into
        raise InputError(f"--output {str(out)!r} cannot be written ({e.strerror or e})") from None
    if not folder.is_dir():
        raise InputError(f"--output {str(out)!r} cannot be written: {str(folder)!r} is a file, not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"--output {str(out)!r} cannot be written: {str(folder)!r} is not writable")


def output_format(out: Path, fmt: Optional[str]) -> str:
    """The format to write: `fmt`, or the one `out`'s suffix names (.onnx, .safetensors); InputError where neither
    says it, or where they disagree (an ONNX graph in x.safetensors fails later, where it is read)."""
    named = SUFFIX_FORMATS.get(out.suffix.lower())
    if fmt is not None and fmt not in FORMATS:
        raise InputError(f"--format {fmt!r} is not one of {FORMATS}")
    if fmt is None and named is None:
        raise InputError(
            f"--output {out.name!r} does not say the format: pass --format ({', '.join(FORMATS)}), or name the "
            "file .onnx or .safetensors"
        )
    if fmt is not None and named is not None and named != fmt:
        raise InputError(
            f"--output {out.name!r} names a {named} file, but --format is {fmt}: name it "
            f"{out.stem}{FORMAT_SUFFIXES[fmt]}, or pass --format {named}"
        )
    return fmt or named


def export(
    checkpoint: str,
    fmt: Optional[str],
    output: str,
    model_name: Optional[str] = None,
    use_ema: bool = True,
    force: bool = False,
) -> Path:
    """Load a checkpoint (ours, or the authors' with `model_name`) and write it in `fmt` to `output`: a file that
    exists only with `force`, and never the checkpoint itself. The file gets the user's umask. Without `fmt`, the
    output's suffix names it (.onnx, .safetensors)."""
    out = Path(output).expanduser()
    fmt = output_format(out, fmt)
    check_output(out, fmt)
    check_new_file(out, "--output", force, input_files(checkpoint))
    model, meta = load_model(checkpoint, model_name, use_ema=use_ema)
    meta = {k: meta[k] for k in META_FIELDS if k in meta}
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401
        except ImportError:
            raise InputError("ONNX export needs the onnx extra: pip install 't2t-vit[onnx]'") from None
    writer = {"onnx": export_onnx, "torchscript": export_torchscript, "safetensors": export_safetensors}[fmt]
    with written_atomically(out) as tmp:  # never a half-written file under the name asked for
        writer(model, tmp, meta)
    apply_umask(out)
    return out
