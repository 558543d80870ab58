"""The small-scale reproduction runs end to end and writes its table, plot and numbers."""
import json

from PIL import Image

from t2t_vit.reproduce import EXPERIMENTS, run_experiment


def test_reproduce_writes_table_plot_and_json(tmp_path):
    md = run_experiment("depth", data="digits", seeds=[0, 1], epochs=1, train_subset=300,
                        output=str(tmp_path / "runs"), results_dir=str(tmp_path / "results"))  # fmt: skip
    text = md.read_text()
    for arm in EXPERIMENTS["depth"]["arms"]:
        assert f"| {arm} |" in text
    assert "t2t-vit reproduce depth --seeds 0 1 --epochs 1 --train-subset 300" in text
    data = json.loads((tmp_path / "results" / "depth.json").read_text())
    assert all(len(a["top1"]) == 2 and a["params"] > 0 and a["train_step_mib"] > 0 for a in data["arms"].values())
    img = Image.open(tmp_path / "results" / "depth.png").convert("L")
    assert max(img.getextrema()) > min(img.getextrema())
    checkpoints = sorted((tmp_path / "runs").rglob("last.pth.tar"))
    stamps = [p.stat().st_mtime_ns for p in checkpoints]
    run_experiment("depth", data="digits", seeds=[0, 1], epochs=1, train_subset=300,
                   output=str(tmp_path / "runs"), results_dir=str(tmp_path / "results"))  # fmt: skip
    assert [p.stat().st_mtime_ns for p in checkpoints] == stamps and len(stamps) == 4  # read back, not retrained
    again = json.loads((tmp_path / "results" / "depth.json").read_text())
    assert [a["top1"] for a in again["arms"].values()] == [a["top1"] for a in data["arms"].values()]
