"""The paper's claims re-checked at small scale: Fashion-MNIST at 28 px on the CPU, a fixed budget, several seeds.

    t2t-vit reproduce tokens    T2T tokens vs a hard patch split at matched cost, a timm ResNet beside them
    t2t-vit reproduce mixer     Performer vs Transformer in the T2T module: top-1, img/s, memory
    t2t-vit reproduce depth     deep-narrow vs shallow-wide backbone at matched cost

Each writes docs/results/<experiment>.md (table, budget, seeds, command), .png (held-out top-1 per epoch) and
.json (every run's numbers); the runs themselves go to runs/reproduce/<experiment>/<arm>-s<seed>/.
"""
import json
import logging
import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional

from .benchmark import BenchConfig, measure_memory
from .config import resolve_config
from .cost import model_cost
from .errors import InputError
from .visualize import read_metrics

_logger = logging.getLogger(__name__)

FASHION = "fashion-mnist:/usr/share/datasets/fashion-mnist"
SMALL = dict(embed_dim=128, depth=4, num_heads=4, mlp_ratio=2.0, token_dim=32,
             soft_splits=[[3, 2, 1], [3, 2, 1], [3, 1, 1]])  # 28 px -> 7x7 tokens  # fmt: skip

# experiment -> (question, the paper's claim, {arm: config overrides})
EXPERIMENTS: Dict[str, Dict[str, Any]] = {
    "tokens": dict(
        question="Tokens-to-token (soft split + re-structurization) vs a hard patch split, same backbone",
        claim="T2T-ViT-14 reaches 81.5% on ImageNet where ViT with the same backbone and a hard 16x16 split "
        "trained from scratch gets less (the paper's T2T-ViT-14 vs 'without T2T'), and T2T-ViTs beat ResNets "
        "of similar size trained from scratch.",
        arms={
            "T2T (soft splits, Performer)": dict(model="t2t_vit_7", model_kwargs=SMALL),
            "ViT (hard 4x4 patch split)": dict(
                model="t2t_vit_7", model_kwargs=dict(SMALL, tokens="patch", patch_size=4, depth=5)
            ),
            "ResNet-18 (timm, channels 16-128)": dict(
                model="timm:resnet18", model_kwargs=dict(channels=[16, 32, 64, 128]), drop_path=0.0
            ),
        },
    ),
    "mixer": dict(
        question="Performer vs Transformer as the T2T module's token mixer",
        claim="T2T-ViT-14 (Performer) 81.5% vs T2T-ViT_t-14 (Transformer) 81.7%: about the same accuracy, "
        "while the Performer saves memory and compute in the first T2T layer (3136 tokens at 224 px).",
        at_224=("t2t_vit_14", "t2t_vit_t_14"),  # the paper's pair, measured where the token count matters
        arms={
            "Performer": dict(model="t2t_vit_7", model_kwargs=dict(SMALL, t2t_mixer="performer")),
            "Transformer": dict(model="t2t_vit_7", model_kwargs=dict(SMALL, t2t_mixer="transformer")),
        },
    ),
    "depth": dict(
        question="Deep-narrow vs shallow-wide backbone at matched parameters and MACs",
        claim="A deep-narrow backbone (T2T-ViT-14: depth 14, width 384) beats a shallow-wide one of similar "
        "cost (T2T-ViT-14-wide: depth 4, width 768) trained from scratch on ImageNet.",
        arms={
            "deep-narrow (depth 8, width 96)": dict(
                model="t2t_vit_7", model_kwargs=dict(SMALL, embed_dim=96, depth=8, num_heads=4)
            ),
            "shallow-wide (depth 2, width 192)": dict(
                model="t2t_vit_7", model_kwargs=dict(SMALL, embed_dim=192, depth=2, num_heads=4)
            ),
        },
    ),
}


def _arm_dir(arm: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in arm.split(" (")[0].lower()).strip("_")


def run_experiment(
    name: str,
    data: str = FASHION,
    seeds: List[int] = (0, 1),
    epochs: int = 6,
    train_subset: Optional[int] = 10000,
    output: str = "runs/reproduce",
    results_dir: str = "docs/results",
    progress: bool = False,
) -> Path:
    """Train every arm with every seed (resuming finished or interrupted runs), then write the table and plot."""
    from .train import train

    if name not in EXPERIMENTS:
        raise InputError(f"unknown experiment {name!r}: one of {', '.join(EXPERIMENTS)}")
    exp = EXPERIMENTS[name]
    runs: Dict[str, List[Path]] = {}
    for arm, overrides in exp["arms"].items():
        for seed in seeds:
            cfg = resolve_config("fashion_mnist", dict(
                data=data, epochs=epochs, train_subset=train_subset, seed=seed, output=f"{output}/{name}",
                name=f"{_arm_dir(arm)}-s{seed}", **overrides,
            ))  # fmt: skip
            _logger.info("%s: %s, seed %d", name, arm, seed)
            result = train(cfg, resume="auto", progress=progress)
            if result.get("stopped"):  # a signal: the same command continues the study from here
                raise StudyStopped(result["stopped"], f"{name}: {arm}, seed {seed}, {result['at']}")
            runs.setdefault(arm, []).append(Path(result["run_dir"]))
    return write_report(name, runs, dict(data=data, seeds=list(seeds), epochs=epochs, train_subset=train_subset),
                        Path(results_dir))  # fmt: skip


class StudyStopped(Exception):
    """A study stopped by a signal, its last run checkpointed: (signal number, where)."""


def _arm_summary(overrides: Dict[str, Any], run_dirs: List[Path]) -> Dict[str, Any]:
    kwargs = dict(num_classes=10, in_chans=3, **overrides.get("model_kwargs", {}))
    model = overrides["model"]
    if model.startswith("timm:"):
        params, macs = _timm_cost(model[5:], kwargs)
    else:
        params, macs = model_cost(model, img_size=28, **kwargs)
    metrics = [read_metrics(d) for d in run_dirs]
    final = [m["val_top1"][-1] for m in metrics]
    step = BenchConfig(model, mode="train", batch_size=128, img_size=28, model_kwargs=kwargs, repeats=3)
    return dict(
        params=params,
        macs=macs,
        train_step_mib=measure_memory(step, "sdpa"),
        top1=final,
        top1_mean=statistics.mean(final),
        top1_std=statistics.stdev(final) if len(final) > 1 else 0.0,
        img_per_s=statistics.mean(statistics.median(m["img_per_s"]) for m in metrics),
        curves=[m["val_top1"] for m in metrics],
        runs=[str(d) for d in run_dirs],
    )


def _memory_at_224(names: tuple) -> List[str]:
    """Peak memory of a training step of the paper's models at 224 px, fused attention and the authors' eager."""
    lines = [
        "At 224 px, where the first T2T layer sees 3136 tokens: peak memory (MiB) of one training step, batch 16, "
        "of the paper's pair, with fused attention (ours) and the authors' eager arithmetic (the materialised "
        "3136x3136 attention):",
        "",
        "| model | fused MiB | eager MiB |",
        "|---|---:|---:|",
    ]
    for name in names:
        cfg = BenchConfig(name, mode="train", batch_size=16, img_size=224, repeats=1)
        lines.append(f"| {name} | {measure_memory(cfg, 'sdpa'):.0f} | {measure_memory(cfg, 'eager'):.0f} |")
    return lines


def _timm_cost(name: str, kwargs: Dict[str, Any]) -> tuple:
    import timm
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    kwargs = {k: v for k, v in kwargs.items() if k not in ("img_size",)}
    with torch.device("meta"):
        model = timm.create_model(name, **kwargs).eval()
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, 28, 28))
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() // 2


def write_report(name: str, runs: Dict[str, List[Path]], budget: Dict[str, Any], out_dir: Path) -> Path:
    """docs/results/<name>.md, .png and .json from the run directories of each arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    exp = EXPERIMENTS[name]
    summary = {arm: _arm_summary(exp["arms"][arm], dirs) for arm, dirs in runs.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(dict(budget=budget, arms=summary), indent=1))

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for arm, s in summary.items():
        epochs = range(1, len(s["curves"][0]) + 1)
        mean = [statistics.mean(c[i] for c in s["curves"]) for i in range(len(s["curves"][0]))]
        ax.plot(epochs, mean, marker="o", label=f"{arm} ({s['top1_mean']:.1f}%)")
        for c in s["curves"]:
            ax.plot(epochs, c, color=ax.lines[-1].get_color(), alpha=0.25)
    ax.set(xlabel="epoch", ylabel="held-out top-1 (%)", title=exp["question"])
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / f"{name}.png", dpi=100)
    plt.close(fig)

    seeds = " ".join(map(str, budget["seeds"]))
    lines = [
        f"# {exp['question']}",
        "",
        f"**The paper:** {exp['claim']}",
        "",
        f"**Here:** Fashion-MNIST at 28 px, {budget['train_subset'] or 'all 60,000'} training images (a fixed "
        f"stratified subset), the full 10,000-image test split held out, {budget['epochs']} epochs, seeds {seeds}, "
        "the `fashion_mnist` config otherwise (AdamW, cosine, no mixup), 2 CPU cores.",
        "",
        "| arm | params | MMACs / image | held-out top-1 (mean ± std) | per seed | train img/s | "
        "train step MiB |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for arm, s in summary.items():
        per_seed = ", ".join(f"{t:.2f}" for t in s["top1"])
        lines.append(
            f"| {arm} | {s['params']:,} | {s['macs'] / 1e6:.1f} | {s['top1_mean']:.2f} ± {s['top1_std']:.2f} | "
            f"{per_seed} | {s['img_per_s']:.0f} | {s['train_step_mib']:.0f} |"
        )
    lines += ["", "train img/s: the median epoch of each run, averaged over seeds; train step MiB: peak memory "
              "of one training step (batch 128, forward, backward, AdamW) in a fresh process."]
    if "at_224" in exp:
        lines += ["", *_memory_at_224(exp["at_224"])]
    lines += [
        "",
        f"![held-out top-1 per epoch]({name}.png)",
        "",
        f"Command: `t2t-vit reproduce {name} --seeds {seeds} --epochs {budget['epochs']} "
        f"--train-subset {budget['train_subset']}`",
        "",
    ]
    path = out_dir / f"{name}.md"
    path.write_text("\n".join(lines))
    return path
