"""Checkpoint files: safe reading (weights only), layout detection and extraction, atomic saving. Pure file I/O:
fitting a state dict to a model is `models.checkpoint_filter`'s.

Layouts accepted, as the authors' tools and ours write them:

    bare state dict                     tensors by name (our safetensors and exports too)
    timm CheckpointSaver (main.py)      {epoch, arch, state_dict, optimizer, version, args: Namespace, amp_scaler,
                                         state_dict_ema, metric}
    transfer_learning.py (CIFAR)        {net: DataParallel state dict ("module." keys), acc, epoch}
    ours                                {model, model_ema, optimizer, ..., meta}
    hub folder, `hf-hub:USER/REPO`      config.json beside model.safetensors or pytorch_model.bin (`hub`)
"""

import contextlib
import errno
import json
import logging
import os
import pickle
import shutil
import types
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, Optional, Union

import torch

from . import hub
from .errors import InputError, missing_file

_logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
STATE_DICT_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema", "net")
# The one class besides tensors and plain containers that a checkpoint may hold: the argparse.Namespace that
# timm's CheckpointSaver stores as `args`, read back as a plain SimpleNamespace. Anything else is refused unread.
SAFE_GLOBALS = [(types.SimpleNamespace, "argparse.Namespace")]


def read_checkpoint(path: PathLike) -> Any:
    """Read a `.pth`/`.pth.tar`/`.pt` (with `weights_only=True`) or `.safetensors` file; InputError if unreadable.
    A hub folder or an `hf-hub:USER/REPO` name reads as {"state_dict", "meta"}, the meta from its config.json.

    A pickle that would run code or build arbitrary objects is refused by `weights_only=True`, never executed.
    """
    if hub.is_hub_source(path):
        folder = hub.resolve(path)
        weights = extract_state_dict(read_checkpoint(hub.weights_in(folder)), source=f"checkpoint {str(path)!r}")
        return {"state_dict": weights, "meta": hub.meta_of(hub.read_config(folder))}
    path = Path(path)
    if not path.is_file():
        raise missing_file("checkpoint", path)
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    check_torch_file(path)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise InputError(
                f"checkpoint {str(path)!r} holds pickled objects other than tensors, plain containers and "
                "argparse.Namespace; "
                "it was refused unread (weights_only=True) because unpickling could run code. If you trust "
                "its source, re-save only its state dict: torch.save(obj['state_dict'], 'clean.pth')"
            ) from None
        raise InputError(f"checkpoint {str(path)!r} is not a PyTorch checkpoint ({e})") from None
    except Exception as e:  # a user's file can fail to parse in many ways; all mean the same to the user
        raise InputError(
            f"checkpoint {str(path)!r} could not be read: truncated, corrupt or not a checkpoint ({_gist(e)}). "
            "Download or copy it again"
        ) from None


def peek_checkpoint(path: PathLike) -> Any:
    """What `read_checkpoint` gives, its tensors mapped where torch can map the file: a tensor is read from the file
    when used (a training checkpoint's weights, not its optimizer state; none for the metadata). The mapping is
    private: writes to the tensors stay in memory. InputError naming the file if it cannot be read."""
    if not Path(path).is_file() or Path(path).suffix == ".safetensors":  # a hub source, a missing file, safetensors
        return read_checkpoint(path)
    check_torch_file(Path(path))  # e.g. a TorchScript archive, named before torch.load warns of it
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(Path(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # torch's legacy format, or not a checkpoint: the full read says why
        return read_checkpoint(path)


def _gist(error: Exception) -> str:
    """A reader's error in one line, its first sentence (torch's zip reader adds a paragraph of advice)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text.split(". ")[0].removesuffix(".")


def check_torch_file(path: Path) -> None:
    """InputError unless the file starts as `torch.save` files do: a zip archive (torch >= 1.6), a pickle (the
    legacy format) or a tar archive (the oldest one). Anything else (text, an image, random bytes) is named as such
    rather than as an unsafe pickle."""
    try:
        with open(path, "rb") as f:
            head = f.read(262)
    except OSError as e:
        raise InputError(f"checkpoint {str(path)!r} could not be read ({e.strerror or e})") from None
    if path.suffix.lower() == ".onnx":
        raise InputError(
            f"checkpoint {str(path)!r} is an ONNX export, which PyTorch cannot load: give the checkpoint it was "
            "exported from (predict, eval and benchmark run an .onnx file in onnxruntime)"
        )
    if head.startswith(b"PK\x03\x04") and _is_torchscript(path):
        raise InputError(
            f"checkpoint {str(path)!r} is a TorchScript archive (`export --format torchscript` writes one), which "
            "holds code and is not read here: give the checkpoint it was exported from, or its ONNX export with "
            "--runtime onnxruntime (torch.jit.load runs it, for a file you trust)"
        )
    if head.startswith((b"PK\x03\x04", b"\x80")) or head[257:262] == b"ustar":
        return
    what = "is empty" if not head else f"starts with {head[:16]!r}"
    hint = ", a safetensors file? name it .safetensors" if head[8:9] == b"{" else ""
    raise InputError(
        f"checkpoint {str(path)!r} is not a PyTorch checkpoint (it {what}{hint}): give a file torch.save wrote "
        "(.pth, .pth.tar, .pt) or a .safetensors file"
    )


def _is_torchscript(path: Path) -> bool:
    """Whether a zip archive is TorchScript's (code/ and constants.pkl beside the data, as torch.jit.save writes)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.split("/")[-1] == "constants.pkl" for name in archive.namelist())
    except Exception:  # a damaged directory raises what its bytes lead to (BadZipFile, UnicodeDecodeError, ...)
        return False  # torch.load names what is wrong with it


def _read_safetensors(path: Path) -> Dict[str, Any]:
    """A safetensors file as {"state_dict": tensors} plus "meta" if our export wrote it into the header."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(f"checkpoint {str(path)!r} is not a readable safetensors file ({e})") from None
    out: Dict[str, Any] = {"state_dict": state}
    if "t2t_vit" in header:
        out["meta"] = json.loads(header["t2t_vit"])
    return out


def extract_state_dict(checkpoint: Any, use_ema: bool = True, source: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """The state dict inside a checkpoint: bare, or under `state_dict(_ema)` / `model(_ema)` / `net` (EMA first if
    asked)."""
    if not isinstance(checkpoint, dict):
        raise InputError(f"{source} holds a {type(checkpoint).__name__}, not a state dict or checkpoint dict")
    plain = ("state_dict", "model", "net")
    order = ("state_dict_ema", "model_ema", *plain) if use_ema else plain
    for key in order:
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    if not checkpoint or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        keys = ", ".join(list(map(str, checkpoint))[:8])
        raise InputError(
            f"{source} has no state dict: expected tensors, or one of {STATE_DICT_KEYS} holding them; "
            f"found keys: {keys or 'none'}"
        )
    return checkpoint


def authors_arch(checkpoint: Any) -> Optional[str]:
    """The model name an authors' training checkpoint records (`arch`, e.g. "T2t_vit_14"), lower-cased, if any."""
    arch = checkpoint.get("arch") if isinstance(checkpoint, dict) else None
    return arch.lower() if isinstance(arch, str) else None


def save_checkpoint(state: Dict[str, Any], path: PathLike) -> None:
    """Write `path` atomically and durably: a temporary file beside it, flushed to disk, then renamed over it, so a
    crash leaves the old file or the new one, never half of one. On failure the temporary file is removed, `path`
    is left as it was, and an InputError says why (disk full, or the OS's reason) and where."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    writer = None
    try:
        with open(tmp, "wb") as f:
            writer = _Writer(f)
            torch.save(state, writer)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except (OSError, RuntimeError) as e:  # torch reports a failed write as its own RuntimeError
        reason = _why(writer.error if writer is not None and writer.error else e, path.parent)
        tmp.unlink(missing_ok=True)
        raise InputError(f"could not write checkpoint {str(path)!r}: {reason}") from None


@contextlib.contextmanager
def written_atomically(path: Path) -> Iterator[Path]:
    """A temporary file beside `path` that replaces `path` only once the block has written it completely: an error
    or Ctrl-C in the block leaves `path` as it was (an export half written would pass for one)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class _Writer:
    """A file's `write` that keeps the OS error it raised, which torch.save reports as "unexpected pos"."""

    def __init__(self, f: Any) -> None:
        self.f, self.error = f, None

    def write(self, data: bytes) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def link_or_copy(src: PathLike, dst: PathLike) -> None:
    """Make `dst` the file `src` is now, atomically (a hard link where the file system has them, else a copy).
    Checkpoints are only ever replaced by renames, never rewritten, so linked names stay valid."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise InputError(f"could not write checkpoint {str(dst)!r}: {_why(e, dst.parent)}") from None


def _why(error: Exception, folder: Path) -> str:
    """The reason a write failed, as a user can act on it (called before the partial file is removed)."""
    full = isinstance(error, OSError) and error.errno == errno.ENOSPC
    if full or (folder.is_dir() and shutil.disk_usage(folder).free < 2**20):
        return f"disk full (No space left on device) in {str(folder)!r}: free some space or point --output elsewhere"
    free = f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB free in {str(folder)!r}" if folder.is_dir() else ""
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return f"{reason}" + (f" ({free})" if free else "")


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (where the OS allows opening a directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def input_files(source: PathLike) -> list:
    """The local files a checkpoint source reads: the file itself, or a hub folder's config and weights."""
    text = str(source)
    if text.startswith(hub.HUB_PREFIX):
        return []
    path = hub.local_folder(text)
    if path.is_dir():
        return [path / name for name in (hub.CONFIG_FILE, *hub.WEIGHT_FILES)]
    return [path]


def check_new_file(out: PathLike, flag: str, force: bool, inputs: Iterable[PathLike] = ()) -> None:
    """InputError if writing `out` would replace one of `inputs` (even with --force), or a file that exists
    (unless `force`). `flag` names the option that gave `out`, e.g. "--output"."""
    out = Path(out).expanduser()
    if not (out.exists() or out.is_symlink()):
        return
    for src in inputs:
        src = Path(src).expanduser()
        if src.exists() and (out.resolve() == src.resolve() or os.path.samefile(out, src)):
            raise InputError(f"{flag} {str(out)!r} is the input {str(src)!r}: write the output to another file")
    if not force:
        raise InputError(f"{flag} {str(out)!r} exists: pass --force to overwrite it, or give another name")


def apply_umask(path: PathLike) -> None:
    """Give a file the mode the user's umask asks for (0o666 & ~umask), as open() would have: some writers (e.g.
    safetensors, tempfile.mkstemp) create files 0600."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)
