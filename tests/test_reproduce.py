"""The study's quick path: a claim's arms under both budgets on a few hundred digits, its statistics and files (not
its verdicts); the interval and the verdict rules. The time budget of a training run is tests/test_train.py's."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image
from scipy import stats

from t2t_vit.config import resolve_config
from t2t_vit.errors import InputError
from t2t_vit.study.claims import ARMS, CLAIMS, LEARNED, MATCH, RECIPE, arm_cost, arm_step_speeds
from t2t_vit.study.report import claim_markdown, feature_maps, mean_difference, verdict, write_report
from t2t_vit.study.runs import parse_seconds, run_claim, run_dir
from t2t_vit.study.visualize import read_metrics
from t2t_vit.training.run import train


def test_a_claim_runs_both_budgets_writes_its_files_and_resumes(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    drawn = []  # the report's figures, kept open to read their axes
    monkeypatch.setattr(plt, "close", lambda fig=None: drawn.append(fig))
    kwargs = dict(
        data="digits",
        seeds=[0, 1],
        epochs=1,
        seconds=1.0,
        train_subset=300,
        output=str(tmp_path / "runs"),
    )
    out = tmp_path / "results"
    md = write_report("depth", run_claim("depth", **kwargs), out, command="t2t-vit reproduce depth --seeds 2")
    text, summary = md.read_text(), json.loads((out / "depth.json").read_text())
    assert "t2t-vit reproduce depth --seeds 2" in text and "commit " in text
    for arm in CLAIMS["depth"].arms:
        assert f"| {arm} |" in text
        for budget in ("epochs", "time"):
            assert len(summary["arms"][arm]["budgets"][budget]["top1"]) == 2
    assert text.count("| (the reference) |") == 2  # the first arm's rows, one per budget: matched to itself reads oddly
    # the capped runs ended at their budget (or, a little faster than the equal-epoch runs said, with their schedule)
    for seed in (0, 1):
        capped = tmp_path / "runs" / "1-seconds" / f"t2t-s{seed}"
        m, cfg = read_metrics(capped), yaml.safe_load((capped / "config.yaml").read_text())
        assert m["train_s"][-1] >= 1.0 or m["epoch"][-1] == cfg["epochs"]
        assert cfg["schedule_on_time"] and cfg["time_budget"] == 1.0  # the lr schedule ends at the cap
    # the statistics are Welch's interval of the mean difference
    c = summary["comparisons"][0]
    a = summary["arms"][c["a"]]["budgets"]["epochs"]["top1"]
    b = summary["arms"][c["b"]]["budgets"]["epochs"]["top1"]
    assert c["epochs"]["diff"] == pytest.approx(sum(a) / 2 - sum(b) / 2)
    if len(set(a + b)) > 2:  # a spread to compute an interval from
        ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
        assert (c["epochs"]["low"], c["epochs"]["high"]) == pytest.approx((ci.low, ci.high))
    means = [summary["arms"][x]["budgets"]["epochs"]["mean"] for x in (c["a"], c["b"])]
    assert c["epochs"]["learned"] == (min(means) > 10 + LEARNED)  # 10 classes: chance is 10%
    assert c["epochs"]["verdict"] == verdict(
        c["epochs"]["low"], c["epochs"]["high"], c["expected"], c["epochs"]["learned"]
    )
    table = (out / "README.md").read_text()
    assert table.count("[depth](depth.md)") == 2 and "1-epochs" in table and "1-seconds" in table
    assert table.count(CLAIMS["depth"].paper_numbers) == 1  # the paper's numbers once per claim, not per row
    assert "Not run yet: tokens, budget, mixer, overlap " in table  # the claims with no page of this protocol
    img = Image.open(out / "depth.png").convert("L")
    assert max(img.getextrema()) > min(img.getextrema())
    (page,) = [fig for fig in drawn if fig is not None and fig.get_suptitle() == CLAIMS["depth"].question]
    assert all(float(tick).is_integer() for tick in page.axes[0].get_xticks())  # the epoch axis: whole epochs
    monkeypatch.undo()
    for fig in drawn:
        plt.close(fig)
    # the same command again reads the runs back
    checkpoints = sorted((tmp_path / "runs").rglob("last.pth.tar"))
    stamps = [p.stat().st_mtime_ns for p in checkpoints]
    run_claim("depth", **kwargs)
    assert [p.stat().st_mtime_ns for p in checkpoints] == stamps and len(stamps) == 8
    # claim (a)'s Figure 2 view, once the hard split's first seed has trained beside the T2T arm
    budget = dict(data="digits", seeds=[0, 1], epochs=1, seconds=1.0, output=str(tmp_path / "runs"))
    assert feature_maps(budget, out) == []
    hard = run_dir(budget["output"], "1-epochs", "hard split", 0)
    train(
        resolve_config(
            RECIPE,
            dict(
                ARMS["hard split"],
                data="digits",
                epochs=1,
                train_subset=300,
                output=str(hard.parent),
                name=hard.name,
            ),
        ),
        progress=False,
    )
    assert feature_maps(budget, out) == ["tokens_features_0.png", "tokens_features_1.png"]
    img = Image.open(out / "tokens_features_0.png").convert("L")
    assert max(img.getextrema()) > min(img.getextrema())


def test_mean_difference_is_welchs_interval():
    a, b = [90.1, 91.3, 90.7], [88.0, 89.9, 88.4, 89.1]
    diff, low, high = mean_difference(a, b)
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert diff == pytest.approx(sum(a) / 3 - sum(b) / 4) and (low, high) == pytest.approx((ci.low, ci.high))
    assert all(math.isnan(v) for v in mean_difference([90.0], [89.0, 88.0])[1:])  # one run: no interval


@pytest.mark.parametrize(
    "low,high,expected,answer",
    [
        (0.2, 1.5, ">", "holds"),
        (-1.5, -0.2, ">", "does not hold"),
        (-0.2, 1.5, ">", "inconclusive"),
        (-0.8, 0.9, "=", "holds"),
        (1.2, 2.0, "=", "does not hold"),
        (-2.0, -1.0, "=", "does not hold"),
        (0.5, 1.5, "=", "inconclusive"),
        (math.nan, math.nan, ">", "inconclusive"),
    ],
)
def test_verdicts_follow_the_interval(low, high, expected, answer):
    assert verdict(low, high, expected) == answer


def test_arms_that_learned_nothing_get_no_verdict():
    assert verdict(-0.1, 0.1, "=", learned=False) == verdict(0.5, 2.0, ">", learned=False) == "inconclusive"


def test_arms_compared_are_matched_in_cost_or_say_why_not():
    """Every compared pair is within 10% in parameters and MACs, except where the claim is the cost itself (the
    stride-1 first split spends more MACs on more tokens)."""
    unmatched = set()
    for claim in CLAIMS.values():
        for a, b, _ in claim.comparisons:
            (pa, ma), (pb, mb) = arm_cost(a), arm_cost(b)
            if abs(pb / pa - 1) > MATCH or abs(mb / ma - 1) > MATCH:
                unmatched.add((a, b))
    assert unmatched == {("T2T, first split stride 1", "T2T")}


def test_the_mixer_page_times_its_arms_side_by_side():
    arms = CLAIMS["mixer"].arms
    speeds = arm_step_speeds(arms, repeats=1, warmup=0)
    assert list(speeds) == arms and all(v > 0 for v in speeds.values())
    budget = dict(data="digits", seeds=[0, 1], epochs=1, seconds=1.0, train_subset=None, command="c")
    summary = dict(
        claim="mixer",
        budget=budget,
        budget_names={},
        comparisons=[],
        arms={},
        environment=dict(commit="abc", machine="m", torch="t", python="p"),
        step_img_per_s={arms[0]: 100.0, arms[1]: 125.0},
    )
    assert f"{arms[0]} 100 img/s (1.00x), {arms[1]} 125 img/s (1.25x)." in claim_markdown(summary)


def test_budgets_parse_and_bad_ones_name_the_fix():
    assert [parse_seconds(t) for t in ("600", "600s", "10m", "1.5h")] == [600, 600, 600, 5400]
    for bad in ("ten minutes", "-5s", "0", "nan"):
        with pytest.raises(InputError, match="600s, 10m or 1.5h"):
            parse_seconds(bad)


def test_results_name_the_commit_also_in_a_copy_without_git(tmp_path):
    """The GPU machine gets the tree without `.git`: its pages take the commit that `make gpu-pack` wrote."""
    shutil.copytree(Path(__file__).parents[1] / "src", tmp_path / "src")
    probe = (
        "import pathlib; from t2t_vit.study.report import source_commit; print(source_commit()); "
        "pathlib.Path('.gpu').mkdir(); pathlib.Path('.gpu/COMMIT').write_text('abc1234\\n'); print(source_commit())"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env=dict(PYTHONPATH=str(tmp_path / "src")),
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert out.stdout.split() == ["unknown", "abc1234"]
