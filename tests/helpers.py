"""What the tests share: the tiny models and the configs that train them in seconds, run helpers, stand-ins (a pickle
that would run code, a loopback HTTP server), and the tolerances of fp32 results summed in another order.

No relative imports: a test's subprocess can import it with `sys.path.insert(0, "tests"); import helpers`.
"""

import copy
import csv
import http.server
import importlib.util
import json
import math
import os
import signal
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Dict, List, NamedTuple, Union

import torch

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(__file__).parent / "data" / "reference"
# the authors' two tiny models (64 px, 10 classes) with their checkpoints and logits, by name
REFERENCE_TINY = json.loads((REFERENCE / "tiny" / "README.json").read_text())["models"]

# ----------------------------------------------------------------------------------------------- tiny models

# A one-block T2T-ViT-7 whose soft splits make 8 x 8 tokens of a 16 px image: trains an epoch of digits in seconds.
TINY_MODEL = dict(
    embed_dim=32,
    depth=1,
    num_heads=2,
    mlp_ratio=2.0,
    token_dim=16,
    soft_splits=[[3, 1, 1], [3, 1, 1], [3, 2, 1]],
)
DIGIT_CLASSES = [str(i) for i in range(10)]
# the preprocessing a checkpoint of TINY_MODEL records (16 px, no crop)
TINY_DATA_CONFIG = dict(input_size=(3, 16, 16), interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0)
# fast stand-ins at 64 px with the real T2T module and block layout
SMALL = dict(img_size=64, depth=2)


def benchmark_script(name: str) -> ModuleType:
    """benchmarks/`name`.py loaded as a module, with benchmarks/ on the path while it imports its siblings (gpu_check
    imports gpu_speed)."""
    folder = str(ROOT / "benchmarks")
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    loaded = importlib.util.module_from_spec(spec)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(loaded)
    finally:
        sys.path.remove(folder)
    return loaded


def tiny_train_config(tmp_path: Union[str, Path], **overrides) -> dict:
    """A seconds-long run on the embedded digits: TINY_MODEL at 16 px, 2 epochs, into `tmp_path`/run."""
    from t2t_vit.config import resolve_config

    cfg = resolve_config(
        "digits",
        dict(
            model_kwargs=copy.deepcopy(TINY_MODEL),
            img_size=16,
            output=str(tmp_path),
            name="run",
            epochs=2,
            warmup_epochs=1,
            batch_size=64,
            log_interval=1000,
        ),
    )
    cfg.update(overrides)
    return cfg


def official_state_dict(official_keys: dict, name: str, seed: int = 0) -> dict:
    """A state dict in the authors' layout (their key names and shapes) with random values."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) * 0.05 for k, shape in official_keys[name]["state_dict"].items()}


class AuthorsWeights(NamedTuple):
    """Two sets of t2t_vit_7 weights in the authors' layout, images, and the logits the EMA weights give for them."""

    ema: Dict[str, torch.Tensor]
    raw: Dict[str, torch.Tensor]
    images: torch.Tensor
    logits: torch.Tensor


def logits_of(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def checkpoint_saver_layout(raw: dict, ema: dict) -> dict:
    """What timm 0.3.4's CheckpointSaver wrote for the authors' main.py: args as an argparse.Namespace, a real
    AdamW state, the native AMP scaler's state, EMA weights beside the raw ones."""
    import argparse

    import timm

    model = timm.create_model("t2t_vit_7")
    model.load_state_dict(raw)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.03)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # creates step, exp_avg, exp_avg_sq per parameter
    args = argparse.Namespace(
        model="T2t_vit_7",
        lr=1e-3,
        weight_decay=0.03,
        img_size=224,
        batch_size=64,
        model_ema=True,
        model_ema_decay=0.99996,
        mixup=0.8,
        aa="rand-m9-mstd0.5-inc1",
    )
    scaler = {
        "scale": 65536.0,
        "growth_factor": 2.0,
        "backoff_factor": 0.5,
        "growth_interval": 2000,
        "_growth_tracker": 417,
    }
    return {
        "epoch": 309,
        "arch": args.model,
        "state_dict": raw,
        "optimizer": optimizer.state_dict(),
        "version": 2,
        "args": args,
        "amp_scaler": scaler,
        "state_dict_ema": ema,
        "metric": 71.7,
    }


def save_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """Our layout (weights and meta) of TINY_MODEL at 16 px with the digits' 10 classes and TINY_DATA_CONFIG:
    built, not trained."""
    from t2t_vit import create_model

    kwargs = dict(TINY_MODEL, img_size=16, num_classes=len(DIGIT_CLASSES))
    torch.manual_seed(seed)
    model = create_model("t2t_vit_7", **kwargs)
    meta = dict(
        arch="t2t_vit_7", model_kwargs=kwargs, class_names=DIGIT_CLASSES, data_config=TINY_DATA_CONFIG, grid_size=None
    )
    torch.save({"model": model.state_dict(), "meta": meta}, path)
    return path


def image_folder(root: Path, classes=("cat", "dog", "owl"), per_class: int = 4, corrupt: int = 0) -> Path:
    """An ImageFolder dataset of random 20 px RGB images: train/ and val/, `per_class` images of each class, and
    `corrupt` unreadable files among the first class's training images."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = (torch.rand(20, 20, 3, generator=g) * 255).byte().numpy()
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    for i in range(corrupt):
        (root / "train" / classes[0] / f"broken{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def digit_files(folder: Path, n: int = 4) -> List[Path]:
    """The first `n` embedded digits (8 x 8 grey) as PNG files named digit_<class>_<i>.png in `folder`."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    folder.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    paths = []
    for i in range(n):
        paths.append(folder / f"digit_{digits.target[i]}_{i}.png")
        Image.fromarray(np.uint8(digits.images[i] * 255 / 16)).save(paths[-1])
    return paths


def tiny_canvases(root: Path, seed: int = 0, **overrides) -> Path:
    """8 train and 4 val digit canvases (`data.canvases`) written into `root` in well under a second: a folder that
    both coco:DIR and masks:DIR read."""
    from t2t_vit.data.canvases import CanvasConfig, write_canvases

    write_canvases(root, CanvasConfig(seed=seed, train=8, val=4, **overrides))
    return root


# A one-block T2T-ViT-7 backbone (the paper's soft splits: levels at strides 4 to 32) under a 16-wide neck and small
# heads: a dense run on `tiny_canvases` trains in about a second per task.
TINY_BACKBONE = dict(embed_dim=32, depth=1, num_heads=2, mlp_ratio=2.0, token_dim=16)
SMALL_HEADS = dict(
    detection=dict(
        fpn_channels=16,
        rpn_pre_nms_top_n_train=100,
        rpn_post_nms_top_n_train=50,
        rpn_pre_nms_top_n_test=100,
        rpn_post_nms_top_n_test=50,
        rpn_batch_size_per_image=32,
        box_batch_size_per_image=32,
    ),
    segmentation=dict(fpn_channels=16, head_channels=16),
)


def tiny_dense_config(tmp_path: Union[str, Path], task: str, canvases: Path, **overrides) -> dict:
    """A seconds-long dense run (the defaults otherwise) on `tiny_canvases` in `canvases`: TINY_BACKBONE and
    SMALL_HEADS, 2 epochs of 4 batches of 2, EMA on, segmentation on random 64 px windows (`dense_crop`, so that the
    resume tests cover its draws), into `tmp_path`/run."""
    from t2t_vit.config import resolve_config

    cfg = resolve_config(
        None,
        dict(
            task=task,
            data=f"masks:{canvases}" if task == "segmentation" else f"coco:{canvases}",
            model="t2t_vit_7",
            model_kwargs=copy.deepcopy(TINY_BACKBONE),
            img_size=64,
            dense_kwargs=copy.deepcopy(SMALL_HEADS["segmentation" if task == "segmentation" else "detection"]),
            output=str(tmp_path),
            name="run",
            epochs=2,
            warmup_epochs=1,
            cooldown_epochs=0,
            batch_size=2,
            lr=1e-3,
            lr_base_batch=2,
            model_ema_decay=0.9,
            workers=0,
            device="cpu",
            log_interval=1000,
            dense_crop=64 if task == "segmentation" else None,
        ),
    )
    cfg.update(overrides)
    return cfg


# ----------------------------------------------------------------------------------------------- runs

TIMING = ("img_per_s", "epoch_time_s", "train_s")  # the only metrics.csv columns a resumed run may differ in


def last_checkpoint(run_dir: Union[str, Path]) -> dict:
    from t2t_vit.checkpoint import read_checkpoint

    return read_checkpoint(Path(run_dir) / "last.pth.tar")


def metrics_rows(run_dir: Union[str, Path]) -> List[dict]:
    """metrics.csv as a row a dict, the timing columns left out."""
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(f)]


def assert_same_run(a: Union[str, Path], b: Union[str, Path]) -> None:
    """Weights, EMA, optimizer position and metrics.csv (timings aside) bitwise equal."""
    sa, sb = last_checkpoint(a), last_checkpoint(b)
    assert (sa["epoch"], sa["updates"]) == (sb["epoch"], sb["updates"])
    for key in ("model", "model_ema"):
        for name, value in (sa[key] or {}).items():
            assert torch.equal(value, sb[key][name]), (key, name)
    assert metrics_rows(a) == metrics_rows(b)


class Killed(BaseException):
    """What `hook_criterion`'s "kill" raises: no handler of the project's catches it, as none sees a SIGKILL."""


def hook_criterion(monkeypatch, at_call: Dict[int, Union[str, signal.Signals]]) -> None:
    """Make the training loss do something at chosen calls: {n: "nan" | "kill" | signal number}."""
    import t2t_vit.training.run as train_mod

    real = train_mod.build_criterion

    def hooked(cfg, num_classes):
        criterion, mixup = real(cfg, num_classes)
        calls = {"n": 0}

        def loss(logits, target):
            calls["n"] += 1
            value = criterion(logits, target)
            action = at_call.get(calls["n"])
            if action == "nan":
                return value * float("nan")
            if action == "kill":
                raise Killed(f"loss call {calls['n']}")
            if action is not None:
                os.kill(os.getpid(), action)
            return value

        return loss, mixup

    monkeypatch.setattr(train_mod, "build_criterion", hooked)


def subprocess_env(**extra: str) -> Dict[str, str]:
    """This environment for a child `python -m t2t_vit` or torchrun: the source tree on the path, one thread a
    process, and no rank or rendezvous variables of an enclosing run."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"), **extra)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT"):
        env.pop(key, None)
    return env


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_line_error(capsys, *needles: str) -> str:
    """The command's stderr: one line, no traceback, holding every needle."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


# ----------------------------------------------------------------------------------------------- stand-ins


class RunsCode:
    """Unpickling this would create a folder: every loader must refuse it without running it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


class LoopbackServer:
    """A loopback HTTP server: path -> (body, Content-Length to announce); counts the requests per path."""

    def __init__(self) -> None:
        self.files, self.hits = {}, {}
        files, hits = self.files, self.hits

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits[self.path] = hits.get(self.path, 0) + 1
                if self.path not in files:
                    self.send_error(404)
                    return
                body, length = files[self.path]
                self.send_response(200)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # close() waits up to one poll interval for the loop to notice
        threading.Thread(target=self.httpd.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def serve(self, path: str, body: bytes, length: int = -1) -> str:
        self.files[path] = (body, len(body) if length < 0 else length)
        return self.url + path

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# ----------------------------------------------------------------------------------------------- model contracts


def assert_checkpointing_keeps_gradients(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Gradients with `set_grad_checkpointing(True)` equal the plain ones (the model must run without dropout)."""
    model(x).sum().backward()
    plain = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    checkpointed = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(checkpointed) == len(plain)
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b)


def assert_timm_head_contract(model: torch.nn.Module, x: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """timm's features/head API on a 2-image batch: forward_features, forward_head, get/reset_classifier,
    no_weight_decay; leaves the model with an avg-pool head of no classes and returns the features."""
    C = model.num_features
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 1 + num_tokens, C)
        assert model.forward_head(feats, pre_logits=True).shape == (2, C)
        assert torch.equal(model.forward_head(feats), model(x))
        assert model.get_classifier() is model.head and model.no_weight_decay() >= {"cls_token", "pos_embed"}
        model.reset_classifier(5)
        assert model(x).shape == (2, 5)
        model.reset_classifier(0, "avg")
        assert torch.allclose(model(x), feats[:, 1:].mean(1))
    return feats


# ----------------------------------------------------------------------------------------------- tolerances
# Tolerances of fp32 results that two computations reach by summing in different orders (fused or eager kernels,
# another CPU's BLAS): derived from the reduction, not read off one run.

UNIT_ROUNDOFF = 2.0**-24  # fp32


def reordered_sum_tolerance(abs_terms_sum, n: int):
    """How far two fp32 evaluations of y = sum_i a_i b_i (n terms, a bias counting as one) may differ when they sum
    in different orders: each lies within gamma_n * sum_i |a_i b_i| of the exact sum, gamma_n = n u / (1 - n u),
    u = 2^-24 (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., eq. 3.5; it holds for any order,
    blocking or FMA), so the two lie within 2 gamma_n sum_i |a_i b_i| of each other.

    `abs_terms_sum`: sum_i |a_i b_i| for each element (a tensor or one number), e.g. the same computation on absolute
    values (|x| @ |W|^T + |b|). A whole network has no such sum: there `network_reorder_tolerance` gives one number.
    """
    nu = n * UNIT_ROUNDOFF
    assert nu < 0.5, f"a sum of {n} fp32 terms has no useful forward error bound"
    return 2 * nu / (1 - nu) * abs_terms_sum


def network_reorder_tolerance(
    model: torch.nn.Module, out: torch.Tensor, height: int, width: int = 0, batch: int = 0
) -> float:
    """`reordered_sum_tolerance` for every element of `out`, one output or gradient of a whole network on
    height x width images: the longest reduction the pass computes, at the magnitude of the largest element of `out`.

    The longest reduction: the widest fan-in of a linear map or convolution, or the longest token sequence (the
    first soft split's grid: attention sums over it); with `batch` (a backward pass of that many images) also the
    widest fan-out (input gradients sum over the outputs) and the batch's tokens (weight gradients sum over them).

    Why this number: a per-element bound would need the network run on absolute values, which LayerNorm, softmax
    and GELU do not have; so it is the bound of one reduction of the longest length K, 2 gamma_K ~ 2 K u, at the
    magnitude of the largest element. It covers the whole chain because rounding errors behave as independent and
    unbiased (Higham, 2.8): R chained reductions of K terms, each rounding off by a uniform error (std u / sqrt(3)),
    move a result by about u sqrt(R K / 3) of its magnitude, the difference of two computations by sqrt(2) that, and
    2 K u is sqrt(6 K / R) of those standard deviations: >= 5.5 for the smallest K here (256) at R = 50 (the chained
    reductions of a two-block model: LayerNorms, projections, attention's sums, MLPs, the head), 8 at K = 576, and
    7.7 at K = 1000, R = 100 (forward and backward through a 1000-class head). LayerNorm keeps each block's
    activations at the scale of its parameters, so the output's magnitude stands in for theirs. It is an estimate,
    not a proof; a wrong result passes only within 2 K u of the largest element: 0.007% at K = 576, 0.04% at 3136.
    """
    from t2t_vit.models.tokens_to_token import split_size

    k, s, p = model.soft_splits[0]
    tokens = split_size(height, k, s, p) * split_size(width or height, k, s, p)
    lengths = [tokens]
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            lengths += [m.in_features] + ([m.out_features] if batch else [])
        elif isinstance(m, torch.nn.modules.conv._ConvNd):
            taps = math.prod(m.kernel_size) // m.groups
            lengths += [m.in_channels * taps] + ([m.out_channels * taps] if batch else [])
    if batch:
        lengths.append(batch * tokens)
    return float(reordered_sum_tolerance(out.detach().abs().max().item(), max(lengths)))


def assert_close_reordered(actual: torch.Tensor, expected: torch.Tensor, bound) -> float:
    """Asserts |actual - expected| <= bound for every element (`bound`: a tensor broadcast to them, or a number, as
    `reordered_sum_tolerance` gives); on failure names the worst element: its difference, bound and their ratio.
    Returns the worst ratio |actual - expected| / bound."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    diff = (actual.detach().double() - expected.detach().double()).abs()
    bound = torch.as_tensor(bound, dtype=torch.float64).expand_as(diff)
    ratio = torch.where(diff == 0, torch.zeros_like(diff), diff / bound)  # nan (a nan difference) fails below
    worst = int(ratio.flatten().nan_to_num(math.inf).argmax())
    at = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), diff.shape))
    r = ratio.flatten()[worst].item()
    assert r <= 1, (
        f"|actual - expected| = {diff.flatten()[worst].item():.3e} at {at} is {r:.3g}x its reordered-sum bound "
        f"{bound.flatten()[worst].item():.3e}; {int((~(ratio <= 1)).sum())} of {diff.numel()} elements exceed theirs"
    )
    return r
