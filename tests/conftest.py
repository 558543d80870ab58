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
