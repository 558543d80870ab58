"""benchmarks/dense.py's dry run: every model trained through the run machinery at tiny sizes, timed, measured in a
fresh process and tabled, with the pyramid comparison; a finished run is read back, not retrained, and one trained
under another recipe is refused."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from t2t_vit.errors import InputError

from .helpers import benchmark_script

ROOT = Path(__file__).resolve().parents[1]
ROWS = ("t2t_vit_7 | t2t |", "t2t_vit_7 | simple |", "t2t_vit_14 | t2t |", "resnet18 | - |", "resnet50 | - |")


def test_the_dense_benchmark_dry_run_tables_every_model_and_answers_which_pyramid(tmp_path, monkeypatch):
    proc = subprocess.run(
        [sys.executable, "benchmarks/dense.py", "--dry-run", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,  # about a minute on 2 idle cores; much longer on a crowded machine
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    page = (tmp_path / "dense.md").read_text()
    assert "| model | pyramid | params | mAP | AP50 | train img/s | infer img/s | peak MB | epochs | wall |" in page
    for row in ROWS:
        assert f"| {row}" in page, row
    assert "| 0 |" in page and "| 1 |" in page and "| mean ± std |" in page  # the pyramids, per seed
    assert page.count("**Which pyramid:**") == 1
    result = json.loads((tmp_path / "dense.json").read_text())
    assert [s["seed"] for s in result["pyramids"]] == [0, 1]
    for row in result["rows"]:
        assert row["train_img_per_s"] > 0 and row["infer_img_per_s"] > 0 and row["params"] > 0
        assert row["peak_mib"]["train"] > 0 and row["peak_mib"]["infer"] > 0
        assert all(0 <= s["map"] <= 100 and s["epochs"] == 1 for s in row["seeds"])
    assert result["commit"].split()[0] in page and result["machine"] in page
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 7 and all((run / "metrics.csv").is_file() for run in runs)

    dense = benchmark_script("dense")  # a second invocation reads finished runs back, and refuses another recipe's
    monkeypatch.setattr(dense, "train", lambda *a, **k: pytest.fail("a finished run was trained again"))
    cfg = yaml.safe_load((runs[0] / "config.yaml").read_text())
    assert dense.train_or_read(cfg)[-1]["val_map"] != ""
    with pytest.raises(InputError, match=r"another recipe \(lr differ\): use another --out"):
        dense.train_or_read(dict(cfg, lr=cfg["lr"] * 2))
