"""`make gpu-check`'s dry run: the script runs on the CPU at tiny sizes, so it cannot rot between the rare sessions
that are lent a GPU."""

import ast
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .helpers import benchmark_script

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_dry_run_runs_every_section_and_names_what_it_skips(tmp_path):
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    result = json.loads((tmp_path / "cuda.json").read_text())
    checks = {c["name"]: c for c in result["checks"]}
    tests = [c for c in result["checks"] if c["section"] == "tests"]
    assert all(c["status"] == "skipped" and "CUDA is not available" in c["detail"] for c in tests)
    names = [c["name"] for c in tests]  # the two pytest processes together: every CUDA test, once
    module = ast.parse((ROOT / "tests" / "test_cuda.py").read_text())
    defined = {f.name for f in module.body if isinstance(f, ast.FunctionDef) and f.name.startswith("test_")}
    assert len(defined) >= 9 and {n.split("[")[0] for n in names} == defined and len(set(names)) == len(names)
    assert checks["SIGTERM stop and resume"]["status"] == "passed"
    assert checks["benchmark --loader digits"]["status"] == "passed"
    assert {c["status"] for c in result["checks"]} <= {"passed", "skipped"}
    assert all(c["detail"] for c in result["checks"] if c["status"] == "skipped")  # each says why
    rows = {(r["mode"], r["model"], r["variant"]) for r in result["speed"]}
    assert ("train", "t2t_vit_14", "authors' code") in rows and ("infer", "vit_small_patch16_224", "DeiT-S") in rows
    assert all(r["img_per_s"] > 0 and r["mfu_measured"] > 0 for r in result["speed"])
    page = (tmp_path / "cuda.md").read_text()
    assert "## Checks" in page and "## Throughput at 224 px" in page and result["env"]["commit"] in page


def test_a_recheck_runs_the_sections_asked_into_its_own_files_and_a_wrong_section_is_named(
    tmp_path, monkeypatch, capsys
):
    gpu_check = benchmark_script("gpu_check")  # in this process: the sections are stubs (the dry run runs them)
    ran = []

    def cuda_tests(report, work, part):
        ran.append(part)
        report.add("tests", f"pytest -m cuda ({part})", "passed", 0)

    monkeypatch.setattr(gpu_check, "cuda_tests", cuda_tests)
    monkeypatch.setattr(gpu_check, "real_loop", lambda *a: pytest.fail("the loop was not asked for"))
    monkeypatch.setattr(gpu_check.gpu_speed, "peak_flops", lambda *a: pytest.fail("the speed was not asked for"))
    monkeypatch.setattr(gpu_check, "loaders", lambda *a: pytest.fail("the loaders were not asked for"))
    cmd = ["--dry-run", "--out", str(tmp_path)]
    assert gpu_check.main([*cmd, "--sections", "tests", "--name", "cuda_checks"]) == 0
    assert sorted(ran) == sorted(gpu_check.TEST_PARTS)
    assert not (tmp_path / "cuda.md").exists()  # the full run's page is left as it is
    result = json.loads((tmp_path / "cuda_checks.json").read_text())
    assert result["sections"] == ["tests"] and result["speed"] == [] and result["checks"]
    assert {c["section"] for c in result["checks"]} == {"tests"}
    page = (tmp_path / "cuda_checks.md").read_text()
    assert "--sections tests" in page and "Sections run: tests" in page and "Throughput" not in page
    capsys.readouterr()
    with pytest.raises(SystemExit) as wrong:
        gpu_check.main([*cmd, "--sections", "tests,speeed"])
    assert wrong.value.code == 2
    assert "--sections tests,speeed: speeed; take from tests, loop, speed, loaders" in capsys.readouterr().err


def test_the_datasheet_peak_is_the_named_gpus_and_none_for_one_not_in_the_table():
    gpu_speed = benchmark_script("gpu_speed")
    assert gpu_speed.datasheet_peak("NVIDIA H200") == 989.4e12
    assert gpu_speed.datasheet_peak("NVIDIA H100 80GB HBM3") == 989.4e12  # the SXM part
    assert gpu_speed.datasheet_peak("NVIDIA H100 PCIe") == 756.0e12
    assert gpu_speed.datasheet_peak("NVIDIA GeForce RTX 3090") == 71.0e12
    assert gpu_speed.datasheet_peak("Tesla T4") is None


def test_checks_still_running_at_the_deadline_are_killed_and_the_page_is_written(tmp_path):
    cmd = [sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--out", str(tmp_path), "--sections", "loop"]
    start = time.monotonic()
    proc = subprocess.run([*cmd, "--budget", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert time.monotonic() - start < 60  # the SIGTERM check alone takes longer than its 1 s, and is not waited for
    checks = {c["name"]: c for c in json.loads((tmp_path / "cuda.json").read_text())["checks"]}
    sigterm = checks["SIGTERM stop and resume"]
    assert sigterm["status"] == "failed" and sigterm["detail"].startswith(
        "killed at the check's deadline (--budget 1 s)"
    )
    assert "SIGTERM stop and resume" in (tmp_path / "cuda.md").read_text()


def test_a_pytest_killed_mid_test_reports_the_tests_it_ended_and_the_one_it_was_in(tmp_path, monkeypatch):
    gpu_check = benchmark_script("gpu_check")
    log = (
        "tests/test_cuda.py::test_a[bf16] PASSED                                  [ 10%]\n"
        "tests/test_cuda.py::test_b SKIPPED (CUDA is not available)               [ 20%]\n"
        "tests/test_cuda.py::test_c FAILED                                        [ 30%]\n"
        "tests/test_cuda.py::test_torchrun "
    )
    monkeypatch.setattr(gpu_check, "_run", lambda cmd, cwd, timeout: subprocess.CompletedProcess(cmd, -9, log, ""))
    report = gpu_check.Report(dry=True)
    gpu_check.cuda_tests(report, tmp_path, "others")
    got = [(c["name"], c["status"]) for c in report.checks]
    assert got == [("test_a[bf16]", "passed"), ("test_b", "skipped"), ("test_c", "failed"), ("test_torchrun", "failed")]
    assert "tests/test_cuda.py::test_torchrun" in report.checks[-1]["detail"]
    assert (tmp_path / "cuda_tests_others.log").read_text() == log
