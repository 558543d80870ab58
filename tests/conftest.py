"""Fixtures only; what tests share besides fixtures is in tests/helpers.py."""

import json
from pathlib import Path

import pytest
import timm
import torch

from .helpers import (
    REFERENCE,
    AuthorsWeights,
    LoopbackServer,
    logits_of,
    official_state_dict,
    save_tiny_checkpoint,
    tiny_train_config,
)


@pytest.fixture(scope="session")
def official_keys() -> dict:
    """Key names, shapes and parameter totals read off the authors' models, per variant."""
    return json.loads((REFERENCE / "official_checkpoint_keys.json").read_text())


@pytest.fixture(scope="session")
def paper_results() -> dict:
    return json.loads((REFERENCE / "paper_results.json").read_text())


@pytest.fixture(scope="session")
def authors_t2t_vit_7(official_keys) -> AuthorsWeights:
    """t2t_vit_7 weights in the authors' layout (EMA: seed 0, raw: seed 1), two 224 px images and the logits a model
    holding exactly the EMA weights gives for them."""
    ema = official_state_dict(official_keys, "t2t_vit_7", seed=0)
    raw = official_state_dict(official_keys, "t2t_vit_7", seed=1)
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    model = timm.create_model("t2t_vit_7")
    model.load_state_dict(ema)
    return AuthorsWeights(ema, raw, images, logits_of(model, images))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """Our layout of the tiny model (`helpers.save_tiny_checkpoint`): built, not trained. Read it only; a test that
    changes it works on a copy."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth.tar")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The run directory of a finished one-epoch tiny run (`helpers.tiny_train_config`, no warm-up): its
    last.pth.tar is our checkpoint of a trained model. Read it only."""
    from t2t_vit.training.run import train

    output = tmp_path_factory.mktemp("tiny_run")
    return Path(train(tiny_train_config(output, epochs=1, warmup_epochs=0), progress=False)["run_dir"])


@pytest.fixture
def server():
    """A loopback HTTP server (`helpers.LoopbackServer`) for this test."""
    s = LoopbackServer()
    yield s
    s.close()


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """torch's hub cache in this test's folder; returns its checkpoints folder (not made yet)."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    return tmp_path / "hub" / "checkpoints"
