"""`--data hfds/...` and `hfids/...`: Hugging Face datasets through timm's readers, the Hub only with --download."""

import shutil
import socket
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


def test_training_on_an_hfds_folder_ends_with_its_held_out_score(tmp_path, no_network):
    folder = image_folder(tmp_path / "pets", classes=("cat", "dog"))
    cfg = tiny_train_config(tmp_path, data=f"hfds/{folder}", epochs=1, warmup_epochs=0, batch_size=4, workers=0)
    result = train(cfg, progress=False)
    rows = metrics_rows(result["run_dir"])
    assert [float(r["val_top1"]) for r in rows] == [result["val_top1"]] and no_network == []
    assert result["val_top1"] in (0.0, 12.5, 25.0, 37.5, 50.0, 62.5, 75.0, 87.5, 100.0)  # of 8 held-out images
