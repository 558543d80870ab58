"""The small-scale reproduction runs end to end and writes its table, plot and numbers."""
import json

from PIL import Image

from t2t_vit.reproduce import EXPERIMENTS, run_experiment


def test_reproduce_writes_table_plot_and_json(tmp_path):
    md = run_experiment("mixer", data="digits", seeds=[0, 1], epochs=1, train_subset=300,
                        output=str(tmp_path / "runs"), results_dir=str(tmp_path / "results"))  # fmt: skip
    text = md.read_text()
    for arm in EXPERIMENTS["mixer"]["arms"]:
        assert f"| {arm} |" in text
    assert "t2t-vit reproduce mixer --seeds 0 1 --epochs 1 --train-subset 300" in text
    data = json.loads((tmp_path / "results" / "mixer.json").read_text())
    assert all(len(a["top1"]) == 2 and a["params"] > 0 for a in data["arms"].values())
    img = Image.open(tmp_path / "results" / "mixer.png").convert("L")
    assert max(img.getextrema()) > min(img.getextrema())
    again = run_experiment("mixer", data="digits", seeds=[0, 1], epochs=1, train_subset=300,
                           output=str(tmp_path / "runs"), results_dir=str(tmp_path / "results"))  # finished runs
    assert again.read_text() == text  # are read back, not retrained
