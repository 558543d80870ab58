"""Property-based: whatever values a user gives the config keys, and whatever bytes a checkpoint file holds, the
config check and the checkpoint reader answer with success or an InputError, never another exception. No training
steps: the config goes through resolve_config and the checks before a run, the files through the readers."""

import io
import string
from pathlib import Path

import pytest
import torch

from t2t_vit import InputError
from t2t_vit.checkpoint import extract_state_dict, read_checkpoint
from t2t_vit.config import load_yaml, parse_overrides, resolve_config
from t2t_vit.config_keys import DEFAULTS, RULES
from t2t_vit.training.run_dir import read_first_good
from t2t_vit.training.setup import check_config

hypothesis = pytest.importorskip("hypothesis", reason="pip install 't2t-vit[dev]' (hypothesis) for the fuzz tests")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# What YAML gives: scalars of every kind (huge and non-finite numbers too), short lists, small mappings.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([10**400, -1, 0, 1, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(string.printable + "\x00~é", max_size=12),
    st.sampled_from(["auto", "digits", "t2t_vit_7", "timm:resnet18", "~nobody/x", "top1", "ema_loss", "sgd"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(string.ascii_lowercase + "_", max_size=10), inner, max_size=3),
    ),
    max_leaves=6,
)
# A model keyword: one the constructor takes, or not; with any value.
model_kwargs = st.dictionaries(
    st.sampled_from(["embed_dim", "depth", "soft_splits", "img_size", "bogus_arg", "drop_rate", "token_dim"]),
    values,
    max_size=3,
)


DIGITS = load_yaml(Path("digits"))  # the shipped config the values override (read once: YAML is slow to parse)


@FAST
@given(st.dictionaries(st.sampled_from(sorted(DEFAULTS)), values, max_size=6), model_kwargs)
@example({"epochs": 10**400}, {})  # an int past a float's range
@example({"init_checkpoint": "a\x00b"}, {})  # a path no file can have
@example({"init_checkpoint": "~nobody_here/x.pth"}, {})
@example({}, {"img_size": 16, "bogus_arg": 1})
def test_any_config_values_pass_or_are_one_input_error(overrides, kwargs):
    overrides = {**DIGITS, "data": "digits", **overrides}
    if kwargs:
        overrides["model_kwargs"] = {**DIGITS["model_kwargs"], **kwargs}
    try:
        check_config(resolve_config(None, overrides))
    except InputError as e:
        assert str(e) and "\n" not in str(e), str(e)


@FAST
@given(st.sampled_from(sorted(RULES)), st.text(string.printable, max_size=20))
def test_any_command_line_text_parses_or_is_one_input_error(key, text):
    try:
        resolve_config(None, parse_overrides([f"--{key.replace('_', '-')}", text]))
    except InputError as e:
        assert "\n" not in str(e), str(e)


def _checkpoint_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save({"epoch": 1, "optimizer": {}, "model": {"w": torch.arange(64.0)}, "meta": {"arch": "x"}}, buffer)
    return buffer.getvalue()


WHOLE = _checkpoint_bytes()
_CD = WHOLE.index(b"PK\x01\x02")  # the zip's central directory: its first entry's header


@FAST
@given(
    st.one_of(
        st.integers(0, len(WHOLE) - 1).map(lambda n: WHOLE[:n]),  # cut short
        st.tuples(st.integers(0, len(WHOLE) - 1), st.binary(min_size=1, max_size=8)).map(  # overwritten in place
            lambda t: WHOLE[: t[0]] + t[1] + WHOLE[t[0] + len(t[1]) :]
        ),
        st.binary(max_size=300).map(lambda b: b"\x80" + b),  # a pickle's first byte, then anything
        st.binary(max_size=300).map(lambda b: b"PK\x03\x04" + b),  # a zip's
        st.binary(max_size=300),
    ),
    st.sampled_from([".pth.tar", ".safetensors"]),
)
@example(WHOLE[: _CD + 46] + b"\x80" + WHOLE[_CD + 47 :], ".pth.tar")  # a file name not UTF-8: UnicodeDecodeError
@example(WHOLE[: _CD + 6] + b"\x40\x00" + WHOLE[_CD + 8 :], ".pth.tar")  # "zip file version 6.4": NotImplementedError
def test_any_checkpoint_bytes_read_or_are_one_input_error(tmp_path_factory, data, suffix):
    path = Path(tmp_path_factory.mktemp("ck")) / f"last{suffix}"
    path.write_bytes(data)
    try:
        extract_state_dict(read_checkpoint(path))
        read_first_good([path])
    except InputError as e:
        assert "\n" not in str(e), str(e)
