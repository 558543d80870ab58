"""The fast path against the authors' eager one: same outputs and gradients; the benchmark command's contract."""

import json

import pytest
import timm
import torch
import torch.nn.functional as F

from t2t_vit.deploy import benchmark
from t2t_vit.errors import InputError
from t2t_vit.models import tokens_to_token
from t2t_vit.models.cost import model_cost
from t2t_vit.models.kernels import patch_major, soft_split_channels_last
from t2t_vit.models.tokens_to_token import soft_split

from .helpers import (
    SMALL,
    assert_close_reordered,
    network_reorder_tolerance,
    reordered_sum_tolerance,
)


def _pair(name: str, **kwargs):
    torch.manual_seed(0)
    fast = timm.create_model(name, **SMALL, **kwargs).eval()
    eager = timm.create_model(name, attn_impl="eager", **SMALL, **kwargs).eval()
    eager.load_state_dict(fast.state_dict())
    return fast, eager


def _outputs_and_grads(model: torch.nn.Module, x: torch.Tensor):
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    out = model(x)
    (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()  # a loss that weighs every logit differently
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), x.grad, grads


@pytest.mark.parametrize("name", ["t2t_vit_7", "t2t_vit_t_14"])
@pytest.mark.parametrize("slice_tokens", [tokens_to_token.CPU_SLICE_TOKENS, 256])  # 256: one image per slice
def test_fast_equals_eager_outputs_and_gradients(name, slice_tokens, monkeypatch):
    monkeypatch.setattr(tokens_to_token, "CPU_SLICE_TOKENS", slice_tokens)
    fast, eager = _pair(name)
    x = torch.randn(3, 3, 64, 64)
    out_f, dx_f, grads_f = _outputs_and_grads(fast, x)
    out_e, dx_e, grads_e = _outputs_and_grads(eager, x)
    assert_close_reordered(out_f, out_e, network_reorder_tolerance(fast, out_f, 64))
    assert_close_reordered(dx_f, dx_e, network_reorder_tolerance(fast, dx_f, 64, batch=3))
    assert grads_f.keys() == grads_e.keys() and len(grads_f) == sum(p.requires_grad for p in fast.parameters())
    for key in grads_f:  # each gradient at its own magnitude; weight gradients sum over the batch's tokens
        assert_close_reordered(grads_f[key], grads_e[key], network_reorder_tolerance(fast, grads_f[key], 64, batch=3))


@pytest.mark.parametrize("name", ["t2t_vit_7", "t2t_vit_t_14"])
def test_fast_equals_eager_on_other_sizes(name):
    """Non-square images and a resampled position table go through the channels-last splits too."""
    fast, eager = _pair(name, dynamic_img_size=True)
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        out = fast(x)
        assert_close_reordered(out, eager(x), network_reorder_tolerance(fast, out, 96, 128))


@pytest.mark.parametrize("slices", [False, True], ids=["strided_copy", "slices_for_onnx"])
@pytest.mark.parametrize("kernel,stride,padding,channels", [(7, 4, 2, 3), (3, 2, 1, 64), (3, 1, 1, 5), (2, 2, 0, 4)])
def test_channels_last_split_is_unfold_with_reordered_features(kernel, stride, padding, channels, slices):
    x = torch.randn(2, channels, 16, 12)
    ours = soft_split_channels_last(x.permute(0, 2, 3, 1), kernel, stride, padding, slices)
    theirs = soft_split(x, kernel, stride, padding)
    assert ours.shape == theirs.shape
    index = patch_major(torch.arange(theirs.shape[-1]).float(), channels).long()
    assert torch.equal(ours, theirs[..., index])
    w = torch.randn(5, theirs.shape[-1])  # a linear layer reading either order gives the same map
    bound = reordered_sum_tolerance(theirs.abs() @ w.abs().t(), theirs.shape[-1])  # the same sums, reordered
    assert_close_reordered(ours @ patch_major(w, channels).t(), theirs @ w.t(), bound)


def test_fast_path_under_bf16_autocast_tracks_fp32():
    fast, _ = _pair("t2t_vit_7")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = fast(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = fast(x).float()
    assert torch.isfinite(low).all() and F.cosine_similarity(low.flatten(), ref.flatten(), dim=0) > 0.99


def _run_cli(argv, capsys):
    from t2t_vit.cli import (
        build_parser,  # the `benchmark` sub-command lives in the CLI package
    )

    args = build_parser().parse_args(["benchmark", *argv])
    args.func(args)
    return capsys.readouterr().out


@pytest.mark.parametrize("name", ["resnet18", "vit_tiny_patch16_224"])  # a CNN: any size; a ViT: told its size
def test_benchmark_times_a_timm_baseline_at_the_size_asked(capsys, monkeypatch, name):
    """`--model timm:NAME` as `train` takes it; its cost raised timm's "Unknown model source 'timm'"."""
    monkeypatch.setattr(benchmark, "matmul_peak_gflops", lambda *args, **kwargs: 100.0)
    argv = ["--model", f"timm:{name}", "--batch-size", "1", "--warmup", "0", "--repeats", "1", "--no-memory"]
    small, large = (json.loads(_run_cli([*argv, "--img-size", size, "--json"], capsys)) for size in ("32", "64"))
    with torch.device("meta"):
        sized = timm.create_model(name, **({"img_size": 32} if name.startswith("vit") else {}))  # its positions
        params = sum(t.numel() for t in sized.state_dict().values())
    assert small["params"] == params and small["results"]["timm"]["img_per_s"] > 0  # no attention switch of ours
    expected = 4 if name == "resnet18" else (1 + 16) / (1 + 4)  # convolutions: the area; ViT: 4 + 1 -> 16 + 1 tokens
    assert large["gmacs_per_image"] / small["gmacs_per_image"] == pytest.approx(expected, rel=0.25)
    with pytest.raises(InputError, match="drop them for a timm baseline"):  # it compared the model with itself
        _run_cli([*argv, "--compare-eager"], capsys)


def test_benchmark_command_compares_with_eager(capsys, monkeypatch):
    monkeypatch.setattr(benchmark, "matmul_peak_gflops", lambda *args, **kwargs: 100.0)  # the 4096^3 one takes seconds
    out = _run_cli(
        [
            "--model",
            "t2t_vit_7",
            "--batch-size",
            "2",
            "--img-size",
            "64",
            "--warmup",
            "1",
            "--repeats",
            "2",
            "--compare-eager",
            "--no-memory",
            "--json",
        ],
        capsys,
    )
    res = json.loads(out)
    assert set(res["results"]) == {"sdpa", "eager"} and res["ratios"]["speed"] > 0
    assert res["params"] == model_cost("t2t_vit_7", img_size=64)[0] and res["gmacs_per_image"] > 0
    for r in res["results"].values():
        assert len(r["step_ms_all"]) == 2 and r["img_per_s"] == pytest.approx(2e3 / r["step_ms"])
        assert r["peak_fraction"] == pytest.approx(r["achieved_gflops"] / 100.0) and r["achieved_gflops"] > 0
    text = _run_cli(
        [
            "--model",
            "t2t_vit_7",
            "--mode",
            "train",
            "--batch-size",
            "2",
            "--img-size",
            "64",
            "--warmup",
            "0",
            "--repeats",
            "1",
            "--no-memory",
        ],
        capsys,
    )
    assert "t2t_vit_7  train" in text and "sdpa" in text


def test_training_step_peak_memory_in_a_fresh_process():
    cfg = benchmark.BenchConfig("t2t_vit_7", mode="train", batch_size=2, img_size=64, warmup=1, repeats=1)
    mib = benchmark.measure_memory(cfg, "sdpa")
    weights_and_adam = 4 * 4 * model_cost("t2t_vit_7", img_size=64)[0] / 2**20  # w, grad, 2 moments
    assert weights_and_adam * 0.9 < mib < weights_and_adam + 1024


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--model", "t2t_vit_77"], "unknown model"),
        (["--model", "t2t_vit_7", "--img-size", "100"], "cannot be tiled"),
        (["--model", "t2t_vit_7", "--device", "cuda:0" if not torch.cuda.is_available() else "bogus"], "device"),
    ],
)
def test_benchmark_command_rejects_bad_input(argv, message, capsys):
    with pytest.raises(InputError, match=message):  # counts are checked where they are parsed: test_bad_input.py
        _run_cli(argv, capsys)


def test_result_file_names_take_quick_and_a_checked_tag():
    assert benchmark.result_name("cpu") == "cpu"
    assert benchmark.result_name("cpu", quick=True, tag="xeon") == "cpu_quick_xeon"
    assert benchmark.result_name("deploy_cpu", tag="malloc-keep_2") == "deploy_cpu_malloc-keep_2"
    for tag in ("../x", "a b", "x.md"):  # would write outside results/ or under another name
        with pytest.raises(InputError, match=r"--tag .*letters, digits"):
            benchmark.result_name("cpu", tag=tag)
