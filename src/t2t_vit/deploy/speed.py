"""How fast a deployment runtime runs a model (img/s, latency) and how often two runtimes agree on the top-1
class; PyTorch's own speed through the model step benchmark, with threads and latency beside it."""

import os
import statistics
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..factory import create_model
from .benchmark import BenchConfig, benchmark, device_name, time_steps
from .runtimes import Runner, check_runtime, load_runner, model_runner, refuse_onnx


def random_model(
    model_name: str, img_size: int = 224, seed: int = 0, attn_impl: str = "sdpa"
) -> Tuple[nn.Module, Dict[str, Any]]:
    """A registered model with random weights drawn after `torch.manual_seed(seed)`, in eval mode, and its metadata
    as `load_model` returns it (data_config from the model's default preprocessing)."""
    torch.manual_seed(seed)
    model = create_model(model_name, attn_impl=attn_impl, img_size=img_size).eval()
    cfg = model.pretrained_cfg
    data_config = {k: cfg[k] for k in ("interpolation", "mean", "std", "crop_pct")}
    data_config["input_size"] = (model.in_chans, img_size, img_size)
    meta = dict(arch=model_name, model_kwargs=dict(img_size=img_size), class_names=None, data_config=data_config)
    return model, meta


def time_runner(runner: Runner, batch_size: int, warmup: int = 2, repeats: int = 5) -> Dict[str, Any]:
    """Median time of a batch of `batch_size` random images after `warmup` untimed ones: img/s, latency (ms)."""
    shape = (batch_size, *runner.meta["data_config"]["input_size"])
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    times = time_steps({runner.name: lambda: runner(x)}, "cpu", warmup, repeats)[runner.name]
    sec = statistics.median(times)
    return dict(img_per_s=batch_size / sec, latency_ms=1e3 * sec, step_ms_all=[1e3 * t for t in times])


def held_out_split(runner: Runner, data: str, download: bool = False) -> Any:
    """The held-out split of `data` (a `--data` spec) preprocessed as `predict` preprocesses for `runner`, its
    labels numbered as the model's classes where the model names them (`classes` holds them)."""
    from ..data.loader import create_transform
    from ..data.sources import align_classes, create_dataset, dataset_classes, imagenet_rows

    data_config = runner.meta["data_config"]
    dataset = create_dataset(data, "val", download=download, in_chans=data_config["input_size"][0])
    dataset.transform = create_transform({}, data_config, training=False)
    names = runner.meta.get("class_names")
    head = runner.meta.get("model_kwargs", {}).get("num_classes")
    imagenet = imagenet_rows(head, names, dataset_classes(dataset), data)
    if imagenet or names:
        align_classes(dataset, imagenet or names, data, "the model", warn=not imagenet)
    return dataset


def _checked_logits(runner: Runner, images: np.ndarray, classes: int, data: str) -> torch.Tensor:
    """`runner`'s logits for `images` as a tensor; InputError where the model's class count is not the data's."""
    logits = torch.from_numpy(runner(images))
    if logits.shape[1] != classes:
        raise InputError(
            f"the model's head has {logits.shape[1]} classes but {data} has {classes}: evaluate on the data it was "
            "trained on, or fine-tune it first (t2t-vit finetune)"
        )
    return logits


def _class_count(dataset: Any) -> int:
    from ..data.sources import dataset_classes

    return len(dataset_classes(dataset.dataset if isinstance(dataset, torch.utils.data.Subset) else dataset))


class _RunnerModule(nn.Module):
    """A runtime's model as a module, so that `training.evaluate` scores it as it scores a PyTorch model."""

    def __init__(self, runner: Runner, classes: int, data: str) -> None:
        super().__init__()
        self.runner, self.classes, self.data = runner, classes, data

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return _checked_logits(self.runner, images.numpy(), self.classes, self.data)


def evaluate_runner(
    runner: Runner, data: str, batch_size: int = 64, workers: int = 0, download: bool = False, progress: bool = False
) -> Dict[str, Any]:
    """`t2t-vit eval --runtime`: top-1, top-5 (%), cross-entropy loss and img/s of `runner` on `data`'s held-out
    split, measured by `training.evaluate` as for a PyTorch model."""
    from ..data import create_loader, workers_closed
    from ..training.evaluate import evaluate

    dataset = held_out_split(runner, data, download)
    model = _RunnerModule(runner, _class_count(dataset), data)
    loader = create_loader(dataset, batch_size, training=False, workers=workers)
    with workers_closed(loader):
        res = evaluate(model, loader, torch.device("cpu"), progress=progress)
    if not res["n"]:
        raise InputError(f"no readable images in the held-out split of {data!r}")
    return res


def top1_agreement(
    reference: Runner, other: Runner, data: str, max_images: Optional[int] = None, batch_size: int = 64
) -> Dict[str, Any]:
    """How often `other` names the same top-1 class as `reference` over the held-out split of `data` (a `--data`
    spec, e.g. "digits"), preprocessed as `predict` does, and the top-1 accuracy of each; `max_images`: a fixed
    random subset (seed 0) of that many."""
    from ..data import create_loader

    dataset = held_out_split(reference, data)
    if max_images is not None and max_images < len(dataset):
        keep = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:max_images]
        dataset = torch.utils.data.Subset(dataset, sorted(keep.tolist()))
    classes = _class_count(dataset)
    n = same = right_ref = right_other = 0
    for images, targets, _ in create_loader(dataset, batch_size, training=False, workers=0):
        if not len(targets):
            continue
        images = images.numpy()
        a = _checked_logits(reference, images, classes, data)
        top_a, top_b, y = a.argmax(1).numpy(), other(images).argmax(1), targets.numpy()
        n, same = n + len(y), same + int((top_a == top_b).sum())
        right_ref, right_other = right_ref + int((top_a == y).sum()), right_other + int((top_b == y).sum())
    if not n:
        raise InputError(f"no readable images in the validation split of {data!r}")
    return dict(
        data=data,
        n=n,
        agreement=same / n,
        reference=reference.name,
        reference_top1=right_ref / n,
        other=other.name,
        other_top1=right_other / n,
    )


def format_agreement(res: Dict[str, Any]) -> str:
    """ "int8 top-1 agreement with fp32 on DATA: 99.7% (360 images)", and each one's accuracy."""
    ref, other = res["reference"], res["other"]
    if ref.split()[0] == other.split()[0]:  # the same runtime: name the precisions only
        ref, other = ref.split()[1], other.split()[1]
    return (
        f"{other} top-1 agreement with {ref} on {res['data']}: {100 * res['agreement']:.1f}% ({res['n']} images); "
        f"top-1 accuracy {ref} {100 * res['reference_top1']:.1f}%, {other} {100 * res['other_top1']:.1f}%"
    )


def benchmark_runtime(
    runtime: str,
    model_name: Optional[str] = None,
    checkpoint: Optional[str] = None,
    img_size: Optional[int] = None,
    threads: Optional[int] = None,
    int8: bool = False,
    batch_size: int = 16,
    warmup: int = 2,
    repeats: int = 5,
    agreement: Optional[str] = None,
    agreement_images: Optional[int] = None,
) -> Dict[str, Any]:
    """Speed of `checkpoint` (or of `model_name` with random weights, seed 0, at `img_size`, 224 if None) under
    onnxruntime or openvino; with `agreement` (a `--data` spec) also its top-1 agreement with its fp32 model (int8)
    or with torch (fp32) over that data's validation split."""
    check_runtime(runtime, int8)
    if runtime == "torch":
        raise InputError("benchmark_runtime measures onnxruntime or openvino: torch runs through benchmark.benchmark")
    if checkpoint is None:
        if model_name is None:
            raise InputError("name the model to measure: --model NAME (random weights) or --checkpoint PATH")
        if agreement is not None:
            raise InputError("--agreement needs --checkpoint: a trained model (random weights agree only by chance)")
        model, meta = random_model(model_name, img_size or 224)
        runner = model_runner(model, meta, runtime, threads, int8)
    else:
        if img_size is not None:
            raise InputError("--img-size applies without --checkpoint: a checkpoint runs at its own input size")
        if agreement is not None and not int8:
            refuse_onnx(checkpoint, "--agreement (fp32 against torch)")
        runner = load_runner(checkpoint, model_name, runtime, threads, int8)
    res: Dict[str, Any] = dict(
        model=runner.meta["arch"],
        checkpoint=checkpoint,
        runtime=runtime,
        threads=threads,
        int8=int8,
        batch_size=batch_size,
        img_size=runner.meta["data_config"]["input_size"][-1],
        warmup=warmup,
        repeats=repeats,
        device_name=device_name("cpu"),
        cpu_count=os.cpu_count(),
        load_avg=os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    )
    res.update(time_runner(runner, batch_size, warmup, repeats))
    if agreement is not None and checkpoint is not None:
        reference = load_runner(checkpoint, model_name, runtime if int8 else "torch", threads)
        res["agreement"] = top1_agreement(reference, runner, agreement, agreement_images)
    return res


def format_runtime_result(res: Dict[str, Any]) -> str:
    """Two lines: the conditions, then latency and img/s (and a third with the top-1 agreement)."""
    threads = {None: "default threads", 1: "1 thread"}.get(res["threads"], f"{res['threads']} threads")
    text = (
        f"{res['model']}  {res['runtime']} {'int8' if res['int8'] else 'fp32'}  cpu ({res['device_name']}, "
        f"{threads})  batch {res['batch_size']}  {res['img_size']} px\n"
        f"{res['latency_ms']:.1f} ms/batch  {res['img_per_s']:.1f} img/s  (median of {res['repeats']})"
    )
    if "agreement" in res:
        text += "\n" + format_agreement(res["agreement"])
    return text


def benchmark_torch(cfg: BenchConfig, threads: Optional[int] = None, **kwargs: Any) -> Dict[str, Any]:
    """`t2t_vit.deploy.benchmark.benchmark(cfg, **kwargs)` with `threads` (torch.set_num_threads) and `latency_ms` (the
    median time of one batch) in each result."""
    if threads is not None:
        torch.set_num_threads(threads)
    res = benchmark(cfg, **kwargs)
    for r in res["results"].values():
        r["latency_ms"] = r["step_ms"]
    return dict(res, runtime="torch", int8=False)
