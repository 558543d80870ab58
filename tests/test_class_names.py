"""A checkpoint's class names against the data's: the same names in another order are mapped, other names stop
with one line listing a few of each (`t2t-vit eval`; a kept head in `finetune --init-checkpoint`)."""

import torch

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
    saved = torch.load(tiny_checkpoint, weights_only=True)
    order = list(range(10))[::-1]  # the head's rows and the names reversed: the same classifier
    for key in ("head.weight", "head.bias"):
        saved["model"][key] = saved["model"][key][order]
    saved["meta"]["class_names"] = [DIGIT_CLASSES[i] for i in order]
    reversed_ckpt = tmp_path / "reversed.pth.tar"
    torch.save(saved, reversed_ckpt)
    expected, got = _eval(tiny_checkpoint, digits), _eval(reversed_ckpt, digits)
    assert abs(got["loss"] - expected["loss"]) < 1e-5 and got["top1"] == expected["top1"]
