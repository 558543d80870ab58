"""`--data hfds/...` and `hfids/...`: Hugging Face datasets through timm's readers, the Hub only with --download."""

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from t2t_vit.data.sources import create_dataset, dataset_classes
from t2t_vit.errors import InputError
from t2t_vit.training.run import train

from .helpers import image_folder, metrics_rows, tiny_train_config

pytest.importorskip("datasets", reason="needs pip install 't2t-vit[hfds]'")


@pytest.fixture
def no_network(monkeypatch):
    """Every socket connection is refused and recorded: the list of addresses that were tried."""
    tried = []

    def refuse(self, address):
        tried.append(address)
        raise OSError("network closed by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: refuse(None, address))
    return tried


def test_a_hub_name_without_download_is_not_fetched_and_names_the_flag(tmp_path, no_network):
    """timm's hfds reader calls datasets.load_dataset, which asks the Hub (and retries for ~30 s offline) whatever
    --download says; without it the name is looked up in the cache alone, at once, and the error names the flag."""
    start = time.perf_counter()
    with pytest.raises(InputError, match=r"'hfds/someone/images' is neither a local folder nor in .*pass --download"):
        create_dataset(f"hfds/someone/images:{tmp_path / 'cache'}", "train")
    with pytest.raises(InputError, match=r"'hfids/someone/images' streams .* from the Hugging Face Hub: pass --down"):
        create_dataset("hfids/someone/images", "train")
    assert no_network == [] and time.perf_counter() - start < 20


def test_a_local_folder_trains_with_its_classes_and_validates_on_test_without_a_validation_split(tmp_path, no_network):
    folder = image_folder(tmp_path / "pets", classes=("cat", "dog"))
    val = create_dataset(f"hfds/{folder}", "val")
    assert dataset_classes(val) == ["cat", "dog"] and len(val) == 8  # timm's reader lists classes as class_to_idx
    image, label = val[0]
    assert image.size == (20, 20) and label in (0, 1)
    (folder / "val").rename(folder / "test")
    assert len(create_dataset(f"hfds/{folder}", "val")) == 8
    shutil.rmtree(folder / "test")
    with pytest.raises(InputError, match=r"has no validation or test split to validate on"):
        create_dataset(f"hfds/{folder}", "val")
    assert no_network == []


def test_training_on_an_hfds_folder_ends_with_its_held_out_score(tmp_path, no_network, caplog):
    folder = image_folder(tmp_path / "pets", classes=("cat", "dog"), per_class=6)
    cfg = tiny_train_config(tmp_path, data=f"hfds/{folder}", epochs=1, warmup_epochs=0, batch_size=4, workers=0)
    cfg.update(train_subset=4)  # the reader lists its targets: a stratified 2 + 2 of the 12 training images
    with caplog.at_level("INFO"):
        result = train(cfg, progress=False)
    assert "4 train / 12 held-out images, 2 classes" in caplog.text
    rows = metrics_rows(result["run_dir"])
    assert [float(r["val_top1"]) for r in rows] == [result["val_top1"]] and no_network == []
    assert result["val_top1"] * 12 / 100 == pytest.approx(round(result["val_top1"] * 12 / 100))  # of 12 held out


def test_the_cli_shows_no_bars_of_datasets_off_a_terminal_or_with_no_progress(tmp_path):
    """`datasets` draws its own bars ("Generating train split") on stderr, terminal or not; the command's rule
    (bars only on a terminal, none with --no-progress) holds for them too."""
    folder = image_folder(tmp_path / "pets", classes=("cat", "dog"))
    argv = f"train --data hfds/{folder} --model t2t_vit_7 --img-size 32 --epochs 1 --cooldown-epochs 0"
    argv += f" --warmup-epochs 0 --batch-size 4 --workers 0 --output {tmp_path / 'runs'}"
    env = {k: v for k, v in os.environ.items() if not k.endswith("DISABLE_PROGRESS_BARS")}
    env["HF_DATASETS_CACHE"] = str(tmp_path / "cache")  # a fresh cache: the splits are generated, with bars
    command = [sys.executable, "-m", "t2t_vit", *argv.split(), "--model-kwargs", "{depth: 1}"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "held-out top-1" in done.stdout
    assert "Generating" not in done.stderr and "it/s" not in done.stderr, done.stderr
