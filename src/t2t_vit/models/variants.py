"""The registered T2T-ViT variants and the authors' released weights: the sizes of each variant (the paper's
Table 1), the weight files with the top-1 reported for each, and the timm pretrained cfgs built from them.
"""

from dataclasses import dataclass
from typing import Any, Dict, Optional

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

# Sizes of each registered variant (the paper's Table 1 and the authors' release).
VARIANTS: Dict[str, Dict[str, Any]] = {
    "t2t_vit_7": dict(t2t_mixer="performer", embed_dim=256, depth=7, num_heads=4, mlp_ratio=2.0),
    "t2t_vit_10": dict(t2t_mixer="performer", embed_dim=256, depth=10, num_heads=4, mlp_ratio=2.0),
    "t2t_vit_12": dict(t2t_mixer="performer", embed_dim=256, depth=12, num_heads=4, mlp_ratio=2.0),
    "t2t_vit_14": dict(t2t_mixer="performer", embed_dim=384, depth=14, num_heads=6, mlp_ratio=3.0),
    "t2t_vit_19": dict(t2t_mixer="performer", embed_dim=448, depth=19, num_heads=7, mlp_ratio=3.0),
    "t2t_vit_24": dict(t2t_mixer="performer", embed_dim=512, depth=24, num_heads=8, mlp_ratio=3.0),
    "t2t_vit_t_14": dict(t2t_mixer="transformer", embed_dim=384, depth=14, num_heads=6, mlp_ratio=3.0),
    "t2t_vit_t_19": dict(t2t_mixer="transformer", embed_dim=448, depth=19, num_heads=7, mlp_ratio=3.0),
    "t2t_vit_t_24": dict(t2t_mixer="transformer", embed_dim=512, depth=24, num_heads=8, mlp_ratio=3.0),
    "t2t_vit_14_resnext": dict(t2t_mixer="performer", embed_dim=384, depth=14, num_heads=32, mlp_ratio=3.0),
    "t2t_vit_14_wide": dict(t2t_mixer="performer", embed_dim=768, depth=4, num_heads=12, mlp_ratio=3.0),
}

RELEASE_URL = "https://github.com/yitu-opensource/T2T-ViT/releases/download/main/"
IMAGENET_EVAL = dict(crop_pct=0.9, interpolation="bicubic", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)
# the authors' transfer_learning.py: Resize(224) (bilinear), no crop, CIFAR's statistics
CIFAR_EVAL = dict(crop_pct=1.0, interpolation="bilinear", mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010))


@dataclass(frozen=True)
class Release:
    """One weight file of the authors' release: what it holds and the top-1 they report for it."""

    file: str
    top1: float
    dataset: str = "imagenet-1k"
    num_classes: int = 1000
    img_size: int = 224
    paper_gmacs: Optional[float] = None  # the paper's GMACs at 224 px, where it prints one
    note: str = ""

    @property
    def url(self) -> str:
        return RELEASE_URL + self.file


# The authors' released weights per `arch.tag`: ImageNet-1k, and the CIFAR fine-tunes of transfer_learning.py.
RELEASES: Dict[str, Release] = {
    "t2t_vit_7.in1k": Release("71.7_T2T_ViT_7.pth.tar", 71.7, paper_gmacs=1.1),
    "t2t_vit_10.in1k": Release("75.2_T2T_ViT_10.pth.tar", 75.2, paper_gmacs=1.5),
    "t2t_vit_12.in1k": Release("76.5_T2T_ViT_12.pth.tar", 76.5, paper_gmacs=1.8),
    "t2t_vit_14.in1k": Release("81.5_T2T_ViT_14.pth.tar", 81.5, paper_gmacs=4.8),
    "t2t_vit_14.in1k_384": Release("83.3_T2T_ViT_14.pth.tar", 83.3, img_size=384),
    "t2t_vit_14.in1k_ft_cifar10": Release("cifar10_t2t-vit_14_98.3.pth", 98.3, "cifar10", 10),
    "t2t_vit_14.in1k_ft_cifar100": Release("cirfar100_t2t-vit-14_88.4.pth", 88.4, "cifar100", 100),
    "t2t_vit_19.in1k": Release("81.9_T2T_ViT_19.pth.tar", 81.9, paper_gmacs=8.5),
    "t2t_vit_19.in1k_ft_cifar10": Release("cifar10_t2t-vit_19_98.4.pth", 98.4, "cifar10", 10),
    "t2t_vit_19.in1k_ft_cifar100": Release("cifar100_t2t-vit-19_89.0.pth", 89.0, "cifar100", 100),
    "t2t_vit_24.in1k": Release("82.3_T2T_ViT_24.pth.tar", 82.3, paper_gmacs=13.8),
    "t2t_vit_24.tl_in1k": Release("84.2_T2T_ViT_24.pth.tar", 84.2, note="Token Labeling"),
    "t2t_vit_t_14.in1k": Release("81.7_T2T_ViTt_14.pth.tar", 81.7, paper_gmacs=6.1),
    "t2t_vit_t_19.in1k": Release("82.4_T2T_ViTt_19.pth.tar", 82.4, paper_gmacs=9.8),
    "t2t_vit_t_24.in1k": Release("82.6_T2T_ViTt_24.pth.tar", 82.6, paper_gmacs=15.0),
}

# The layer that reads the image first, per tokenizer and mixer (timm's `first_conv`).
FIRST_LAYER = "tokens_to_token.attention1.kqv"
FIRST_LAYER_T = "tokens_to_token.attention1.attn.qkv"


def _cfg(release: Optional[Release] = None, first_conv: str = FIRST_LAYER) -> Dict[str, Any]:
    size = release.img_size if release else 224
    cfg = dict(
        num_classes=release.num_classes if release else 1000,
        input_size=(3, size, size),
        fixed_input_size=True,
        pool_size=None,
        **(CIFAR_EVAL if release and release.dataset.startswith("cifar") else IMAGENET_EVAL),
        first_conv=first_conv,
        classifier="head",
        license="other",
        paper_name="Tokens-to-Token ViT: Training Vision Transformers from Scratch on ImageNet",
        paper_ids="arXiv:2101.11986",
        origin_url="https://github.com/yitu-opensource/T2T-ViT",
    )
    if release is not None:
        cfg.update(url=release.url, custom_load=True)  # read by T2TViT.load_pretrained: every release layout
        cfg["description"] = f"authors' release {release.file}, {release.dataset} top-1 {release.top1}"
    return cfg
