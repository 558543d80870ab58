"""User mistakes end in one line on stderr and a non-zero exit, never a traceback: damaged data files, an offline
download, bad output paths, unreadable images, and nonsense integer arguments. Files that are not checkpoints are
tests/test_checkpoint.py's."""

import gzip
import os
import re
import struct
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from t2t_vit import InputError
from t2t_vit.cli import main
from t2t_vit.data.sources import _read_idx, create_dataset

from .helpers import one_line_error


def _idx_bytes(n: int = 20) -> bytes:
    """An IDX images file: n images of 4x4 uint8."""
    return struct.pack(">HBB3I", 0, 8, 3, n, 4, 4) + np.arange(n * 16, dtype=np.uint8).tobytes()


# 1. damaged IDX files


def test_truncated_gz_idx_file_names_the_file(tmp_path):
    whole = gzip.compress(_idx_bytes(200))
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError, match=r"train-images-idx3-ubyte\.gz.*truncated or corrupt: download it again"):
        _read_idx(tmp_path / "train-images-idx3-ubyte")


def test_uncompressed_idx_shorter_than_its_header_says(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(_idx_bytes()[:-10])
    with pytest.raises(InputError, match=r"train-images-idx3-ubyte'.*truncated or corrupt: download it again"):
        _read_idx(path)


# 2. CIFAR download offline; eval checks its checkpoint first


@pytest.fixture
def offline(monkeypatch) -> list:
    """No network: every urlopen fails as it does without a connection; the calls are recorded."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    return calls


def test_cifar_download_offline_is_one_error_and_leaves_no_directory(tmp_path, offline):
    root = tmp_path / "new" / "cifar"
    with pytest.raises(InputError) as info:
        create_dataset(f"cifar10:{root}", "val", download=True)
    message = str(info.value)
    assert "cifar10" in message and str(root) in message and "name resolution" in message
    assert "\n" not in message and offline
    assert not (tmp_path / "new").exists()  # torchvision made it; we took it away again
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(InputError, match="cifar100"):
        create_dataset(f"cifar100:{existing}", "val", download=True)
    assert existing.is_dir()  # the user's own directory stays


def test_eval_checks_the_checkpoint_before_the_data_and_network(tmp_path, offline, capsys):
    data_dir = tmp_path / "cifar"
    argv = ["eval", "--checkpoint", str(tmp_path / "missing.pth"), "--data", f"cifar10:{data_dir}", "--download"]
    assert main(argv) == 2
    one_line_error(capsys, "t2t-vit eval: error:", "missing.pth")
    assert not data_dir.exists() and not offline


# 3. export to a path it cannot write


def test_export_output_that_is_a_directory_or_unwritable(tmp_path, tiny_checkpoint, capsys, monkeypatch):
    import t2t_vit.factory

    def no_work(*args, **kwargs):
        raise AssertionError("the checkpoint was read before the output was checked")

    # export first: importing it while factory's is patched would bind the patch into it for good
    monkeypatch.setattr("t2t_vit.deploy.export.load_model", no_work, raising=False)
    monkeypatch.setattr(t2t_vit.factory, "load_model", no_work)
    base = ["export", "--checkpoint", str(tiny_checkpoint), "--format", "safetensors", "--output"]
    assert main([*base, str(tmp_path)]) == 2
    one_line_error(capsys, "t2t-vit export: error:", "is a directory")
    (tmp_path / "file").write_text("x")
    assert main([*base, str(tmp_path / "file" / "sub" / "model.safetensors")]) == 2
    one_line_error(capsys, "t2t-vit export: error:", "not a directory")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        assert main([*base, str(ro / "model.safetensors")]) == 2
        one_line_error(capsys, "t2t-vit export: error:", "not writable")


def test_export_takes_its_format_from_the_suffix_and_refuses_one_that_disagrees(tmp_path, tiny_checkpoint, capsys):
    """--format was required, and --format onnx --output x.safetensors wrote an ONNX graph that no loader read."""
    base = ["export", "--checkpoint", str(tiny_checkpoint), "--output"]
    assert main([*base, str(tmp_path / "m.safetensors")]) == 0
    assert capsys.readouterr().out.strip().endswith("m.safetensors (safetensors)")
    assert main([*base, str(tmp_path / "x.safetensors"), "--format", "torchscript"]) == 2
    one_line_error(capsys, "names a safetensors file, but --format is torchscript: name it x.pt")
    assert main([*base, str(tmp_path / "m.pt")]) == 2
    one_line_error(capsys, "'m.pt' does not say the format: pass --format")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


# 4. predict where no image could be read


def test_predict_fails_when_no_input_could_be_read(tmp_path, tiny_checkpoint, capsys):
    from PIL import Image

    bad = [tmp_path / "a.png", tmp_path / "b.png"]
    for path in bad:
        path.write_bytes(b"not a png")
    assert main(["predict", *map(str, bad), "--checkpoint", str(tiny_checkpoint)]) == 2
    captured = capsys.readouterr()
    assert captured.out.count("skipped") == 2
    assert "Traceback" not in captured.err and len(captured.err.strip().splitlines()) == 1, captured.err
    assert "none of the 2 inputs could be read" in captured.err
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "good.png")
    assert main(["predict", *map(str, bad), str(tmp_path / "good.png"), "--checkpoint", str(tiny_checkpoint)]) == 0


# 5. integer arguments


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "--checkpoint", "c.pth", "--data", "digits", "--batch-size", "0"],
        ["eval", "--checkpoint", "c.pth", "--data", "digits", "--workers", "-1"],
        ["eval", "--checkpoint", "c.pth", "--data", "digits", "--batch-size", "two"],
        ["predict", "x.png", "--checkpoint", "c.pth", "--top-k", "0"],
        ["predict", "x.png", "--checkpoint", "c.pth", "--batch-size", "-3"],
        ["benchmark", "--model", "t2t_vit_7", "--batch-size", "0"],
        ["benchmark", "--model", "t2t_vit_7", "--img-size", "-224"],
        ["benchmark", "--model", "t2t_vit_7", "--repeats", "0"],
        ["benchmark", "--model", "t2t_vit_7", "--warmup", "-1"],
        ["benchmark", "--loader", "digits", "--config", "digits", "--workers", "two"],
    ],
)
def test_integer_arguments_out_of_range_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    says = rf"argument {argv[-2]}: '?{argv[-1]}'? is not (a positive integer|an integer >= 0|auto or an integer >= 0)$"
    assert "Traceback" not in err and re.search(says, err.splitlines()[-1]), err


def test_zero_is_fine_where_it_means_none(capsys):
    from t2t_vit.cli import build_parser

    args = build_parser().parse_args(["benchmark", "--model", "t2t_vit_7", "--warmup", "0"])
    assert args.warmup == 0
    args = build_parser().parse_args(["eval", "--checkpoint", "c", "--data", "digits", "--workers", "0"])
    assert args.workers == 0
    for text, workers in (("0", 0), ("auto", "auto")):  # benchmark --loader's go to the recipe's key
        assert build_parser().parse_args(["benchmark", "--loader", "digits", "--workers", text]).workers == workers


# 6. near misses: a checkpoint's name without .tar, a run directory, a flag of another command


def test_a_near_miss_of_a_checkpoint_names_the_file_meant(tiny_run, capsys):
    base = ["eval", "--data", "digits", "--checkpoint"]
    assert main([*base, str(tiny_run / "last.pth")]) == 2
    one_line_error(capsys, "t2t-vit eval: error:", f"did you mean '{tiny_run / 'last.pth.tar'}'?")
    assert main([*base, str(tiny_run)]) == 2
    err = one_line_error(capsys, "t2t-vit eval: error:", "give one of its checkpoints")
    assert f"'{tiny_run / 'best.pth.tar'}' or '{tiny_run / 'last.pth.tar'}'" in err
    assert main([*base, str(tiny_run / "nothing.pth")]) == 2
    one_line_error(capsys, "does not exist or is not a file: check the path")


def test_an_unknown_flag_is_reported_with_its_commands_usage(capsys):
    with pytest.raises(SystemExit) as info:
        main(["visualize", "attention", "--image", "x.png"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("usage: t2t-vit visualize attention ")
    assert err[-1] == "t2t-vit visualize attention: error: unrecognized arguments: --image"


def test_a_near_miss_of_a_data_spec_names_the_one_meant(tmp_path):
    from .helpers import image_folder

    folder = image_folder(tmp_path / "pets", classes=("cat", "dog"), per_class=1)
    cases = {
        "fashionmnist:/data/fm": "did you mean 'fashion-mnist:/data/fm'?",
        "Digits": "did you mean 'digits'?",
        str(folder / "train"): f"did you mean '{folder}', which holds them?",
        f"cifar10:{tmp_path / 'cifar'}": "or pass --download to fetch it there",
        "fashion_mnist": "did you mean 'fashion-mnist:DIR'?",  # the kind takes a folder: the hint says so
        "fashion-mnist": "(Debian's dataset-fashion-mnist puts them in /usr/share/datasets/fashion-mnist)",
        "cifar100": "cifar-100-python/ as torchvision reads it, or a new one with --download",
    }
    for spec, hint in cases.items():
        with pytest.raises(InputError) as info:
            create_dataset(spec, "train")
        assert str(info.value).endswith(hint), info.value


def test_split_folders_go_by_timms_names_and_test_holds_out(tmp_path, caplog):
    from .helpers import image_folder

    folder = image_folder(tmp_path / "pets", classes=("cat", "dog"), per_class=1)
    (folder / "train").rename(folder / "training")
    (folder / "val").rename(folder / "test")
    with caplog.at_level("INFO"):
        assert len(create_dataset(str(folder), "train")) == len(create_dataset(str(folder), "val")) == 2
    assert "the train split is training/" in caplog.text and "the val split is test/" in caplog.text


def test_class_folders_alone_are_a_held_out_split_and_not_a_training_one(tmp_path, caplog):
    """`eval --data imagenet/val` as timm's validate.py takes it; training still needs both splits, and a folder
    named as a training split is not scored as held out."""
    from .helpers import image_folder

    val = image_folder(tmp_path / "pets", classes=("cat", "dog"), per_class=1) / "val"
    with caplog.at_level("INFO"):
        held_out = create_dataset(str(val), "val")
    assert held_out.classes == ["cat", "dog"] and len(held_out) == 2
    assert "holds class folders and no split folders: they are the held-out split" in caplog.text
    for folder, split in ((val, "train"), (val.parent / "train", "val"), (val / "cat", "val")):
        with pytest.raises(InputError, match=f"has no {split}/ folder"):
            create_dataset(str(folder), split)


def test_a_class_folder_without_images_is_a_class_with_none_and_said(tmp_path, caplog):
    """A held-out (or training) class folder left empty: its split is read, the class kept in its place, where
    torchvision's ImageFolder refuses the whole split ("no images found")."""
    from .helpers import image_folder

    folder = image_folder(tmp_path / "pets", classes=("cat", "dog", "owl"), per_class=1)
    (folder / "val" / "dog" / "0.png").unlink()
    with caplog.at_level("WARNING"):
        held_out = create_dataset(str(folder), "val")
    assert held_out.classes == ["cat", "dog", "owl"] and [label for _, label in held_out.samples] == [0, 2]
    assert "1 class folder(s) hold no images (dog)" in caplog.text
    for png in folder.glob("val/*/*.png"):
        png.unlink()
    with pytest.raises(InputError, match=r"no images found under .*val' \(its class folders hold no .*\.png"):
        create_dataset(str(folder), "val")


def test_images_of_formats_imagefolder_does_not_read_are_said_once(tmp_path, caplog, monkeypatch):
    """A .gif or a phone's .heic in a class folder was passed over without a word; other files (notes, labels)
    are not images, and a second torchrun rank says nothing."""
    from .helpers import image_folder

    folder = image_folder(tmp_path / "pets", classes=("cat", "dog"), per_class=2)
    Image.new("P", (8, 8)).save(folder / "train" / "cat" / "a.gif")
    for name in ("b.heic", "c.HEIC", "notes.txt", ".DS_Store"):
        (folder / "train" / "dog" / name).write_bytes(b"x")
    with caplog.at_level("WARNING"):
        train = create_dataset(str(folder), "train")
    assert len(train) == 4 and "3 image(s) left out, of formats ImageFolder does not read (.gif: 1, .heic: 2)" in (
        caplog.text
    )
    caplog.clear()
    monkeypatch.setenv("RANK", "1")
    with caplog.at_level("WARNING"):
        create_dataset(str(folder), "train")
        (folder / "val" / "dog" / "0.png").unlink()
        create_dataset(str(folder), "val")
    assert caplog.text == ""
