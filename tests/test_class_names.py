"""A checkpoint's class names against the data's: the same names in another order are mapped; other names stop
`t2t-vit eval` with one line listing a few of each, and give `finetune --init-checkpoint` a new head."""

import pytest
import torch

from t2t_vit import InputError
from t2t_vit.cli import main
from t2t_vit.hub import class_names, imagenet_ids
from t2t_vit.training.evaluate import evaluate_checkpoint
from t2t_vit.training.setup import check_config

from .helpers import DIGIT_CLASSES, image_folder, official_state_dict, one_line_error, tiny_train_config

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


def test_finetune_keeps_a_head_in_the_datas_class_order_and_starts_one_for_other_classes(
    tmp_path, tiny_checkpoint, caplog
):
    from t2t_vit.factory import load_model
    from t2t_vit.training.setup import build_model

    from .helpers import tiny_train_config

    original, _ = load_model(str(tiny_checkpoint))
    x = torch.randn(2, 3, 16, 16)
    reversed_ckpt = _reversed_checkpoint(tiny_checkpoint, tmp_path / "reversed.pth.tar")
    cfg = tiny_train_config(tmp_path, init_checkpoint=str(reversed_ckpt), model=None)
    _, model, _ = build_model(cfg, 10, DIGIT_CLASSES)
    torch.testing.assert_close(model.eval()(x), original.eval()(x))
    # digits to other ten classes (Fashion-MNIST, say): it was refused as 'give the data its class names ... or
    # fine-tune it (t2t-vit finetune)', in finetune itself; the head starts anew, as one for another class count does
    saved = torch.load(tiny_checkpoint, weights_only=True)
    saved["model"]["head.weight"].fill_(1.0)
    saved["model"]["head.bias"].fill_(1.0)
    torch.save(saved, tmp_path / "ones.pth.tar")
    words = tiny_train_config(tmp_path, init_checkpoint=str(tmp_path / "ones.pth.tar"), model=None, data="words")
    _, model, _ = build_model(words, 10, WORDS)
    kept, new = original.state_dict(), model.state_dict()
    assert all(torch.equal(kept[k], new[k]) for k in kept if not k.startswith("head."))
    assert not new["head.bias"].any() and 0.01 < new["head.weight"].std() < 0.03  # as a new model's head
    assert "its head starts anew" in caplog.text and "'zero', 'one'" in caplog.text


def test_eval_on_a_held_out_split_without_some_classes_scores_by_the_checkpoints_numbers(tmp_path, tiny_checkpoint):
    """An ImageFolder numbers the class folders it finds: a val/ without class '0' would shift every label by one.
    Scored by the checkpoint's numbers, the split without '0' and the split of '0' alone add up to the whole."""
    import shutil

    whole = image_folder(tmp_path / "whole", classes=DIGIT_CLASSES, per_class=3)
    parts = {}
    for part, keep in (("rest", DIGIT_CLASSES[1:]), ("zero", DIGIT_CLASSES[:1])):
        shutil.copytree(whole, tmp_path / part)
        for name in DIGIT_CLASSES:
            if name not in keep:
                shutil.rmtree(tmp_path / part / "val" / name)
        parts[part] = _eval(tiny_checkpoint, tmp_path / part)
    expected = _eval(tiny_checkpoint, whole)
    assert parts["rest"]["n"] + parts["zero"]["n"] == expected["n"] == 30
    correct = sum(r["top1"] * r["n"] / 100 for r in parts.values())
    assert round(correct) == round(expected["top1"] * expected["n"] / 100)
    loss = sum(r["loss"] * r["n"] for r in parts.values()) / expected["n"]
    assert abs(loss - expected["loss"]) < 1e-4 * max(1.0, expected["loss"])  # fp32 means of 27, 3 and 30 losses


def test_training_numbers_the_held_out_classes_as_the_training_split(tmp_path, caplog):
    from t2t_vit.data import align_classes, create_dataset
    from t2t_vit.training.setup import build_data

    folder = image_folder(tmp_path / "pets", classes=("cat", "dog", "owl"), per_class=2)
    (folder / "val" / "cat").rename(tmp_path / "cat")
    val = create_dataset(str(folder), "val")
    assert val.classes == ["dog", "owl"] and [label for _, label in val.samples] == [0, 0, 1, 1]
    align_classes(val, ["cat", "dog", "owl"], str(folder), "the training split")
    assert val.classes == ["cat", "dog", "owl"] and [label for _, label in val.samples] == [1, 1, 2, 2]
    cfg = check_config(tiny_train_config(tmp_path, data=str(folder), batch_size=2, workers=0))
    caplog.clear()
    assert [label for _, label in build_data(cfg, 1, 0, False).val_set.samples] == [1, 1, 2, 2]
    assert caplog.text.count("has no images of 1 of the 3 classes (cat)") == 1
    build_data(cfg, 2, 1, False)  # torchrun's rank 1: the same data, said once by rank 0
    assert caplog.text.count("has no images of 1 of the 3 classes (cat)") == 1
    (tmp_path / "cat").rename(folder / "val" / "hat")
    with pytest.raises(InputError, match=r"held-out split's classes \('hat'\) are not among those of the training"):
        align_classes(create_dataset(str(folder), "val"), ["cat", "dog", "owl"], str(folder), "the training split")


def test_training_on_one_class_is_refused(tmp_path):
    """Softmax over one class: the loss is 0 and nothing is learned, usually a --data one folder too deep."""
    from t2t_vit.training.run import train

    folder = image_folder(tmp_path / "pets", classes=("cat",), per_class=2)
    with pytest.raises(InputError, match=r"the training split has one class \(cat\), and a classifier needs two"):
        train(tiny_train_config(tmp_path / "runs", data=str(folder), batch_size=2, workers=0), progress=False)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # no run directory left


IMAGENET_IDS = {"n01440764": 0, "n02102040": 217, "n03888257": 701}  # three of Imagenette's ten ImageNet classes


def test_released_weights_score_an_imagenet_subset_by_imagenets_numbers(tmp_path, official_keys):
    """Imagenette (ImageNet images in folders named by their ids, 10 of the 1000 classes): each folder is its
    ImageNet class, where a 1000-class head and 3 folders was refused (and numbering them 0-2 would score garbage)."""
    subset = image_folder(tmp_path / "imagenette", classes=tuple(IMAGENET_IDS), per_class=2)
    weights = official_state_dict(official_keys, "t2t_vit_7")
    weights["head.bias"][217] = 1e3  # every image is called n02102040: a third of them right
    release = tmp_path / "t2t_vit_7.pth.tar"
    torch.save({"state_dict_ema": weights}, release)
    scores = evaluate_checkpoint(
        str(release), str(subset), "t2t_vit_7", batch_size=8, workers=0, device="cpu", progress=False
    )
    assert scores["n"] == 6 and scores["top1"] == pytest.approx(100 / 3)


def _imagenet_checkpoint(tiny_checkpoint, path, names, called):
    """The tiny model with a 1000-class head that calls every image ImageNet class `called`, storing `names`."""
    saved = torch.load(tiny_checkpoint, weights_only=True)
    saved["meta"].update(class_names=names, model_kwargs={**saved["meta"]["model_kwargs"], "num_classes": 1000})
    head = torch.nn.Linear(saved["model"]["head.weight"].shape[1], 1000)
    saved["model"].update({"head.weight": head.weight.detach(), "head.bias": head.bias.detach()})
    saved["model"]["head.bias"][called] = 1e3
    torch.save(saved, path)
    return path


@pytest.mark.parametrize("stored", [None, "descriptions"])  # an authors' file; a release by name, or converted
@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
def test_eval_numbers_imagenet_ids_as_the_heads_rows_in_a_runtime_too(
    tmp_path, tiny_checkpoint, capsys, runtime, stored
):
    if runtime != "torch":
        pytest.importorskip(runtime, reason="needs pip install 't2t-vit[deploy]'")
    subset = image_folder(tmp_path / "imagenette", classes=tuple(IMAGENET_IDS), per_class=2)
    names = class_names(1000) if stored else None
    checkpoint = _imagenet_checkpoint(tiny_checkpoint, tmp_path / "imagenet.pth.tar", names, called=701)
    argv = ["eval", "--checkpoint", str(checkpoint), "--data", str(subset), "--workers", "0", "--no-progress"]
    assert main([*argv, "--runtime", runtime]) == 0
    assert "(6 images): top-1 33.33%" in capsys.readouterr().out


def test_a_head_named_by_imagenets_descriptions_scores_imagenets_folders(tmp_path, tiny_checkpoint):
    """All 1000 folders, and the names a release by its file name or a converted one carries: they were refused as
    other classes than the checkpoint's."""
    imagenet = image_folder(tmp_path / "imagenet", classes=tuple(imagenet_ids()), per_class=1)
    checkpoint = _imagenet_checkpoint(tiny_checkpoint, tmp_path / "in1k.pth.tar", class_names(1000), called=217)
    scores = _eval(checkpoint, imagenet)
    assert scores["n"] == 1000 and scores["top1"] == pytest.approx(0.1)


def test_predict_says_what_an_imagenet_id_is(tmp_path, tiny_checkpoint, capsys):
    """A fine-tune on Imagenette's folders stores their ids: predict printed 'n03888257 100.0%'."""
    import json

    saved = torch.load(tiny_checkpoint, weights_only=True)
    ids = list(IMAGENET_IDS)
    saved["meta"].update(class_names=ids, model_kwargs={**saved["meta"]["model_kwargs"], "num_classes": 3})
    saved["model"]["head.weight"] = torch.zeros(3, saved["model"]["head.weight"].shape[1])
    saved["model"]["head.bias"] = torch.tensor([0.0, 0.0, 1e3])  # every image is n03888257
    torch.save(saved, tmp_path / "imagenette.pth.tar")
    image = next(image_folder(tmp_path / "images", classes=("x",), per_class=1).glob("val/x/*.png"))
    argv = ["predict", str(image), "--checkpoint", str(tmp_path / "imagenette.pth.tar"), "--top-k", "2"]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip().endswith(": n03888257 (parachute) 100.0%, n01440764 (tench) 0.0%")
    assert main([*argv, "--json"]) == 0
    first = json.loads(capsys.readouterr().out)[0]["top_k"][0]
    assert first == {"index": 2, "class": "n03888257", "description": "parachute, chute", "prob": 1.0}
