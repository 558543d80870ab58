"""Config values are checked against the model and the data before the first step, and each mistake ends in one line
naming the input, where its value came from and the fix: YAML that does not parse, keywords the model does not take,
mean/std of another channel count, fewer classes than the data has, an init checkpoint of another variant, a full
disk, an unreadable class folder or run directory; mapping flags merge into the config's; each command's --help shows
the defaults it uses."""

import errno
import os
from pathlib import Path

import pytest
import torch
import yaml

from t2t_vit import InputError
from t2t_vit.cli import main
from t2t_vit.config import resolve_config, value_sources
from t2t_vit.data.sources import create_dataset
from t2t_vit.training.run_dir import RunDir, read_first_good

from .helpers import one_line_error


def _train(tmp_path: Path, *flags: str) -> list:
    """`t2t-vit train` on the digits config into tmp_path/runs (nothing there should survive a refused start)."""
    return ["train", "--config", "digits", "--output", str(tmp_path / "runs"), "--no-progress", *flags]


def _refused(tmp_path: Path, capsys, argv: list, *needles: str) -> str:
    assert main(argv) == 2
    line = one_line_error(capsys, f"t2t-vit {argv[0]}: error:", *needles)
    assert not any((tmp_path / "runs").glob("*/*.pth.tar"))
    return line


# 4. a flag's value that is not YAML


def test_flag_that_is_not_yaml_names_the_flag_and_the_problem(tmp_path, capsys):
    _refused(
        tmp_path,
        capsys,
        _train(tmp_path, "--model-kwargs", "{embed_dim: 128"),
        "--model-kwargs '{embed_dim: 128' is not valid YAML",
        "expected ',' or '}'",
        "e.g. '{embed_dim: 128}'",
    )


def test_config_file_that_is_not_yaml_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: t2t_vit_7\nmodel_kwargs: {embed_dim: 128\n")
    _refused(tmp_path, capsys, ["train", "--config", str(bad), "--data", "digits"], "bad.yaml", "is not valid YAML")


# 5. a keyword the model's constructor does not take


def test_unknown_model_keyword_lists_the_ones_it_takes(tmp_path, capsys):
    line = _refused(
        tmp_path,
        capsys,
        _train(tmp_path, "--model-kwargs", "{bogus_arg: 1, embed_dimm: 64}"),
        "model_kwargs bogus_arg, embed_dimm (did you mean embed_dim?): not a keyword of t2t_vit_7",
        "soft_splits",
        "token_dim",
        "drop them with --model-kwargs '{bogus_arg: null, embed_dimm: null}'",
        "model_kwargs.bogus_arg, model_kwargs.embed_dimm from the command line",
    )
    assert not (tmp_path / "runs").exists(), line  # refused before the run directory


def test_another_model_than_the_configs_is_told_how_to_drop_its_keywords(tmp_path, capsys):
    """The digits config's T2T sizes under --model timm:resnet18: the fix it names resolves to a run resnet18 takes."""
    line = _refused(tmp_path, capsys, _train(tmp_path, "--model", "timm:resnet18"), "not a keyword of timm:resnet18")
    fix = yaml.safe_load(line.split("drop them with --model-kwargs '")[1].split("'")[0])
    assert set(fix) == set(resolve_config("digits")["model_kwargs"]) and set(fix.values()) == {None}
    assert resolve_config("digits", {"model": "timm:resnet18", "model_kwargs": fix})["model_kwargs"] == {}


def test_model_keyword_that_a_config_key_sets_names_the_key(tmp_path, capsys):
    _refused(tmp_path, capsys, _train(tmp_path, "--model-kwargs", "{img_size: 16}"), "sets img_size", "use --img-size")


# 6. mapping flags merge into the config's; messages say where each value came from


def test_model_kwargs_flag_merges_into_the_configs():
    digits = resolve_config("digits")["model_kwargs"]
    merged = resolve_config("digits", {"model_kwargs": {"embed_dim": 64, "depth": None}})["model_kwargs"]
    assert merged == {**{k: v for k, v in digits.items() if k != "depth"}, "embed_dim": 64}
    sources = value_sources("digits", {"model_kwargs": {"embed_dim": 64}})
    assert sources["model_kwargs.embed_dim"] == "the command line"
    assert sources["model_kwargs.soft_splits"] == "config 'digits'" and sources["in_chans"] == "the defaults"
    # another model: the config's keywords were made for its own, and are replaced
    other = resolve_config("digits", {"model": "timm:resnet18", "model_kwargs": {"channels": [8, 16, 32, 64]}})
    assert other["model_kwargs"] == {"channels": [8, 16, 32, 64]}


def test_train_help_says_mappings_merge(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "merges into the config's key by key" in " ".join(capsys.readouterr().out.split())


def test_constructor_error_names_where_each_size_came_from(tmp_path, capsys):
    line = _refused(
        tmp_path,
        capsys,
        _train(tmp_path, "--model-kwargs", "{soft_splits: [[7, 4, 2], [3, 2, 1], [3, 2, 1]]}"),
        "image height 8 cannot be tiled",
        "model_kwargs.soft_splits from the command line",
        "img_size from config 'digits'",
        "in_chans from the defaults",
    )
    assert "model_kwargs.embed_dim" in line.split("from config 'digits'")[0]  # the config's, kept


# 7. mean/std of another channel count


def test_mean_of_another_channel_count_is_caught_at_the_config_check(tmp_path, capsys):
    line = _refused(
        tmp_path,
        capsys,
        _train(tmp_path, "--mean", "[0.5, 0.5]"),
        "mean [0.5, 0.5] has 2 values for 3 input channels (in_chans)",
        "--mean '[0.5, 0.5, 0.5]'",
        "mean from the command line",
    )
    assert not (tmp_path / "runs").exists(), line


# 8. fewer classes than the data has


def test_num_classes_below_the_datas_is_caught_before_the_first_step(tmp_path, capsys):
    _refused(
        tmp_path,
        capsys,
        _train(tmp_path, "--num-classes", "5"),
        "num_classes 5 is fewer than the 10 classes of digits",
        "--num-classes 10",
        "num_classes from the command line",
    )


# 9. an init checkpoint of another variant


@pytest.fixture(scope="module")
def t2t_vit_10_weights(tmp_path_factory) -> Path:
    import timm

    path = tmp_path_factory.mktemp("t2t_vit_10") / "t2t_vit_10.pth"
    torch.save(timm.create_model("t2t_vit_10", num_classes=10).state_dict(), path)
    return path


@pytest.mark.parametrize("model", [[], ["--model-kwargs", "{soft_splits: null}", "--img-size", "32"]])
def test_init_checkpoint_of_another_variant_names_the_one_it_holds(tmp_path, capsys, t2t_vit_10_weights, model):
    _refused(
        tmp_path,
        capsys,
        _train(tmp_path, "--init-checkpoint", str(t2t_vit_10_weights), *model),
        "checkpoint does not fit t2t_vit_7",
        "width 256, depth 10: create t2t_vit_10 instead",
        "model, model_kwargs.embed_dim",
    )


# 12. a full disk


@pytest.mark.parametrize("call", ["open", "write"])
def test_full_disk_at_the_lock_is_one_line(tmp_path, capsys, monkeypatch, call):
    real = getattr(os, call)

    def full(first, *args, **kwargs):
        if call == "write" or str(first).endswith(".lock"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(first, *args, **kwargs)

    if call == "write":  # only the lock writes with os.write here
        monkeypatch.setattr(os, "write", full)
    else:
        monkeypatch.setattr(os, "open", full)
    run = tmp_path / "runs" / "full"
    _refused(
        tmp_path, capsys, _train(tmp_path, "--name", "full"), ".lock", str(run), "no free space left", "free space"
    )
    assert not run.exists()


# 13. an unreadable class folder


def test_unreadable_class_folder_names_the_permission_error(tmp_path, monkeypatch):
    from PIL import Image

    for name in ("cat", "dog"):
        (tmp_path / "train" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "train" / name / "0.png")
    denied = str(tmp_path / "train" / "dog")
    real = os.scandir

    def scandir(path="."):
        if str(path) == denied:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)  # tests run as root here: chmod would not refuse
    with pytest.raises(InputError) as info:
        create_dataset(str(tmp_path), "train")
    message = str(info.value)
    assert denied in message and "Permission denied" in message and "chmod -R a+rX" in message, message


# 15. none of last/previous/best reads


def test_all_saved_checkpoints_unreadable_is_one_concise_line(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    torch.save({"epoch": 1, "optimizer": {}, "model": {"w": torch.zeros(1000)}}, run.last)
    whole = run.last.read_bytes()
    for path in (run.last, run.previous, run.best):
        path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError) as info:
        read_first_good(run.saved_checkpoints())
    message = str(info.value)
    assert "none of last.pth.tar, previous.pth.tar, best.pth.tar in" in message and str(run.path) in message
    assert message.count("could not be read") == 1 and message.count("PytorchStreamReader") == 1, message
    assert "\n" not in message and len(message) < 400 and "--name NAME" in message


# 16. each command's --help shows the defaults it uses


@pytest.mark.parametrize(
    "command, defaults",
    [
        ("train", {"opt": "adamw", "lr": "0.0005", "epochs": "300"}),
        ("finetune", {"opt": "sgd", "lr": "0.05", "epochs": "60"}),
    ],
)
def test_help_shows_the_commands_own_defaults(capsys, command, defaults):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    lines = {
        line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines() if line.startswith("  --")
    }
    assert {key: lines[f"--{key}"] for key in defaults} == defaults


@pytest.mark.parametrize(
    "name,meant", [("digit", "digits"), ("T2T-ViT-14", "t2t_vit_14"), ("fashion-mnist", "fashion_mnist"), ("foo", None)]
)
def test_a_near_miss_of_a_shipped_config_names_it(name, meant):
    """Only the whole list of shipped configs was given (a model's name as the paper writes it, a dash for _)."""
    with pytest.raises(InputError, match=r"not found: ") as info:
        resolve_config(name)
    assert (f"did you mean {meant}? " in str(info.value)) if meant else "did you mean" not in str(info.value)
