"""What the study claims and compares: the paper's claims (a) to (e) as comparisons of arms, each arm a model
trained from the study's recipe on Fashion-MNIST at 28 px, its cost, and the rules of a verdict (MATCH, SAME_MARGIN,
LEVEL, LEARNED). `runs` trains the arms; `report` turns their runs into docs/results/."""

import statistics
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

from ..models.cost import model_cost

FASHION = "fashion-mnist:/usr/share/datasets/fashion-mnist"
RECIPE = "reproduce_fashion_mnist"  # the study's own config, frozen: the shipped fashion_mnist recipe may move on
SMALL = dict(
    embed_dim=128, depth=4, num_heads=4, mlp_ratio=2.0, token_dim=32, soft_splits=[[3, 2, 1], [3, 2, 1], [3, 1, 1]]
)  # 28 px -> 14x14 -> 7x7 tokens
MATCH = 0.10  # arms compared are matched in parameters and MACs within this fraction (printed either way)
SAME_MARGIN = 1.0  # points: "about the same" holds when the whole interval lies within +-SAME_MARGIN
LEVEL = 0.95
LEARNED = 5.0  # points: a verdict needs both arms' means this far above chance (two untrained arms would "match")

# arm -> config overrides (of the study's recipe, RECIPE); an arm shared by several claims trains once
ARMS: Dict[str, Dict[str, Any]] = {
    "T2T": dict(model="t2t_vit_7", model_kwargs=SMALL),
    "hard split": dict(
        model="t2t_vit_7", model_kwargs=dict(SMALL, tokens="patch", patch_size=4, depth=5, embed_dim=124)
    ),
    "convolution stem": dict(model="t2t_vit_7", model_kwargs=dict(SMALL, tokens="convolution")),
    "ResNet-18": dict(
        model="timm:resnet18", model_kwargs=dict(channels=[16, 32, 64, 128], output_stride=8), drop_path=0.0
    ),
    "T2T, first split stride 1": dict(
        model="t2t_vit_7", model_kwargs=dict(SMALL, soft_splits=[[3, 1, 1], [3, 2, 1], [3, 2, 1]])
    ),
    "T2T, Transformer mixer": dict(model="t2t_vit_7", model_kwargs=dict(SMALL, t2t_mixer="transformer")),
    "shallow-wide": dict(model="t2t_vit_7", model_kwargs=dict(SMALL, embed_dim=176, depth=2)),
    "T2T, kernel = stride": dict(
        model="t2t_vit_7", model_kwargs=dict(SMALL, soft_splits=[[2, 2, 0], [2, 2, 0], [1, 1, 0]])
    ),
}


@dataclass(frozen=True)
class Claim:
    """A claim of the paper as comparisons of arms: (a, b, expected), expected ">" (a beats b) or "=" (within
    SAME_MARGIN points). `beside`: arms trained and shown, not compared."""

    question: str
    paper: str
    paper_numbers: str
    comparisons: Tuple[Tuple[str, str, str], ...]
    beside: Tuple[str, ...] = ()

    @property
    def arms(self) -> List[str]:
        return list(dict.fromkeys([a for c in self.comparisons for a in c[:2]] + list(self.beside)))


CLAIMS: Dict[str, Claim] = {
    "tokens": Claim(
        "(a) T2T tokens vs a hard patch split vs a convolution stem, same backbone",
        "the T2T module (soft splits + re-structurization) beats ViT's hard split on the same backbone trained "
        "from scratch, and beats convolutions in its place; T2T-ViTs beat ResNets of similar size",
        "ImageNet (Table 7): T2T-ViT-14 81.5 vs the same backbone without the T2T module 79.5 vs with 3 convolutions "
        "in its place (T2T-ViT_c-14) 80.8",
        (("T2T", "hard split", ">"), ("T2T", "convolution stem", ">")),
        beside=("ResNet-18",),
    ),
    "budget": Claim(
        "(b) The token budget: first soft split at stride 1 vs stride 2",
        "more, overlapping tokens early model local structure better (the first split's stride trades tokens for "
        "compute; the paper uses stride 4 at 224 px)",
        "not ablated in the paper",
        (("T2T, first split stride 1", "T2T", ">"),),
    ),
    "mixer": Claim(
        "(c) Performer vs Transformer as the T2T module's token mixer",
        "about the same accuracy, the Performer cheaper in memory and compute where tokens are many",
        "ImageNet (Table 7): T2T-ViT-14 (Performer) 81.5 vs T2T-ViT_t-14 (Transformer) 81.7, at 4.8 vs 6.1 GMACs",
        (("T2T", "T2T, Transformer mixer", "="),),
    ),
    "depth": Claim(
        "(d) Deep-narrow vs shallow-wide backbone at matched cost",
        "a deep-narrow backbone beats a shallow-wide one of similar parameters and MACs",
        "ImageNet (Table 7): T2T-ViT-14 (depth 14, width 384) 81.5 vs T2T-ViT-d768-4 (depth 4, width 768) 78.8; "
        "(Table 6) ViT-DN 79.0 vs ViT-SW 69.9",
        (("T2T", "shallow-wide", ">"),),
    ),
    "overlap": Claim(
        "(e) Soft split overlap: overlapping kernels vs kernel = stride",
        "overlapping patches (kernel > stride) keep the local structure that a split into disjoint patches cuts",
        "not ablated in the paper",
        (("T2T", "T2T, kernel = stride", ">"),),
    ),
}


def arm_kwargs(arm: str) -> Dict[str, Any]:
    """The constructor arguments of `arm`'s model on Fashion-MNIST (10 classes, 3 channels)."""
    return dict(num_classes=10, in_chans=3, **ARMS[arm].get("model_kwargs", {}))


def arm_cost(arm: str) -> Tuple[int, int]:
    """(parameters, MACs per 28 px image) of `arm`'s model."""
    model = ARMS[arm]["model"]
    if model.startswith("timm:"):
        return _timm_cost(model[5:], arm_kwargs(arm))
    return model_cost(model, img_size=28, **arm_kwargs(arm))


def _timm_cost(name: str, kwargs: Dict[str, Any]) -> Tuple[int, int]:
    import timm
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = timm.create_model(name, **{k: v for k, v in kwargs.items() if k != "img_size"}).eval()
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, 28, 28))
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() // 2


def arm_memory(arm: str) -> float:
    """Peak MiB of one training step of `arm` (batch 128, 28 px)."""
    from ..deploy.benchmark import BenchConfig, measure_memory

    step = BenchConfig(
        ARMS[arm]["model"], mode="train", batch_size=128, img_size=28, model_kwargs=arm_kwargs(arm), repeats=3
    )
    return measure_memory(step, "sdpa")


def arm_step_speeds(arms: Sequence[str], repeats: int = 20, warmup: int = 2) -> Dict[str, float]:
    """Training img/s of each arm's step (batch 128, 28 px, fp32), the arms taking turns in this process: the runs'
    own img/s come from different hours of a machine whose pace drifts."""
    import torch

    from ..deploy.benchmark import BenchConfig, make_step, time_steps
    from ..factory import create_model

    steps = {}
    for arm in arms:
        torch.manual_seed(0)
        model = create_model(ARMS[arm]["model"], img_size=28, **arm_kwargs(arm))
        steps[arm] = make_step(model, BenchConfig(ARMS[arm]["model"], mode="train", batch_size=128, img_size=28))
    times = time_steps(steps, "cpu", warmup, repeats)
    return {arm: 128 / statistics.median(t) for arm, t in times.items()}
