"""`make gpu-study`'s dry run (one claim, one seed: it stays cheap) and the names it gives a GPU's results."""

import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from .helpers import benchmark_script

ROOT = Path(__file__).resolve().parents[1]
gpu_study = benchmark_script("gpu_study")


@pytest.mark.parametrize(
    "reported, folder",
    [
        ("NVIDIA H200", "h200"),
        ("NVIDIA H100 80GB HBM3", "h100"),  # the last word would name the memory, not the GPU
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("NVIDIA GeForce RTX 3090", "rtx-3090"),
        ("NVIDIA RTX A6000", "rtx-a6000"),
        ("NVIDIA L40S", "l40s"),
        ("Tesla T4", "t4"),
        ("Tesla V100-SXM2-16GB", "v100"),
    ],
)
def test_a_gpu_gets_the_folder_of_its_model_name(reported, folder):
    assert gpu_study.machine_name(reported) == folder


def test_the_gpu_study_dry_run_writes_the_pages_of_the_claims_asked(tmp_path):
    results, out = tmp_path / "results", tmp_path / "out"
    cmd = [sys.executable, "benchmarks/gpu_study.py", "--dry-run", "--results", str(results), "--out", str(out)]
    proc = subprocess.run(
        [*cmd, "--seeds", "1", "--claims", "overlap"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 epochs: 2 runs" in proc.stdout and "0 problems" in proc.stdout
    summary = json.loads((results / "overlap.json").read_text())
    assert set(summary["arms"]) == {"T2T", "T2T, kernel = stride"} and summary["budget"]["seeds"] == [0]
    assert (
        summary["budget"]["command"] == "python benchmarks/gpu_study.py --dry-run --seeds 1 --claims overlap"
    )  # the run as asked (one seed, one claim), not all claims; the local paths left out
    assert not (results / "depth.json").exists()  # a claim not asked for is not run
    with tarfile.open(out / "gpu_study.tar.gz") as tar:
        assert {"overlap.md", "overlap.json"} <= {Path(n).name for n in tar.getnames()}


def test_a_claim_not_in_the_study_is_named_with_the_choices(capsys):
    with pytest.raises(SystemExit) as stop:
        gpu_study.main(["--dry-run", "--claims", "mixer,mixr"])
    assert stop.value.code == 2
    assert "--claims mixer,mixr: mixr; take from tokens, budget, mixer, depth, overlap" in capsys.readouterr().err


def test_a_run_that_outlives_its_sigterm_at_the_deadline_is_killed_so_the_pages_still_get_written(
    tmp_path, monkeypatch
):
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); time.sleep(60)"
    real_popen = subprocess.Popen

    def popen(cmd, **kwargs):
        proc = real_popen([sys.executable, "-c", stubborn], **dict(kwargs, stdout=subprocess.PIPE))
        proc.stdout.readline()  # SIGTERM is ignored from here on
        return proc

    monkeypatch.setattr(gpu_study.subprocess, "Popen", popen)
    monkeypatch.setattr(gpu_study, "STOP_GRACE", 1)
    overrides = dict(output=str(tmp_path / "runs"), name="t2t-s0", data="digits", epochs=1)
    start = time.monotonic()
    name, seconds, error = gpu_study._train(overrides, tmp_path, time.monotonic() + 1)
    assert name == "runs/t2t-s0" and error == "killed 1 s after SIGTERM (its last checkpoint stands)"
    assert time.monotonic() - start < 20


@pytest.mark.parametrize("option", ["--seeds", "--epochs", "--batch-size", "--jobs"])
def test_a_count_under_one_is_named(option, capsys):
    with pytest.raises(SystemExit) as stop:
        gpu_study.main(["--dry-run", option, "0"])
    assert stop.value.code == 2 and f"{option} 0: give 1 or more" in capsys.readouterr().err
