"""CPU deployment runtimes: onnxruntime and OpenVINO against eager PyTorch, int8 weights, the ONNX cache, threads,
missing libraries and bad input, and `predict` / `benchmark` with --runtime."""

import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from t2t_vit import InputError, load_model
from t2t_vit.cli import main
from t2t_vit.deploy import runtimes as rt
from t2t_vit.deploy import speed

from .helpers import (
    DIGIT_CLASSES,
    TINY_DATA_CONFIG,
    assert_close_reordered,
    digit_files,
    image_folder,
    network_reorder_tolerance,
    one_line_error,
)

ISOLATED = "T2T_VIT_TEST_ISOLATED"  # set in a child pytest that runs one case away from the others

pytest.importorskip("onnxruntime", reason="needs pip install 't2t-vit[deploy]'")
pytest.importorskip("onnx", reason="needs pip install 't2t-vit[deploy]'")

RUNTIMES = ["onnxruntime", "openvino"]


@pytest.fixture(autouse=True)
def user_cache(tmp_path, monkeypatch) -> Path:
    """Never the real ~/.cache: the user cache dir of each test is its own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "t2t_vit" / "onnx"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_checkpoint) -> Path:
    """The tiny checkpoint in a folder of this module's: the runtimes cache their ONNX exports beside it."""
    path = tmp_path_factory.mktemp("runtime") / tiny_checkpoint.name
    shutil.copy2(tiny_checkpoint, path)
    return path


@pytest.fixture
def own_checkpoint(tmp_path, checkpoint) -> Path:
    """A copy in this test's folder, for tests that change it or watch its cache."""
    path = tmp_path / "run" / "last.pth.tar"
    path.parent.mkdir()
    shutil.copy2(checkpoint, path)
    return path


def _images(seed: int = 0, batch: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, 16, 16), dtype=np.float32)


def _needs(runtime: str) -> None:
    pytest.importorskip(runtime, reason="needs pip install 't2t-vit[deploy]'")


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_fp32_logits_equal_eager_pytorch(checkpoint, runtime):
    _needs(runtime)
    runner = rt.load_runner(str(checkpoint), runtime=runtime)
    model, _ = load_model(checkpoint)
    for batch in (1, 3):  # the batch axis is dynamic
        x = _images(batch, batch)
        with torch.inference_mode():
            expected = model.eval()(torch.from_numpy(x))
        logits = torch.from_numpy(runner(x))
        # The same fp32 function, its sums in another order (each runtime's GEMMs and fused kernels): elements may
        # differ by the reordered-sum bound of the longest reduction, 2 K u |logit|max with u = 2^-24 and K = 256
        # (the first soft split's 16 x 16 tokens): ~3e-5 x the largest logit, below 1e-4 for logits up to 3.
        assert_close_reordered(logits, expected, network_reorder_tolerance(model, expected, 16))
        assert (logits - expected).abs().max() < 1e-4
    assert runner.meta["class_names"] == DIGIT_CLASSES and runner.name == f"{runtime} fp32"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_int8_weights_keep_the_logits_and_the_top1(checkpoint, runtime, request):
    _needs(runtime)
    if runtime == "openvino":
        _needs("nncf")
        if not os.environ.get(ISOLATED):
            # NNCF leaves this process so that a later SIGTERM (the resume tests send one) ends in a segfault:
            # run this case in a pytest of its own
            import subprocess

            env = dict(os.environ, **{ISOLATED: "1"})
            cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", request.node.nodeid]
            child = subprocess.run(cmd, cwd=request.config.rootpath, env=env, capture_output=True, text=True)
            assert child.returncode == 0, child.stdout[-3000:] + child.stderr[-2000:]
            return
    fp32 = rt.load_runner(str(checkpoint), runtime=runtime)
    int8 = rt.load_runner(str(checkpoint), runtime=runtime, int8=True)
    x = _images(0, 32)
    a, b = fp32(x), int8(x)
    # Each quantized MatMul rounds its weights to 128 (onnxruntime: reduced range) or 256 (OpenVINO) levels of each
    # output channel's range, and onnxruntime also its input to 256 levels of the tensor's: for values spread over
    # ~8 standard deviations, an error of step / sqrt(12) = 0.9-1.8% of their rms per quantized tensor. The ~16
    # quantized tensors here (weights and inputs of the T2T layers, the projection, one block) add like a random
    # walk, to at most ~5% of the logits' norm (measured: 0.8% onnxruntime, 0.4% OpenVINO); the bound is twice that.
    # A wrong scale or zero point errs by the logits' own size (100%); no quantization at all, by 0.
    rel = np.linalg.norm(a - b) / np.linalg.norm(a)
    assert 0 < rel < 0.1, rel
    res = speed.top1_agreement(fp32, int8, "digits")
    assert res["n"] == 360 and res["agreement"] >= 0.95, res
    assert abs(res["other_top1"] - res["reference_top1"]) <= 1 - res["agreement"]
    line = f"int8 top-1 agreement with fp32 on digits: {100 * res['agreement']:.1f}% (360 images)"
    assert speed.format_agreement(res).startswith(line)
    if runtime == "onnxruntime":
        import onnx

        path = checkpoint.with_name(checkpoint.name + ".onnx")
        ops = {n.op_type for n in onnx.load(str(path.with_suffix(".int8.onnx"))).graph.node}
        assert "MatMulInteger" in ops and path.with_suffix(".int8.onnx").stat().st_size < path.stat().st_size


def test_plain_weights_folds_and_transposes_what_old_onnxruntime_quantizes_wrong(checkpoint):
    """The export has a MatMul of two initializers (the T2T layers' folded LayerNorm) and a Gemm with transB=1 whose
    weight its queries and keys share (the Performer's features): onnxruntime before 1.32 quantizes both into models
    that do not load or run. Rewritten, neither is left, and the graph computes the same logits."""
    import onnx
    import onnxruntime as ort

    from t2t_vit.deploy.onnx_graph import plain_weights

    rt.load_runner(str(checkpoint), runtime="onnxruntime")
    graph = onnx.load(str(checkpoint.with_name(checkpoint.name + ".onnx")))
    rng = np.random.default_rng(0)
    for t in graph.graph.initializer:  # no zeros (LayerNorm's biases at init) to hide a wrong product
        w = onnx.numpy_helper.to_array(t)
        if w.dtype == np.float32:
            t.CopyFrom(onnx.numpy_helper.from_array(w + 0.1 * rng.standard_normal(w.shape, dtype=np.float32), t.name))
    before = graph.SerializeToString()

    def weights(m):
        return {t.name for t in m.graph.initializer}

    def constant_matmuls(m):
        return [n for n in m.graph.node if n.op_type == "MatMul" and set(n.input) <= weights(m)]

    def transposed_gemms(m):
        return [n for n in m.graph.node if n.op_type == "Gemm" and any(a.name == "transB" and a.i for a in n.attribute)]

    assert constant_matmuls(graph) and transposed_gemms(graph)  # what the rewrite is for is there
    shared = {n.input[1] for n in transposed_gemms(graph)}
    count = len(constant_matmuls(graph)) + len(transposed_gemms(graph))
    assert plain_weights(graph) == count
    assert not constant_matmuls(graph) and not transposed_gemms(graph) and not shared & weights(graph)
    onnx.checker.check_model(graph)
    x = _images(1, 3)
    old, new = (
        ort.InferenceSession(g, providers=["CPUExecutionProvider"]) for g in (before, graph.SerializeToString())
    )
    expected = torch.from_numpy(old.run(None, {"images": x})[0])
    # the folded product is summed in another order: the reordered-sum bound, as for eager PyTorch above
    model, _ = load_model(checkpoint)
    bound = network_reorder_tolerance(model, expected, 16)
    assert_close_reordered(torch.from_numpy(new.run(None, {"images": x})[0]), expected, bound)


def test_the_onnx_cache_is_written_once_reused_and_renewed(own_checkpoint, monkeypatch):
    exports = []
    real_export = rt.export_onnx

    def counting_export(model, path, meta):
        exports.append(path)
        real_export(model, path, meta)

    monkeypatch.setattr(rt, "export_onnx", counting_export)
    cache = own_checkpoint.with_name("last.pth.tar.onnx")
    first = rt.load_runner(str(own_checkpoint), runtime="onnxruntime")
    rt.load_runner(str(own_checkpoint), runtime="onnxruntime")
    assert len(exports) == 1 and cache.is_file() and exports[0] != cache  # written to a temporary name, then renamed
    assert sorted(p.name for p in own_checkpoint.parent.iterdir()) == ["last.pth.tar", "last.pth.tar.onnx"]

    model, meta = load_model(own_checkpoint)  # the checkpoint changes: new weights, a new mtime
    with torch.no_grad():
        model.head.bias.add_(1.0)
    torch.save({"model": model.state_dict(), "meta": dict(meta, data_config=TINY_DATA_CONFIG)}, own_checkpoint)
    stat = own_checkpoint.stat()
    os.utime(own_checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    second = rt.load_runner(str(own_checkpoint), runtime="onnxruntime")
    assert len(exports) == 2
    x = _images()
    np.testing.assert_allclose(second(x), first(x) + 1.0, atol=1e-5)  # the new weights, not the cached ones
    rt.load_runner(str(own_checkpoint), runtime="onnxruntime", use_ema=False)  # raw weights: another export
    assert len(exports) == 3

    cache.write_bytes(b"half a file")  # a damaged cache is made again, not trusted
    rt.load_runner(str(own_checkpoint), runtime="onnxruntime", use_ema=False)
    assert len(exports) == 4

    import onnxruntime.quantization

    quantized, real_quantize = [], onnxruntime.quantization.quantize_dynamic
    monkeypatch.setattr(
        onnxruntime.quantization,
        "quantize_dynamic",
        lambda *args, **kwargs: quantized.append(args) or real_quantize(*args, **kwargs),
    )
    for _ in range(2):  # the int8 model is cached too, beside the fp32 one
        rt.load_runner(str(own_checkpoint), runtime="onnxruntime", use_ema=False, int8=True)
    assert len(quantized) == 1 and len(exports) == 4 and cache.with_suffix(".int8.onnx").is_file()


def test_an_interrupted_export_leaves_no_file(own_checkpoint, monkeypatch):
    def dies_halfway(model, path, meta):
        Path(path).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(rt, "export_onnx", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        rt.load_runner(str(own_checkpoint), runtime="onnxruntime")
    assert [p.name for p in own_checkpoint.parent.iterdir()] == ["last.pth.tar"]


def test_a_read_only_checkpoint_folder_caches_in_the_user_dir(own_checkpoint, user_cache, monkeypatch, caplog):
    real_access = os.access  # as root, os.access says yes to everything: tell it the folder is read-only

    def access(path, mode, **kwargs):
        if Path(path) == own_checkpoint.parent and mode & os.W_OK:
            return False
        return real_access(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", access)
    with caplog.at_level(logging.INFO, logger="t2t_vit.deploy.runtimes"):
        rt.load_runner(str(own_checkpoint), runtime="onnxruntime", int8=True)
    assert "is not writable: caching the ONNX model in" in caplog.text
    assert [p.name for p in own_checkpoint.parent.iterdir()] == ["last.pth.tar"]
    fp32 = rt.checkpoint_cache_paths(own_checkpoint)[1]
    assert fp32.parent == user_cache and fp32.is_file() and fp32.with_suffix(".int8.onnx").is_file()


def test_threads_reach_each_runtime(checkpoint):
    runner = rt.load_runner(str(checkpoint), runtime="onnxruntime", threads=2)
    options = runner.engine.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads, runner.threads) == (2, 1, 2)
    assert rt.load_runner(str(checkpoint), runtime="onnxruntime").engine.get_session_options().intra_op_num_threads == 0
    saved = torch.get_num_threads()
    try:
        rt.load_runner(str(checkpoint), runtime="torch", threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(saved)
    ov = pytest.importorskip("openvino", reason="needs pip install 't2t-vit[deploy]'")
    runner = rt.load_runner(str(checkpoint), runtime="openvino", threads=1)
    assert runner.engine.get_property("INFERENCE_NUM_THREADS") == 1
    assert runner.engine.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32  # not bf16 where the CPU has it


@pytest.mark.parametrize(
    "missing, argv",
    [
        ("onnxruntime", ["--runtime", "onnxruntime"]),
        ("openvino", ["--runtime", "openvino"]),
        ("nncf", ["--runtime", "openvino", "--int8"]),
        ("onnx", ["--runtime", "openvino"]),
    ],
)
def test_a_missing_runtime_library_names_the_extra(checkpoint, tmp_path, monkeypatch, capsys, missing, argv):
    if argv[1] != missing:
        _needs(argv[1])  # the runtime itself is imported first: with it absent, the error names it
    monkeypatch.setitem(sys.modules, missing, None)  # `import missing` raises ImportError
    with pytest.raises(InputError, match=rf"needs {missing}, which is not installed: pip install 't2t-vit\[deploy\]'"):
        rt.load_runner(str(checkpoint), runtime=argv[1], int8="--int8" in argv)
    assert main(["predict", str(tmp_path), "--checkpoint", str(checkpoint), *argv]) == 2
    one_line_error(capsys, "t2t-vit predict: error:", "pip install 't2t-vit[deploy]'")


def test_bad_input_is_one_line(checkpoint, tmp_path, capsys):
    img = digit_files(tmp_path / "imgs", 1)[0]
    assert main(["predict", str(img), "--checkpoint", str(checkpoint), "--int8"]) == 2
    one_line_error(capsys, "--int8", "use --runtime onnxruntime or --runtime openvino")
    assert main(["benchmark", "--model", "t2t_vit_7", "--int8"]) == 2
    one_line_error(capsys, "t2t-vit benchmark: error:", "--runtime onnxruntime")
    assert (
        main(["predict", str(img), "--checkpoint", str(checkpoint), "--runtime", "onnxruntime", "--device", "cuda"])
        == 2
    )
    one_line_error(capsys, "--device and --precision apply to --runtime torch")
    assert main(["benchmark", "--model", "t2t_vit_7", "--runtime", "onnxruntime", "--mode", "train"]) == 2
    one_line_error(capsys, "--mode train: for --runtime torch only")
    assert main(["benchmark", "--model", "t2t_vit_7", "--runtime", "onnxruntime", "--agreement", "digits"]) == 2
    one_line_error(capsys, "--agreement needs --checkpoint")
    assert main(["benchmark", "--runtime", "onnxruntime"]) == 2
    one_line_error(capsys, "--model NAME")


def test_cli_predict_with_onnxruntime_names_the_classes_torch_names(checkpoint, tmp_path, capsys):
    digit_files(tmp_path / "imgs", 6)
    base = ["predict", str(tmp_path / "imgs"), "--checkpoint", str(checkpoint), "--top-k", "3", "--batch-size", "4"]
    outputs = {}
    for runtime in ("torch", "onnxruntime"):
        assert main([*base, "--runtime", runtime, "--json"]) == 0
        outputs[runtime] = json.loads(capsys.readouterr().out)
    assert len(outputs["torch"]) == 6
    for a, b in zip(outputs["torch"], outputs["onnxruntime"]):
        assert a["file"] == b["file"] and [t["class"] for t in a["top_k"]] == [t["class"] for t in b["top_k"]]
        np.testing.assert_allclose([t["prob"] for t in a["top_k"]], [t["prob"] for t in b["top_k"]], atol=1e-5)
    assert main([*base, "--runtime", "onnxruntime", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(": ")[0] for line in lines] == [r["file"] for r in outputs["torch"]]
    exported = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--output", str(exported)]) == 0
    capsys.readouterr()
    base[base.index(str(checkpoint))] = str(exported)
    assert main([*base, "--json"]) == 0  # an .onnx file without --runtime: onnxruntime, which can run it
    assert json.loads(capsys.readouterr().out) == outputs["onnxruntime"]


def test_cli_benchmark_json_reports_speed_per_runtime(checkpoint, user_cache, capsys):
    quick = ["--batch-size", "2", "--warmup", "1", "--repeats", "2", "--threads", "1", "--json"]
    assert main(["benchmark", "--runtime", "onnxruntime", "--checkpoint", str(checkpoint), *quick]) == 0
    res = json.loads(capsys.readouterr().out)
    assert (res["runtime"], res["threads"], res["int8"]) == ("onnxruntime", 1, False)
    assert (res["batch_size"], res["img_size"]) == (2, 16)
    assert res["img_per_s"] > 0 and res["latency_ms"] > 0
    assert res["img_per_s"] == pytest.approx(2 * 1e3 / res["latency_ms"])
    # a model with random weights: its export cached in the user dir under its name and size
    random_weights = ["--model", "t2t_vit_7", "--img-size", "32", "--int8"]
    assert main(["benchmark", "--runtime", "onnxruntime", *random_weights, *quick]) == 0
    res = json.loads(capsys.readouterr().out)
    assert (res["model"], res["int8"], res["img_size"]) == ("t2t_vit_7", True, 32) and res["latency_ms"] > 0
    assert (user_cache / "t2t_vit_7_32px.onnx").is_file() and (user_cache / "t2t_vit_7_32px.int8.onnx").is_file()


def test_cli_benchmark_agreement_line(checkpoint, capsys):
    argv = [
        "benchmark",
        "--runtime",
        "onnxruntime",
        "--int8",
        "--checkpoint",
        str(checkpoint),
        "--batch-size",
        "2",
        "--warmup",
        "0",
        "--repeats",
        "1",
        "--agreement",
        "digits",
        "--agreement-images",
        "100",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "int8 top-1 agreement with fp32 on digits: " in out and "% (100 images)" in out, out


def test_torch_benchmark_reports_latency_and_honours_threads():
    from t2t_vit.deploy.benchmark import BenchConfig

    saved = torch.get_num_threads()
    try:
        cfg = BenchConfig("t2t_vit_7", img_size=32, batch_size=2, warmup=0, repeats=1)
        res = speed.benchmark_torch(cfg, threads=1, memory=False, peak_gflops=1.0)
    finally:
        torch.set_num_threads(saved)
    assert res["threads"] == 1 and res["runtime"] == "torch" and res["int8"] is False
    assert res["results"]["sdpa"]["latency_ms"] == res["results"]["sdpa"]["step_ms"] > 0


def test_cli_runtime_choices_are_the_library_ones():
    from t2t_vit.cli import common

    assert common.RUNTIMES == rt.RUNTIMES


def test_agreement_scores_a_held_out_split_by_the_models_class_numbers(checkpoint, tmp_path):
    """Without class '0', an ImageFolder's val/ numbers '1' as 0: the accuracy is taken by the model's numbers, so
    the split without '0' and the split of '0' alone add up to the whole (the model names its classes)."""
    runner = rt.load_runner(str(checkpoint), runtime="torch")
    whole = image_folder(tmp_path / "whole", classes=DIGIT_CLASSES, per_class=3)
    shutil.copytree(whole, tmp_path / "rest")
    shutil.rmtree(tmp_path / "rest" / "val" / "0")
    shutil.copytree(whole, tmp_path / "zero")
    for name in DIGIT_CLASSES[1:]:
        shutil.rmtree(tmp_path / "zero" / "val" / name)
    right = {p: speed.top1_agreement(runner, runner, str(tmp_path / p)) for p in ("whole", "rest", "zero")}
    assert [right[p]["n"] for p in right] == [30, 27, 3]
    count = {p: round(r["reference_top1"] * r["n"]) for p, r in right.items()}
    assert count["rest"] + count["zero"] == count["whole"]


def test_cli_eval_runs_the_onnx_export_and_scores_as_torch(checkpoint, tmp_path, capsys):
    """eval --runtime: the same held-out split, preprocessing and scores as PyTorch's eval. The fp32 logits differ by
    reordered sums (below 1e-4, test_fp32_logits_equal_eager_pytorch): the loss within that, and the hits may differ
    only where two logits tie that closely, allowed for one image of the 360."""
    base = ["eval", "--checkpoint", str(checkpoint), "--data", "digits", "--workers", "0", "--no-progress"]

    def scores(argv):
        assert main(argv) == 0, argv
        line = capsys.readouterr().out
        return line, [float(v) for v in re.findall(r"(?:top-1|top-5|loss) ([\d.]+)", line)]

    _, torch_scores = scores(base)
    line, onnx_scores = scores([*base, "--runtime", "onnxruntime"])
    assert "(onnxruntime fp32) on digits (360 images)" in line
    assert all(abs(a - b) <= 100 / 360 + 1e-6 for a, b in zip(onnx_scores[:2], torch_scores[:2]))
    assert abs(onnx_scores[2] - torch_scores[2]) < 1.5e-4  # printed to 4 places: one rounding step apart at most
    exported = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--output", str(exported)]) == 0
    capsys.readouterr()
    line, file_scores = scores([*base[:2], str(exported), *base[3:]])  # an .onnx file: onnxruntime by default
    assert "(onnxruntime fp32)" in line and file_scores == onnx_scores
    assert main([*base, "--runtime", "onnxruntime", "--precision", "bf16"]) == 2
    one_line_error(capsys, "t2t-vit eval: error: --runtime onnxruntime evaluates", "drop --precision bf16")
    assert main([*base, "--int8"]) == 2
    one_line_error(capsys, "--threads and --int8 go with --runtime onnxruntime or openvino")


def test_cli_eval_in_a_runtime_refuses_data_of_another_class_count(own_checkpoint, capsys):
    """A head of 7 classes without names (as an authors' release has none) scored on the 10 digits: the error of
    PyTorch's eval, not an index error from the loss."""
    saved = torch.load(own_checkpoint, weights_only=True)
    saved["meta"].update(class_names=None, model_kwargs={**saved["meta"]["model_kwargs"], "num_classes": 7})
    for key in ("head.weight", "head.bias"):
        saved["model"][key] = saved["model"][key][:7]
    torch.save(saved, own_checkpoint)
    base = ["eval", "--checkpoint", str(own_checkpoint), "--data", "digits", "--workers", "0", "--no-progress"]
    expected = "the model's head has 7 classes but digits has 10: evaluate on the data it was trained on"
    assert main([*base, "--runtime", "onnxruntime"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and expected in err.strip().splitlines()[-1], err


def test_cli_eval_in_a_runtime_under_torchrun_of_several_processes_says_to_run_it_in_one(
    checkpoint, monkeypatch, capsys
):
    """onnxruntime and OpenVINO score in one process: each of torchrun's would score every image."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    argv = ["eval", "--checkpoint", str(checkpoint), "--data", "digits", "--runtime", "onnxruntime", "--no-progress"]
    assert main(argv) == 2
    one_line_error(capsys, "--runtime onnxruntime scores in one process", "run it without torchrun (here 2 processes)")
