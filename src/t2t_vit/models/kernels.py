"""The fused arithmetic of the T2T module: channels-last soft splits and the Performer's linear attention.

The channels-last soft split orders each patch's features (kh, kw, C), not unfold's (C, kh, kw): `patch_major`
reorders the weights that read them, and `patch_norm_linear` is the T2T layers' first LayerNorm and projection over
such patches. The Performer kernel (positive random features, one head) comes twice: the fast one
(`_performer_kernel`) and the authors' einsum arithmetic op for op (`_performer_kernel_eager`); `performer_attention`
runs either in fp32.
"""

import math
from typing import List, Optional

import torch
import torch.nn.functional as F


def split_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Length of one side after an unfold."""
    return (size + 2 * padding - kernel) // stride + 1


def soft_split_channels_last(
    x: torch.Tensor, kernel: int, stride: int, padding: int, slices: bool = False
) -> torch.Tensor:
    """The patches of `soft_split` from channels-last data, features ordered (kh, kw, C): one copy.

    (B, H, W, C) -> (B, L, kernel^2 * C); `patch_major` reorders weights that read unfold's (C, kh, kw) order.
    `slices`: kernel^2 strided slices concatenated on the features instead, the same result, for ONNX (its exporter
    cannot size `Tensor.unfold`'s windows, and `F.unfold` exports as an index Gather that costs onnxruntime more).
    """
    B, H, W, C = x.shape
    x = F.pad(x, (0, 0, padding, padding, padding, padding))  # contiguous (B, H + 2p, W + 2p, C)
    if not slices:
        x = x.unfold(1, kernel, stride).unfold(2, kernel, stride)  # view (B, H', W', C, kh, kw)
        return x.permute(0, 1, 2, 4, 5, 3).reshape(B, -1, kernel * kernel * C)
    rows, cols = split_size(H, kernel, stride, padding), split_size(W, kernel, stride, padding)
    patches: List[torch.Tensor] = []
    for i in range(kernel):
        for j in range(kernel):
            patches.append(x[:, i : i + stride * (rows - 1) + 1 : stride, j : j + stride * (cols - 1) + 1 : stride])
    return torch.cat(patches, -1).reshape(B, rows * cols, kernel * kernel * C)


def patch_major(w: torch.Tensor, channels: int) -> torch.Tensor:
    """A weight's last dim reordered from unfold's (C, kh, kw) to `soft_split_channels_last`'s (kh, kw, C)."""
    return w.reshape(-1, channels, w.shape[-1] // channels).transpose(1, 2).reshape(w.shape)


def _prm_exp_eager(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    m = w.shape[0]
    xd = ((x * x).sum(dim=-1, keepdim=True)).repeat(1, 1, m) / 2
    wtx = torch.einsum("bti,mi->btm", x.float(), w)
    return torch.exp(wtx - xd) / math.sqrt(m)


def _performer_kernel_eager(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, eps: float):
    """The authors' arithmetic, op for op (einsums, `.repeat`), kept to check the fast path against."""
    kp, qp = _prm_exp_eager(k, w), _prm_exp_eager(q, w)  # (B, T, m)
    D = torch.einsum("bti,bi->bt", qp, kp.sum(dim=1)).unsqueeze(dim=2)  # (B, T, 1)
    kptv = torch.einsum("bin,bim->bnm", v.float(), kp)  # (B, emb, m)
    return torch.einsum("bti,bni->btn", qp, kptv) / (D.repeat(1, 1, v.shape[-1]) + eps)


def _phi(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Positive random features exp(w x - |x|^2 / 2) / sqrt(m): (B, T, emb) -> (B, T, m).

    One GEMM that takes the shift as its bias term, then exp in place: no temporary the size of x or of the result.
    """
    B, T, e = x.shape
    x = x.reshape(B * T, e)  # a view for the column slices of one projection
    shift = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square().mul(-0.5).sub(0.5 * math.log(w.shape[0]))
    return torch.addmm(shift, x, w.t()).exp_().reshape(B, T, -1)


def _performer_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, eps: float):
    """Linear attention with positive random features: phi(q) (phi(k)^T v) / (phi(q) . sum_t phi(k_t) + eps).

    The normaliser rides along as one more column: phi(q) @ [phi(k)^T v | sum_t phi(k_t)] is one batched GEMM.
    """
    kp, qp = _phi(k, w), _phi(q, w)  # (B, T, m)
    e = v.shape[-1]
    kv = torch.cat((kp.transpose(1, 2) @ v, kp.sum(dim=1).unsqueeze(-1)), dim=-1)  # (B, m, emb + 1)
    y = qp @ kv  # (B, T, emb + 1)
    return y[..., :e] / (y[..., e:] + eps)


def performer_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, w: torch.Tensor, eps: float, fused_kernel: bool
) -> torch.Tensor:
    """The Performer kernel in fp32 whatever the autocast state or the model's dtype (`.half()`, `.bfloat16()`):
    half precision overflows exp(.) here. The result comes back in q's dtype.

    `fused_kernel`: the fast arithmetic (`_performer_kernel`); False: the authors' einsums (`_performer_kernel_eager`).
    """
    dtype = q.dtype
    q, k, v, w = q.float(), k.float(), v.float(), w.float()
    if torch.jit.is_scripting():
        y = _performer_kernel(q, k, v, w, eps) if fused_kernel else _performer_kernel_eager(q, k, v, w, eps)
    else:
        device = q.device.type if torch.amp.is_autocast_available(q.device.type) else "cpu"
        with torch.autocast(device, enabled=False):
            y = _performer_kernel(q, k, v, w, eps) if fused_kernel else _performer_kernel_eager(q, k, v, w, eps)
    return y.to(dtype)


def patch_norm_linear(
    x: torch.Tensor,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    eps: float,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    channels: int,
    features: int,
) -> torch.Tensor:
    """linear(layer_norm(x)) for patches in `soft_split_channels_last`'s (kh, kw, C) order, C = `channels`, of
    `features` = kh kw C values each (a Python number: ONNX wants the norm's shape constant).

    The weights are reordered to that order and the norm's affine is folded into the linear:
    (x_hat * g + b_n) W^T + b = x_hat (W g)^T + (W b_n + b). That spares an elementwise pass and, where x needs no
    gradient (the image's patches), the backward GEMM that g and b_n would need.
    """
    norm_weight, norm_bias, weight = (patch_major(t, channels) for t in (norm_weight, norm_bias, weight))
    folded_bias = weight @ norm_bias if bias is None else bias + weight @ norm_bias
    return F.linear(F.layer_norm(x, [features], None, None, eps), weight * norm_weight, folded_bias)
