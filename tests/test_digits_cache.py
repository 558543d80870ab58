"""The embedded digits kept in the cache: the same images and split as scikit-learn gives, read back without it, made
again when the file is damaged, and still served where the cache cannot be written."""

import subprocess
import sys

import numpy as np
import pytest

from t2t_vit.data import create_dataset, sources


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("T2T_VIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _same(a, b):
    return set(a) == set(b) == set(sources.DIGITS_ARRAYS) and all(np.array_equal(a[k], b[k]) for k in a)


def test_the_cache_holds_scikit_learns_split_and_is_read_back_without_it(cache, monkeypatch):
    fresh = sources._split_digits()
    assert _same(sources.digits_arrays(), fresh)
    (written,) = cache.iterdir()  # one file, no temporary left beside it
    assert written.name.startswith("digits-sklearn-") and written.suffix == ".npz"
    monkeypatch.setattr(sources, "_split_digits", lambda: pytest.fail("the cache was not read"))
    assert _same(sources.digits_arrays(), fresh)
    val = create_dataset("digits", "val")
    assert len(val) == 360 and np.array_equal(val.labels, fresh["target"][fresh["val"]])
    code = "import sys; from t2t_vit.data import create_dataset; create_dataset('digits', 'train'); "
    code += "print('sklearn' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"  # a later process starts without importing scikit-learn


def test_a_damaged_cache_file_is_made_again(cache):
    fresh = sources.digits_arrays()
    (written,) = cache.iterdir()
    written.write_bytes(written.read_bytes()[:1000])  # cut short, as by a full disk
    assert _same(sources.digits_arrays(), fresh)
    assert _same(dict(np.load(written)), fresh)


def test_a_cache_that_cannot_be_written_still_gives_the_digits(tmp_path, monkeypatch):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("T2T_VIT_CACHE", str(blocked / "cache"))
    assert _same(sources.digits_arrays(), sources._split_digits())
    assert blocked.read_text() == "not a folder"


def test_no_scikit_learn_metadata_to_key_the_file_by_means_no_cache(cache, monkeypatch):
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert _same(sources.digits_arrays(), sources._split_digits())
    assert not cache.exists()
