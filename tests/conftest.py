import json
import math
from pathlib import Path

import pytest
import torch

REFERENCE = Path(__file__).parent / "data" / "reference"


@pytest.fixture(scope="session")
def official_keys() -> dict:
    """Key names, shapes and parameter totals read off the authors' models, per variant."""
    return json.loads((REFERENCE / "official_checkpoint_keys.json").read_text())


@pytest.fixture(scope="session")
def paper_results() -> dict:
    return json.loads((REFERENCE / "paper_results.json").read_text())


def official_state_dict(official_keys: dict, name: str, seed: int = 0) -> dict:
    """A state dict in the authors' layout (their key names and shapes) with random values."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) * 0.05 for k, shape in official_keys[name]["state_dict"].items()}


def tiny_train_config(tmp_path, **overrides) -> dict:
    """A seconds-long run on the embedded digits: a one-block T2T-ViT at 16 px."""
    from t2t_vit.config import resolve_config

    cfg = resolve_config(
        "digits",
        dict(
            model_kwargs=dict(
                embed_dim=32,
                depth=1,
                num_heads=2,
                mlp_ratio=2.0,
                token_dim=16,
                soft_splits=[[3, 1, 1], [3, 1, 1], [3, 2, 1]],
            ),
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
