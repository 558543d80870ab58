"""benchmarks/parts.py: each part timed on the input it gets in the model, its gradients its own, and the dry run's
page and figures."""

import json

import pytest
import torch

from t2t_vit.factory import create_model

from .helpers import benchmark_script

parts = benchmark_script("parts")
FP32 = dict(device_type="cpu", dtype=torch.float32, enabled=False)


@pytest.mark.parametrize("name", ["t2t_vit_7", parts.DEIT_S])
def test_the_parts_get_the_inputs_they_get_in_the_model_and_train_only_their_own_weights(name):
    torch.manual_seed(0)
    model = create_model(name, img_size=32, **parts.TINY).train()
    x = torch.randn(2, 3, 32, 32)
    inputs = parts.part_inputs(model, x, FP32)
    assert torch.equal(inputs["tokens"], x)
    tokens = parts.tokens_module(model)
    assert tokens is (model.patch_embed if name == parts.DEIT_S else model.tokens_to_token)
    n = tokens(x).shape[1]
    assert inputs["blocks"].shape == (2, n + 1, 64)  # the class token and positions added, as the blocks see them
    model.eval()  # no dropout: the blocks on their captured input give the model's features
    inputs = parts.part_inputs(model, x, FP32)
    with torch.no_grad():
        assert torch.allclose(model.norm(model.blocks(inputs["blocks"])), model.forward_features(x), atol=1e-6)
    model.train()
    for part, module, grad_input in (("tokens", tokens, False), ("blocks", model.blocks, True)):
        model.zero_grad(set_to_none=True)
        parts.part_step(module, inputs[part], FP32, grad_input)()
        own = {id(p) for p in module.parameters()}
        assert all(p.grad is not None for p in module.parameters() if p.requires_grad)
        assert all(p.grad is None for p in model.parameters() if id(p) not in own)


def test_op_times_lists_aten_ops_largest_first():
    a, b = torch.randn(64, 64), torch.randn(64, 64)
    times = parts.op_times(lambda: (a @ b).relu(), torch.device("cpu"))
    names = [name for name, _ in times]
    assert "aten::mm" in names and all(n.startswith("aten::") for n in names)
    assert [ms for _, ms in times] == sorted((ms for _, ms in times), reverse=True)


def test_the_dry_run_writes_a_row_per_model_and_the_tokens_parts_ops(tmp_path, capsys):
    assert parts.main(["--dry-run", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "parts_cpu.json").read_text())
    assert [r["label"] for r in result["rows"]] == [label for label, _, _ in parts.VARIANTS]
    assert all(r[k] > 0 for r in result["rows"] for k in ("tokens", "blocks", "step"))
    assert "aten::convolution" in {op for op, _ in result["ops"]["DeiT-S"]}  # DeiT-S's tokens: a 16x16 convolution
    assert all(len(ops) <= parts.TOP_OPS for ops in result["ops"].values())
    page = (tmp_path / "parts_cpu.md").read_text()
    assert "| T2T-ViT-14, authors' arithmetic |" in page and "T2T-ViT-14's step against DeiT-S's:" in page
    assert "Dry run: tiny sizes" in page and "python benchmarks/parts.py --dry-run" in page
    assert f"commit {result['setup']['commit']};" in page and result["setup"]["commit"] != "unknown"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--device", "cuda"], "--device cuda: no CUDA device here; pass --device cpu"),
        (["--device", "cpu", "--batch-size", "0"], "--batch-size 0: give 1 or more"),
        (["--device", "cpu", "--repeats", "-1"], "--repeats -1: give 1 or more"),
    ],
)
def test_a_wrong_device_or_count_is_named(argv, message, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as stop:
        parts.main(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err
