"""A checkpoint's class names against the data's: the same names in another order are mapped, other names stop
with one line listing a few of each (`t2t-vit eval`; a kept head in `finetune --init-checkpoint`)."""

import pytest
import torch

from t2t_vit import InputError
from t2t_vit.cli import main
from t2t_vit.training.evaluate import evaluate_checkpoint

from .helpers import DIGIT_CLASSES, image_folder, one_line_error

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _eval(checkpoint, data):
    return evaluate_checkpoint(str(checkpoint), str(data), batch_size=8, workers=0, device="cpu", progress=False)


def test_eval_refuses_other_class_names(tmp_path, tiny_checkpoint, capsys):
    words = image_folder(tmp_path / "words", classes=WORDS, per_class=1)
    assert main(["eval", "--checkpoint", str(tiny_checkpoint), "--data", str(words), "--workers", "0"]) == 2
    one_line_error(capsys, "t2t-vit eval: error:", "'0', '1'", "'eight', 'five'", "rename the class folders")


def test_eval_maps_the_same_names_in_another_order(tmp_path, tiny_checkpoint):
    digits = image_folder(tmp_path / "digits", classes=DIGIT_CLASSES, per_class=2)
    reversed_ckpt = _reversed_checkpoint(tiny_checkpoint, tmp_path / "reversed.pth.tar")
    expected, got = _eval(tiny_checkpoint, digits), _eval(reversed_ckpt, digits)
    assert abs(got["loss"] - expected["loss"]) < 1e-5 and got["top1"] == expected["top1"]


def _reversed_checkpoint(tiny_checkpoint, path):
    saved = torch.load(tiny_checkpoint, weights_only=True)
    order = list(range(10))[::-1]  # the head's rows and the names reversed: the same classifier
    for key in ("head.weight", "head.bias"):
        saved["model"][key] = saved["model"][key][order]
    saved["meta"]["class_names"] = [DIGIT_CLASSES[i] for i in order]
    torch.save(saved, path)
    return path


def test_finetune_keeps_a_head_in_the_datas_class_order(tmp_path, tiny_checkpoint):
    from t2t_vit.factory import load_model
    from t2t_vit.training.setup import build_model

    from .helpers import tiny_train_config

    original, _ = load_model(str(tiny_checkpoint))
    x = torch.randn(2, 3, 16, 16)
    reversed_ckpt = _reversed_checkpoint(tiny_checkpoint, tmp_path / "reversed.pth.tar")
    cfg = tiny_train_config(tmp_path, init_checkpoint=str(reversed_ckpt), model=None)
    _, model, _ = build_model(cfg, 10, DIGIT_CLASSES)
    torch.testing.assert_close(model.eval()(x), original.eval()(x))
    words = tiny_train_config(tmp_path, init_checkpoint=str(tiny_checkpoint), model=None, data="words")
    with pytest.raises(InputError, match="'0', '1'.*'zero', 'one'"):
        build_model(words, 10, WORDS)
