"""CPU deployment runtimes: a checkpoint run by PyTorch, or exported once to ONNX and run by ONNX Runtime or
OpenVINO, in fp32 or with int8 weights. The export is cached beside the checkpoint (else in the user cache) and made
again when what it was made from changes."""

import contextlib
import dataclasses
import functools
import hashlib
import importlib
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .. import __version__, hub
from ..checkpoint import written_atomically
from ..errors import InputError, missing_file
from ..factory import load_model
from .export import META_FIELDS, META_KEY, export_onnx

_logger = logging.getLogger(__name__)

RUNTIMES = ("torch", "onnxruntime", "openvino")
DEPLOY_EXTRA = "pip install 't2t-vit[deploy]'"
SOURCE_KEY = "source"  # the entry of an export's metadata that says what it was made from
GRAPH = 2  # the ONNX graph's layout: 2 has the soft splits as slices; a cache of another layout is made again
EXPORTER = f"t2t_vit {__version__} (graph {GRAPH}), torch {torch.__version__}"
# what the int8 file says it was made with
ORT_INT8 = (
    "onnxruntime quant_pre_process, plain weights, quantize_dynamic: MatMul weights QInt8, per channel, reduced range"
)


@dataclasses.dataclass
class Runner:
    """A model ready to run on the CPU: `runner(images)` maps float32 images (B, C, H, W) to logits (B, classes)."""

    runtime: str
    threads: Optional[int]  # None: the library's default
    int8: bool
    meta: Dict[str, Any]  # arch, class_names, data_config, ... as `load_model` returns them
    forward: Callable[[np.ndarray], np.ndarray]
    engine: Any  # the torch module, onnxruntime InferenceSession or OpenVINO CompiledModel

    @property
    def name(self) -> str:
        return f"{self.runtime} {'int8' if self.int8 else 'fp32'}"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.forward(np.ascontiguousarray(images, dtype=np.float32))


def check_runtime(runtime: str, int8: bool = False) -> None:
    """InputError unless `runtime` is known, its libraries import, and it can run with `int8` weights."""
    if runtime not in RUNTIMES:
        raise InputError(f"runtime {runtime!r} is not one of {RUNTIMES}")
    if runtime == "torch":
        if int8:
            raise InputError("--int8 runs an exported model: use --runtime onnxruntime or --runtime openvino")
        return
    _require(runtime, f"--runtime {runtime}")
    _require("onnx", f"--runtime {runtime} (the ONNX export)")
    if runtime == "openvino" and int8:
        _require("nncf", "--int8 with --runtime openvino (NNCF compresses the weights)")


def _require(module: str, what: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError:
        raise InputError(f"{what} needs {module}, which is not installed: {DEPLOY_EXTRA}") from None


def is_onnx(checkpoint: Any) -> bool:
    """True for a path that names an ONNX file (`t2t-vit export --format onnx` writes them)."""
    return str(checkpoint).lower().endswith(".onnx")


def refuse_onnx(checkpoint: Any, what: str = "--runtime torch") -> None:
    """InputError if `checkpoint` is an ONNX file, which `what` (a PyTorch path) cannot run."""
    if is_onnx(checkpoint):
        raise InputError(
            f"{str(checkpoint)!r} is an ONNX file, which {what} cannot run: use --runtime onnxruntime or "
            "--runtime openvino, or the PyTorch checkpoint it was exported from"
        )


def onnx_file_meta(path: Path) -> Dict[str, Any]:
    """The metadata (arch, class names, preprocessing) `t2t-vit export` wrote into the ONNX file `path`, with the
    file's size and time as its source (what an int8 copy is keyed by); InputError if it has none."""
    import onnx

    if not path.is_file():
        raise missing_file("checkpoint", path)
    try:
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception as e:
        raise InputError(f"{str(path)!r} is not a readable ONNX file ({hub.one_line(e)})") from None
    try:
        meta = json.loads(props[META_KEY])
        meta["data_config"]["input_size"]
    except (KeyError, TypeError, ValueError):
        raise InputError(
            f"{str(path)!r} holds no t2t-vit metadata (class names, preprocessing): export it with "
            "`t2t-vit export --format onnx`, or pass the PyTorch checkpoint"
        ) from None
    stat = path.stat()
    meta[SOURCE_KEY] = dict(onnx=str(path.resolve()), size=stat.st_size, mtime_ns=stat.st_mtime_ns, exporter=EXPORTER)
    return meta


# --- the ONNX cache


def user_cache_dir() -> Path:
    """Where exports go when the checkpoint's folder is read-only, and those of random-weight models."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "t2t_vit" / "onnx"


def checkpoint_cache_paths(checkpoint: Path) -> List[Path]:
    """Where the export of `checkpoint` may be cached, in order: beside it (`last.pth.tar` -> `last.pth.tar.onnx`),
    then the user cache (named after it and a hash of its absolute path)."""
    key = hashlib.sha256(str(checkpoint.resolve()).encode()).hexdigest()[:12]
    return [checkpoint.with_name(checkpoint.name + ".onnx"), user_cache_dir() / f"{checkpoint.name}-{key}.onnx"]


def _int8_path(path: Path) -> Path:
    return path.with_suffix(".int8.onnx")  # last.pth.tar.onnx -> last.pth.tar.int8.onnx


def _stored_meta(path: Path) -> Optional[Dict[str, Any]]:
    """The metadata an export wrote into `path`; None if there is no file there or it is not a readable export."""
    import onnx

    if not path.is_file():
        return None
    try:
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        return json.loads(props[META_KEY])
    except Exception as e:  # damaged, foreign or from an older exporter: it is made again
        _logger.warning("%s is not a readable export (%s): making it again", path, e)
        return None


def _set_meta(path: Path, meta: Dict[str, Any]) -> None:
    import onnx

    proto = onnx.load(str(path))
    kept = [p for p in proto.metadata_props if p.key != META_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta)
    onnx.save(proto, str(path))


@contextlib.contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """The named loggers ("": the root) log errors only within the block: libraries' chatter kept off the console."""
    saved = [(logging.getLogger(name), logging.getLogger(name).level) for name in loggers]
    for logger, _ in saved:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


def _writable(candidates: Sequence[Path]) -> Path:
    """The first candidate whose folder exists (or can be made) and is writable."""
    for i, path in enumerate(candidates):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(path.parent, os.W_OK | os.X_OK):
            if i:
                _logger.info("%s is not writable: caching the ONNX model in %s", candidates[0].parent, path.parent)
            return path
    folders = " nor ".join(repr(str(p.parent)) for p in candidates)
    raise InputError(f"no folder to cache the ONNX model in: neither {folders} is writable (set XDG_CACHE_HOME)")


def cached_onnx(
    candidates: Sequence[Path], source: Dict[str, Any], make: Callable[[Path], Dict[str, Any]]
) -> Tuple[Path, Dict[str, Any]]:
    """(path, metadata) of the first candidate made from `source`, else of a new file: `make(tmp)` writes it (with
    its metadata, `source` under SOURCE_KEY, which it returns) and it is renamed to the first writable candidate."""
    for path in candidates:
        meta = _stored_meta(path)
        if meta is not None and meta.get(SOURCE_KEY) == source:
            _logger.debug("reusing %s", path)
            return path, meta
        if meta is not None:
            _logger.info("%s was made from another checkpoint or exporter: making it again", path)
    path = _writable(candidates)
    with written_atomically(path) as tmp:
        meta = make(tmp)
    _logger.info("wrote %s, reused until what it was made from changes", path)
    return path, meta


def _exporter(
    build: Callable[[], Tuple[nn.Module, Dict[str, Any]]], source: Dict[str, Any]
) -> Callable[[Path], Dict[str, Any]]:
    """A `make` for `cached_onnx`: exports the model `build` returns, `source` in its metadata."""

    def make(tmp: Path) -> Dict[str, Any]:
        model, meta = build()
        meta = json.loads(json.dumps({**{k: meta[k] for k in META_FIELDS if k in meta}, SOURCE_KEY: source}))
        _logger.info("exporting %s to ONNX", meta["arch"])
        with warnings.catch_warnings():  # shapes read as Python numbers: the image size, fixed per export
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            export_onnx(model, tmp, meta)
        return meta

    return make


def _weights_hash(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# --- runners


def load_runner(
    checkpoint: str,
    model_name: Optional[str] = None,
    runtime: str = "torch",
    threads: Optional[int] = None,
    int8: bool = False,
    use_ema: bool = True,
) -> Runner:
    """A checkpoint (ours, or the authors' with `model_name`) under `runtime` with `threads` (None: the library's
    default); onnxruntime and openvino run its cached ONNX export, with int8 weights if `int8`. An ONNX file that
    `t2t-vit export` wrote runs as it is, its metadata giving the class names and preprocessing."""
    check_runtime(runtime, int8)
    path = Path(checkpoint).expanduser()
    if is_onnx(path):
        if runtime == "torch":
            refuse_onnx(checkpoint)
        return onnx_runner(path, onnx_file_meta(path), runtime, threads, int8)
    if runtime == "torch":
        model, meta = load_model(path, model_name, use_ema=use_ema)
        return _torch_runner(model, meta, threads)
    build = functools.partial(load_model, path, model_name, use_ema=use_ema)  # read only when not cached
    in_hf_cache = str(checkpoint).startswith(hub.HUB_PREFIX)
    if hub.is_hub_source(path):  # a hub folder or an hf-hub: name: its weight file keys the cache
        path = hub.weights_in(hub.resolve(path))
    candidates = checkpoint_cache_paths(path)[1:] if in_hf_cache else checkpoint_cache_paths(path)  # user cache
    if not path.is_file():
        raise missing_file("checkpoint", path)
    if not os.access(path, os.R_OK):
        raise InputError(f"checkpoint {str(path)!r} cannot be read (permission denied)")
    stat = path.stat()
    source = dict(size=stat.st_size, mtime_ns=stat.st_mtime_ns, ema=use_ema, model=model_name, exporter=EXPORTER)
    onnx_path, meta = cached_onnx(candidates, source, _exporter(build, source))
    return onnx_runner(onnx_path, meta, runtime, threads, int8)


def model_runner(
    model: nn.Module, meta: Dict[str, Any], runtime: str, threads: Optional[int] = None, int8: bool = False
) -> Runner:
    """A model in memory (random weights, as the benchmarks use) under `runtime`. Its export is cached in the user
    cache dir under its name and image size, made again when the weights' hash differs."""
    check_runtime(runtime, int8)
    if runtime == "torch":
        return _torch_runner(model, meta, threads)
    img_size = meta["data_config"]["input_size"][-1]
    source = dict(model=meta["arch"], img_size=img_size, weights=_weights_hash(model), exporter=EXPORTER)
    path = user_cache_dir() / f"{meta['arch']}_{img_size}px.onnx"
    onnx_path, stored = cached_onnx([path], source, _exporter(lambda: (model, meta), source))
    return onnx_runner(onnx_path, stored, runtime, threads, int8)


def onnx_runner(
    path: Path, meta: Dict[str, Any], runtime: str, threads: Optional[int] = None, int8: bool = False
) -> Runner:
    """An exported model (`path`, with its metadata `meta`) under onnxruntime or openvino."""
    check_runtime(runtime, int8)
    if runtime == "onnxruntime":
        if int8:
            path, meta = _ort_int8(path, meta)
        return _ort_runner(path, meta, threads, int8)
    if runtime == "openvino":
        return _openvino_runner(path, meta, threads, int8)
    raise InputError(f"runtime {runtime!r} runs no ONNX file: use onnxruntime or openvino")


def _torch_runner(model: nn.Module, meta: Dict[str, Any], threads: Optional[int]) -> Runner:
    if threads is not None:
        torch.set_num_threads(threads)
    model = model.eval()

    def forward(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(images)).float().numpy()

    return Runner("torch", threads, False, meta, forward, model)


def _ort_int8(fp32: Path, meta: Dict[str, Any]) -> Tuple[Path, Dict[str, Any]]:
    """Dynamic quantization of `fp32`, cached beside it: int8 weights for every MatMul with a constant weight (a
    scale per output channel), its input quantized to uint8 per call. Weights use 7 of the 8 bits (reduce_range):
    x86 CPUs without VNNI (AVX2, AVX-512) sum uint8 x int8 products in 16 bits, which full-range weights can
    overflow (onnxruntime's quantization guide); on a digits model, twice the logit error without it."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .onnx_graph import plain_weights

    source = {**meta[SOURCE_KEY], "int8": ORT_INT8}

    def make(tmp: Path) -> Dict[str, Any]:
        _logger.info("quantizing %s to int8 weights", fp32)
        folded = tmp.with_name(tmp.name + ".folded")
        try:
            with _quiet(""):  # onnxruntime logs a line per tensor to the root logger
                # constants folded first: weights computed from weights (the T2T layers' folded LayerNorm) become
                # one weight, quantized once, with no fp32 copy left beside it
                quant_pre_process(str(fp32), str(folded), skip_symbolic_shape=True)
                graph = onnx.load(str(folded))
                plain_weights(graph)  # what onnxruntime before 1.32 quantizes wrongly (onnx_graph.py)
                onnx.save(graph, str(folded))
                quantize_dynamic(
                    folded,
                    tmp,
                    op_types_to_quantize=["MatMul"],
                    per_channel=True,
                    reduce_range=True,
                    weight_type=QuantType.QInt8,
                )
        finally:
            folded.unlink(missing_ok=True)
        meta8 = {**meta, SOURCE_KEY: source}
        _set_meta(tmp, meta8)
        return meta8

    candidates = list(dict.fromkeys([_int8_path(fp32), user_cache_dir() / _int8_path(fp32).name]))
    return cached_onnx(candidates, source, make)


def _ort_runner(path: Path, meta: Dict[str, Any], threads: Optional[int], int8: bool) -> Runner:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0  # 0: onnxruntime's default, one per physical core
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def forward(images: np.ndarray) -> np.ndarray:
        return session.run(["logits"], {"images": images})[0]

    return Runner("onnxruntime", threads, int8, meta, forward, session)


def _openvino_runner(path: Path, meta: Dict[str, Any], threads: Optional[int], int8: bool) -> Runner:
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    core = ov.Core()
    model = core.read_model(str(path))  # OpenVINO reads ONNX itself
    if int8:
        import nncf

        # nncf logs its per-layer table to stdout and draws a progress bar there (stdout is for the results), and
        # loads torch.utils.cpp_extension, which warns that there is no CUDA
        with _quiet("nncf", "torch.utils.cpp_extension"), contextlib.redirect_stdout(sys.stderr):
            model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)  # int8 weights only
    # fp32 arithmetic: CPUs with bf16 units would otherwise default to bf16
    config: Dict[str, Any] = {
        hints.inference_precision: ov.Type.f32,
        hints.performance_mode: hints.PerformanceMode.LATENCY,  # one request at a time, all threads on it
    }
    if threads is not None:
        config[props.inference_num_threads] = threads
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()

    def forward(images: np.ndarray) -> np.ndarray:
        return request.infer({0: images})[0]

    return Runner("openvino", threads, int8, meta, forward, compiled)
