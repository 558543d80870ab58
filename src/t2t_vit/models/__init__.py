"""T2T-ViT models; importing this package registers them in timm."""
from .ablations import ABLATIONS, T2TViTDense
from .checkpoint_filter import checkpoint_filter_fn
from .layers import Attention, Block, sinusoid_table
from .t2t_vit import T2TViT
from .tokens_to_token import T2TModule, TokenAttention, TokenPerformer, TokenTransformer, soft_split
from .stems import ConvolutionStem, HardSplitStem, make_stem
from .variants import RELEASES, VARIANTS
