"""Statistics and the report of the study: each arm's final held-out top-1 over seeds, the mean difference of each
comparison with its interval and verdict, and the files: docs/results/<claim>.md, .png, .json (with the measurements
that only the report takes: memory, side-by-side step speeds, feature maps) and README.md's summary table."""

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from ..checkpoint import written_atomically
from ..training.run_dir import RunDir
from .claims import (
    CLAIMS,
    LEARNED,
    LEVEL,
    MATCH,
    RECIPE,
    SAME_MARGIN,
    arm_cost,
    arm_kwargs,
    arm_memory,
    arm_step_speeds,
)
from .runs import arm_runs, budget_names, run_dir

# --- statistics


def mean_difference(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Tuple[float, float, float]:
    """mean(a) - mean(b) and its Welch t interval at `level` (NaN bounds with fewer than 2 runs on a side)."""
    from scipy import stats

    diff = statistics.mean(a) - statistics.mean(b)
    if min(len(a), len(b)) < 2:
        return diff, math.nan, math.nan
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, diff, diff
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    t = float(stats.t.ppf(0.5 + level / 2, df))
    return diff, diff - t * se, diff + t * se


def verdict(low: float, high: float, expected: str, learned: bool = True) -> str:
    """ ">": holds when the interval is above 0, does not hold when below; "=": holds inside +-SAME_MARGIN, does
    not hold when wholly outside it; else (or NaN, or an arm that has not `learned`) inconclusive."""
    if not learned or math.isnan(low) or math.isnan(high):
        return "inconclusive"
    if expected == ">":
        return "holds" if low > 0 else "does not hold" if high < 0 else "inconclusive"
    if -SAME_MARGIN < low and high < SAME_MARGIN:
        return "holds"
    return "does not hold" if low >= SAME_MARGIN or high <= -SAME_MARGIN else "inconclusive"


def summarize(name: str, budget: Dict[str, Any]) -> Dict[str, Any]:
    """Per arm and budget: final held-out top-1 per seed, mean, sd, img/s; per comparison and budget: the mean
    difference, its interval and the verdict; per arm: parameters, MACs and whether they match the first arm's."""
    claim, names = CLAIMS[name], budget_names(budget["epochs"], budget["seconds"])
    arms: Dict[str, Any] = {}
    for arm in claim.arms:
        params, macs = arm_cost(arm)
        arms[arm] = dict(params=params, macs=macs, budgets={})
        for key, folder in names.items():
            runs = arm_runs(budget["output"], folder, arm, budget["seeds"])
            final = [m["val_top1"][-1] for m in runs]
            arms[arm]["budgets"][key] = dict(
                top1=final,
                mean=statistics.mean(final) if final else math.nan,
                sd=statistics.stdev(final) if len(final) > 1 else math.nan,
                img_per_s=statistics.mean(statistics.median(m["img_per_s"]) for m in runs) if runs else math.nan,
                epochs=[m["epoch"] for m in runs],
                seconds=[m.get("train_s", []) for m in runs],
                curves=[m["val_top1"] for m in runs],
            )
    first = arms[claim.arms[0]]
    for arm in arms.values():
        arm["matched"] = all(abs(arm[k] / first[k] - 1) <= MATCH for k in ("params", "macs"))
    comparisons = []
    for a, b, expected in claim.comparisons:
        row: Dict[str, Any] = dict(a=a, b=b, expected=expected)
        for key in names:
            diff, low, high = mean_difference(
                arms[a]["budgets"][key]["top1"] or [math.nan], arms[b]["budgets"][key]["top1"] or [math.nan]
            )
            chance = 100.0 / arm_kwargs(a)["num_classes"]
            learned = all(arms[x]["budgets"][key]["mean"] > chance + LEARNED for x in (a, b))  # NaN: no runs yet
            row[key] = dict(
                diff=diff, low=low, high=high, learned=learned, verdict=verdict(low, high, expected, learned)
            )
        comparisons.append(row)
    return dict(claim=name, budget=budget, budget_names=names, arms=arms, comparisons=comparisons)


# --- the report


def _plot(summary: Dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # epochs are whole numbers
    for ax, key, xlabel in ((axes[0], "epochs", "epoch"), (axes[1], "time", "training seconds")):
        for arm, s in summary["arms"].items():
            b = s["budgets"][key]
            xs = b["epochs"] if key == "epochs" else b["seconds"]
            color = None
            for x, y in zip(xs, b["curves"]):
                (line,) = ax.plot(
                    x, y, marker="o", ms=3, alpha=0.6, color=color, label=None if color else f"{arm} ({b['mean']:.2f}%)"
                )
                color = line.get_color()
        title = summary["budget_names"][key].replace("-", " ")
        ax.set(xlabel=xlabel, ylabel="held-out top-1 (%)", title=f"budget: {title}, one line per seed")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(CLAIMS[summary["claim"]].question, fontsize=9)
    fig.tight_layout()
    with written_atomically(Path(out)) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _fmt(x: float, spec: str = ".2f") -> str:
    return "-" if x != x else format(x, spec)


def source_commit(mark_changes: bool = False) -> str:
    """The commit this source tree is at: git's; in a copy without `.git` (the GPU machine's), the one `make
    gpu-pack` wrote to `.gpu/COMMIT`; else "unknown". `mark_changes` notes a tree that
    differs from its commit in tracked files."""
    root = Path(__file__).resolve().parents[3]

    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
        except OSError:  # no git installed
            return ""
        return out.stdout.strip() if out.returncode == 0 else ""

    if (root / ".git").exists() and (commit := git("rev-parse", "--short", "HEAD")):
        if mark_changes and git("status", "--porcelain", "--untracked-files=no"):
            commit += " (with uncommitted changes)"
        return commit
    packed = root / ".gpu" / "COMMIT"
    return packed.read_text().strip() if packed.is_file() else "unknown"


def environment() -> Dict[str, str]:
    """What a result file records of where it was made: the commit, the versions and the machine."""
    import torch

    from .. import __version__
    from ..deploy.benchmark import device_name

    machine = f"{device_name('cpu')}, {len(os.sched_getaffinity(0))} cores"
    if torch.cuda.is_available():
        machine = f"{torch.cuda.get_device_name()}, {machine}"
    return dict(
        commit=source_commit(),
        t2t_vit=__version__,
        torch=torch.__version__,
        python=sys.version.split()[0],
        machine=machine,
    )


def write_report(name: str, budget: Dict[str, Any], out_dir: Path, command: str = "") -> Path:
    """docs/results/<name>.md, .png, .json from the run directories of `budget` (the setup `run_claim` returns), and
    the summary table in README.md; `command`: the command line the page quotes (default: the plain one)."""
    budget = dict(budget, command=command)
    summary = summarize(name, budget)
    if name == "mixer":
        summary["memory_mib"] = {arm: arm_memory(arm) for arm in summary["arms"]}
        summary["step_img_per_s"] = arm_step_speeds(list(summary["arms"]))
    summary["environment"] = environment()
    out_dir.mkdir(parents=True, exist_ok=True)
    if name == "tokens":
        summary["feature_maps"] = feature_maps(budget, out_dir)
    (out_dir / f"{name}.json").write_text(json.dumps(summary, indent=1))
    _plot(summary, out_dir / f"{name}.png")
    (out_dir / f"{name}.md").write_text(claim_markdown(summary))
    write_summary_table(out_dir)
    return out_dir / f"{name}.md"


FIGURE_2 = (("T2T", "T2T tokens"), ("hard split", "hard 4x4 split"))  # (arm, label) shown side by side
FIGURE_2_IMAGES = (0, 1)  # test images, by index


def feature_maps(budget: Dict[str, Any], out_dir: Path) -> List[str]:
    """The paper's Figure 2 view for claim (a): the first block's token channels of the T2T and hard-split models
    (first seed, equal-epoch budget) on the same test images, one PNG per image; [] where a model is missing."""
    from ..data.sources import create_dataset
    from ..factory import load_model
    from .visualize import plot_feature_maps

    epochs = budget_names(budget["epochs"], budget["seconds"])["epochs"]
    paths = [RunDir(run_dir(budget["output"], epochs, arm, budget["seeds"][0])).last for arm, _ in FIGURE_2]
    if not all(p.is_file() for p in paths):
        return []
    models = [(label, load_model(p)[0].eval()) for (_, label), p in zip(FIGURE_2, paths)]
    test = create_dataset(budget["data"], "val", False, 3)
    written = []
    for i in FIGURE_2_IMAGES:
        image, _ = test[i]
        picture = out_dir / f"tokens_image_{i}.png"
        image.save(picture)
        written.append(plot_feature_maps(picture, models, out_dir / f"tokens_features_{i}.png", block=0).name)
    return written


def _setup(budget: Dict[str, Any]) -> str:
    seeds = ", ".join(map(str, budget["seeds"]))
    images = f"{budget['train_subset']:,} (a fixed stratified subset)" if budget["train_subset"] else "all 60,000"
    epochs = f"{budget['epochs']} epoch{'s' if budget['epochs'] > 1 else ''}"
    batch = f" at batch {budget['batch']} (the lr scaled with it)" if budget.get("batch") else ""
    return (
        f"{budget['data']}, {images} training images, the test split held out; seeds {seeds}; budgets{batch}: "
        f"{epochs}, and {budget['seconds']:.0f} s of training (each run capped there and evaluated at the cap; "
        "its lr schedule driven by the training seconds, so that it ends there; the capped runs take turns "
        "across the arms, seed by seed)"
    )


def claim_markdown(summary: Dict[str, Any]) -> str:
    claim, budget, env = CLAIMS[summary["claim"]], summary["budget"], summary["environment"]
    first = claim.arms[0]
    lines = [
        f"# {claim.question}",
        "",
        f"**The paper:** {claim.paper} ({claim.paper_numbers}).",
        "",
        f"**Here:** {_setup(budget)}. The `{RECIPE}` recipe otherwise (AdamW, cosine, no mixup).",
        "",
        "| comparison | budget | mean difference (points) | 95% interval | verdict |",
        "|---|---|---:|---|---|",
    ]
    for c in summary["comparisons"]:
        sign = "beats" if c["expected"] == ">" else "matches (within 1 point)"
        for key, label in summary["budget_names"].items():
            r = c[key]
            lines.append(
                f"| {c['a']} {sign} {c['b']} | {label} | {_fmt(r['diff'], '+.2f')} | "
                f"[{_fmt(r['low'], '+.2f')}, {_fmt(r['high'], '+.2f')}] | {r['verdict']} |"
            )
    if any(not c[key].get("learned", True) for c in summary["comparisons"] for key in summary["budget_names"]):
        lines += [
            "",
            f"Inconclusive by rule where an arm's mean top-1 is within {LEARNED:.0f} points of chance: arms that "
            "learned nothing would otherwise match.",
        ]
    lines += [
        "",
        "| arm | params | MMACs / image | matched to " + first + " | budget | top-1 mean ± sd | per seed | "
        "train img/s |",
        "|---|---:|---:|---|---|---:|---|---:|",
    ]
    for arm, s in summary["arms"].items():
        for key, label in summary["budget_names"].items():
            b = s["budgets"][key]
            per_seed, speed = ", ".join(f"{t:.2f}" for t in b["top1"]), _fmt(b["img_per_s"], ".0f")
            matched = "(the reference)" if arm == first else "yes" if s["matched"] else "no"
            lines.append(
                f"| {arm} | {s['params']:,} | {s['macs'] / 1e6:.1f} | {matched} | "
                f"{label} | {_fmt(b['mean'])} ± {_fmt(b['sd'])} | {per_seed} | {speed} |"
            )
    if summary.get("feature_maps"):
        lines += [
            "",
            "The paper's Figure 2 view: the first block's token channels of the T2T and the hard-split model "
            f"(seed {budget['seeds'][0]}, {summary['budget_names']['epochs']} budget) on the same test images, "
            "from `t2t-vit visualize features`.",
            "",
        ]
        lines += [f"![first-block token channels]({name})" for name in summary["feature_maps"]]
    if "memory_mib" in summary:
        lines += [
            "",
            "Peak memory of one training step (batch 128, 28 px): "
            + ", ".join(f"{arm} {mib:.0f} MiB" for arm, mib in summary["memory_mib"].items())
            + ".",
        ]
    if "step_img_per_s" in summary:
        speeds = summary["step_img_per_s"]
        timed = ", ".join(f"{arm} {v:.0f} img/s ({v / speeds[first]:.2f}x)" for arm, v in speeds.items())
        lines += [
            "",
            "Training step side by side (the arms' steps taking turns in one process, batch 128, 28 px, "
            f"fp32; the runs' img/s above come from different hours of a VM whose pace drifts): {timed}.",
        ]
    lines += [
        "",
        f"Matched: parameters and MACs within {MATCH:.0%} of {first}'s. Interval: Welch's t over seeds. "
        f"Verdicts: 'beats' holds when the interval lies above 0 and does not hold when below; 'matches' "
        f"holds when it lies within ±{SAME_MARGIN:g} point; otherwise inconclusive.",
        "",
        f"![held-out top-1 against epochs and training seconds]({summary['claim']}.png)",
        "",
        f"Command: `{budget['command'] or 't2t-vit reproduce ' + summary['claim']}`; commit {env['commit']}, "
        f"{env['machine']}, torch {env['torch']}, Python {env['python']}.",
        "",
    ]
    return "\n".join(lines)


def write_summary_table(out_dir: Path) -> Path:
    """README.md opening with one row per comparison and budget of every claim written so far: the pages in
    `out_dir`, and those of another machine in a folder beside them (e.g. h200/: a budget of its own, so named)."""
    rows, pending, machines = [], [], set()
    for name, claim in CLAIMS.items():
        found = [(out_dir / f"{name}.json", "")] + [(p, p.parent.name) for p in sorted(out_dir.glob(f"*/{name}.json"))]
        summaries = [(json.loads(path.read_text()), folder) for path, folder in found if path.is_file()]
        summaries = [(s, folder) for s, folder in summaries if "comparisons" in s]  # not an earlier format's
        if not summaries:
            pending.append(name)
            continue
        first = len(rows)
        for s, folder in summaries:
            machines.add(s.get("environment", {}).get("machine", "?"))
            page = f"{folder}/{name}.md" if folder else f"{name}.md"
            for c in s["comparisons"]:
                sign = ">" if c["expected"] == ">" else "≈"
                for key, label in s["budget_names"].items():
                    r, a, b = c[key], s["arms"][c["a"]]["budgets"][key], s["arms"][c["b"]]["budgets"][key]
                    paper = claim.paper_numbers if len(rows) == first else ""  # once per claim, on its first row
                    rows.append(
                        f"| [{name}]({page}): {c['a']} {sign} {c['b']} | {paper} | "
                        f"{_fmt(a['mean'])} ± {_fmt(a['sd'])} vs {_fmt(b['mean'])} ± {_fmt(b['sd'])} | "
                        f"[{_fmt(r['low'], '+.2f')}, {_fmt(r['high'], '+.2f')}] | {r['verdict']} | "
                        f"{label}{f' ({folder})' if folder else ''} |"
                    )
    lines = [
        "# The paper's claims at small scale",
        "",
        "| claim | the paper | ours: held-out top-1 (mean ± sd over seeds) | 95% interval of the difference | "
        "verdict | budget |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"Fashion-MNIST at 28 px on {'; '.join(sorted(machines)) or 'the CPU'}; each claim's page gives the setup, "
        "the arms' cost, every seed and the command. `t2t-vit reproduce CLAIM` re-runs one.",
        "",
    ]
    if pending:
        lines += [
            f"Not run yet: {', '.join(pending)} (a page of theirs here, if any, comes from an earlier protocol).",
            "",
        ]
    path = out_dir / "README.md"
    path.write_text("\n".join(lines))
    return path
