"""T2T-ViT models; importing this package registers them in timm. The ground floor: imports only `errors` and
`checkpoint` (the safe file reader) from the package, never the code above it."""

from .ablations import ABLATIONS, T2TViTDense
from .checkpoint_filter import checkpoint_filter_fn, load_checkpoint
from .layers import Attention, Block, sinusoid_table
from .stems import ConvolutionStem, HardSplitStem, make_stem
from .t2t_vit import set_pretrained_source
from .tokens_to_token import T2TModule, TokenAttention, TokenPerformer, TokenTransformer, soft_split
from .variants import RELEASES, VARIANTS
from .vit import T2TViT

__all__ = [
    "ABLATIONS",
    "RELEASES",
    "VARIANTS",
    "Attention",
    "Block",
    "ConvolutionStem",
    "HardSplitStem",
    "T2TModule",
    "T2TViT",
    "T2TViTDense",
    "TokenAttention",
    "TokenPerformer",
    "TokenTransformer",
    "checkpoint_filter_fn",
    "load_checkpoint",
    "make_stem",
    "set_pretrained_source",
    "sinusoid_table",
    "soft_split",
]
