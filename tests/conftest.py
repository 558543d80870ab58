import json
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

    cfg = resolve_config("digits", dict(
        model_kwargs=dict(embed_dim=32, depth=1, num_heads=2, mlp_ratio=2.0, token_dim=16,
                          soft_splits=[[3, 1, 1], [3, 1, 1], [3, 2, 1]]),
        output=str(tmp_path), name="run", epochs=2, warmup_epochs=1, batch_size=64, log_interval=1000,
    ))  # fmt: skip
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
