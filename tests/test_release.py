"""The authors' release as users meet it: the Token Labeling and CIFAR files, `pretrained=True` over HTTP (a
loopback server) and with other input channels, `t2t-vit download` and `convert`. Their files' layouts, and files
that are not a checkpoint or would run code, are tests/test_checkpoint.py's."""

import json
import logging
import os

import pytest
import timm
import torch

from t2t_vit import InputError, create_model, load_model
from t2t_vit.cli import main as cli_main
from t2t_vit.models import RELEASES

from .helpers import (
    UNIT_ROUNDOFF,
    assert_close_reordered,
    checkpoint_saver_layout,
    logits_of,
    official_state_dict,
    reordered_sum_tolerance,
)


def test_aux_head_is_dropped_with_one_line_or_kept(tmp_path, authors_t2t_vit_7, caplog):
    ema, x, expected = authors_t2t_vit_7.ema, authors_t2t_vit_7.images, authors_t2t_vit_7.logits
    aux = {"aux_head.weight": torch.randn(1000, 256) * 0.05, "aux_head.bias": torch.randn(1000) * 0.05}
    path = tmp_path / "84.2_T2T_ViT_24.pth.tar"
    torch.save({"state_dict_ema": {**ema, **aux}}, path)
    with caplog.at_level(logging.INFO, logger="t2t_vit"):
        model = create_model("t2t_vit_7", checkpoint_path=path)
    assert torch.equal(logits_of(model, x), expected)
    assert [r.message for r in caplog.records if "auxiliary" in r.message] == [
        "the checkpoint's auxiliary token head (aux_head, 1000 classes, from Token Labeling) is dropped: "
        "create the model with aux_head=True to keep it"
    ]
    model = create_model("t2t_vit_7", checkpoint_path=path, aux_head=True).eval()
    assert torch.equal(model.aux_head.weight, aux["aux_head.weight"])
    with torch.no_grad():
        tokens = model.forward_features(x)
        token_logits = tokens[:, 1:] @ aux["aux_head.weight"].t() + aux["aux_head.bias"]
        logits = expected + 0.5 * token_logits.max(dim=1).values
        # aux_head's sums (256 products and the bias) reordered, passed through the max; each side rounds the addition
        abs_terms = tokens[:, 1:].abs() @ aux["aux_head.weight"].abs().t() + aux["aux_head.bias"].abs()
        bound = 0.5 * reordered_sum_tolerance(abs_terms.max(dim=1).values, 256 + 1) + 2 * UNIT_ROUNDOFF * logits.abs()
        assert_close_reordered(model(x), logits, bound)


def test_a_head_left_out_unasked_is_shown_to_a_user_who_configured_no_logging(tmp_path, authors_t2t_vit_7):
    """A 10-class file in a model of its tag's 1000 classes loads all but the head: with no logging set up (timm in a
    notebook), Python's last-resort handler prints the warning. A head num_classes asked for says nothing there."""
    import subprocess
    import sys

    path = tmp_path / "ten.pth"
    ema = authors_t2t_vit_7.ema
    torch.save({"net": {**ema, "head.weight": ema["head.weight"][:10], "head.bias": ema["head.bias"][:10]}}, path)
    code = (  # one process, the three cases in turn (the silent ones first: nothing said before could hide them)
        "import sys, timm, t2t_vit\n"
        "for asked in ('10', '5', 'none'):\n"
        "    print('case', asked, file=sys.stderr, flush=True)\n"
        "    kwargs = dict(num_classes=int(asked)) if asked != 'none' else {}\n"
        "    overlay = dict(file=sys.argv[1])\n"
        "    timm.create_model('t2t_vit_7', pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    cases = dict(part.split("\n", 1) for part in done.stderr.split("case ")[1:])
    message = "checkpoint head has 10 classes, the model 1000: the head is left at its initialisation"
    for asked, says in (("none", True), ("10", False), ("5", False)):
        assert (message in cases[asked]) is says and ("head" in cases[asked]) is says, done.stderr


def test_cifar_release_tags(tmp_path, official_keys, capsys):
    assert {
        "t2t_vit_14.in1k_ft_cifar10",
        "t2t_vit_14.in1k_ft_cifar100",
        "t2t_vit_19.in1k_ft_cifar10",
        "t2t_vit_19.in1k_ft_cifar100",
    } <= set(RELEASES)
    cfg = timm.get_pretrained_cfg("t2t_vit_14.in1k_ft_cifar100")
    assert cfg.num_classes == 100 and cfg.input_size == (3, 224, 224) and cfg.mean == (0.4914, 0.4822, 0.4465)
    assert cfg.url.endswith("/releases/download/main/cirfar100_t2t-vit-14_88.4.pth")
    assert cli_main(["models"]) == 0
    listed = capsys.readouterr().out
    assert "t2t_vit_14.in1k_ft_cifar10" in listed and "cifar10_t2t-vit_14_98.3.pth" in listed

    # the release file as downloaded: 10 classes, 'net' layout; its name says which tag it is
    sd = official_state_dict(official_keys, "t2t_vit_14")
    sd["head.weight"], sd["head.bias"] = sd["head.weight"][:10], sd["head.bias"][:10]
    path = tmp_path / "cifar10_t2t-vit_14_98.3.pth"
    torch.save({"net": {f"module.{k}": v for k, v in sd.items()}, "acc": 98.3, "epoch": 57}, path)
    model, meta = load_model(path)
    assert model.num_classes == 10 and torch.equal(model.head.weight, sd["head.weight"])
    assert meta["data_config"]["mean"] == (0.4914, 0.4822, 0.4465) and meta["data_config"]["crop_pct"] == 1.0
    renamed = tmp_path / "mine.pth"
    os.link(path, renamed)
    model, meta = load_model(renamed, "t2t_vit_14.in1k_ft_cifar10")  # the tag names it when the name does not
    assert model.num_classes == 10 and meta["data_config"]["interpolation"] == "bilinear"

    from PIL import Image

    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "red.png")
    assert (
        cli_main(
            [
                "predict",
                str(tmp_path / "red.png"),
                "--checkpoint",
                str(renamed),
                "--model",
                "t2t_vit_14.in1k_ft_cifar10",
                "--top-k",
                "3",
            ]
        )
        == 0
    )
    assert "red.png: " in capsys.readouterr().out


def test_pretrained_downloads_once_into_the_hub_cache(tmp_path, authors_t2t_vit_7, server, hub_cache):
    w = authors_t2t_vit_7
    source = tmp_path / "src.pth.tar"
    torch.save(checkpoint_saver_layout(w.raw, w.ema), source)
    url = server.serve("/main/71.7_T2T_ViT_7.pth.tar", source.read_bytes())
    for _ in range(2):
        model = timm.create_model("t2t_vit_7", pretrained=True, pretrained_cfg_overlay=dict(url=url))
        assert torch.equal(logits_of(model, w.images), w.logits)
    assert server.hits == {"/main/71.7_T2T_ViT_7.pth.tar": 1}  # the second call is a cache hit
    assert (hub_cache / "71.7_T2T_ViT_7.pth.tar").read_bytes() == source.read_bytes()
    assert list(hub_cache.iterdir()) == [hub_cache / "71.7_T2T_ViT_7.pth.tar"]


def test_truncated_download_is_refused_and_not_cached(tmp_path, authors_t2t_vit_7, server, hub_cache):
    source = tmp_path / "src.pth.tar"
    torch.save({"state_dict_ema": authors_t2t_vit_7.ema}, source)
    body = source.read_bytes()
    short = server.serve("/short.pth.tar", body[: len(body) // 2], length=len(body))  # the connection drops
    with pytest.raises(InputError, match=r"download of .*/short.pth.tar stopped after [\d,]+ of [\d,]+ bytes"):
        timm.create_model("t2t_vit_7", pretrained=True, pretrained_cfg_overlay=dict(url=short))
    cut = server.serve("/cut.pth.tar", body[: len(body) // 2])  # a server that sends half a file, as a whole
    with pytest.raises(InputError, match=r"download of .*/cut.pth.tar is not a usable checkpoint.*truncated"):
        timm.create_model("t2t_vit_7", pretrained=True, pretrained_cfg_overlay=dict(url=cut))
    assert not hub_cache.exists() or not list(hub_cache.iterdir())  # nothing half-written is left to be reused


def test_offline_error_names_the_address_and_the_file_alternative(hub_cache):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/main/71.7_T2T_ViT_7.pth.tar"
    with pytest.raises(InputError) as e:
        timm.create_model("t2t_vit_7", pretrained=True, pretrained_cfg_overlay=dict(url=url))
    assert url in str(e.value) and "pretrained_cfg_overlay=dict(file='71.7_T2T_ViT_7.pth.tar')" in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match=r"t2t_vit_14_wide has no released weights"):
        timm.create_model("t2t_vit_14_wide", pretrained=True)


def test_download_command(tmp_path, authors_t2t_vit_7, server, capsys):
    source = tmp_path / "src.pth.tar"
    torch.save({"state_dict_ema": authors_t2t_vit_7.ema}, source)
    url = server.serve("/mirror/81.5_T2T_ViT_14.pth.tar", source.read_bytes())
    assert cli_main(["download", "t2t_vit_14", "--url", url, "--dir", str(tmp_path / "w")]) == 0
    assert capsys.readouterr().out.strip() == f"t2t_vit_14.in1k: {tmp_path / 'w' / '81.5_T2T_ViT_14.pth.tar'}"
    assert cli_main(["download", "t2t_vit_14_wide"]) == 2
    assert "has no released weights" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("")
    assert cli_main(["download", "t2t_vit_14", "--url", url, "--dir", str(tmp_path / "a_file")]) == 2
    assert "cannot put the download in" in capsys.readouterr().err


def test_convert_gives_a_local_dir_timm_loads(tmp_path, authors_t2t_vit_7, capsys):
    w = authors_t2t_vit_7
    path = tmp_path / "71.7_T2T_ViT_7.pth.tar"
    torch.save(checkpoint_saver_layout(w.raw, w.ema), path)
    out = tmp_path / "hub"
    assert cli_main(["convert", str(path), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "t2t_vit_7" and config["num_classes"] == 1000
    assert config["pretrained_cfg"]["mean"] == [0.485, 0.456, 0.406]
    card = (out / "README.md").read_text()
    assert "71.7_T2T_ViT_7.pth.tar" in card and "71.7% top-1" in card and "Tokens-to-Token ViT" in card
    model = timm.create_model(f"local-dir:{out}", pretrained=True)
    assert torch.equal(logits_of(model, w.images), w.logits)
    (tmp_path / "file").write_text("")
    assert cli_main(["convert", str(path), "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
    # timm's name for the folder, as convert prints it, names the folder too; a Hub name is not one
    assert cli_main(["convert", str(path), "--out", f"local-dir:{tmp_path / 'named'}"]) == 0
    assert (
        tmp_path / "named" / "model.safetensors"
    ).is_file() and f"local-dir:{tmp_path / 'named'}'" in capsys.readouterr().out
    assert cli_main(["convert", str(path), "--out", "hf-hub:me/t2t"]) == 2
    assert "is a Hub name: give a local folder, and --push-to-hub USER/REPO" in capsys.readouterr().err


def test_pretrained_weights_adapt_to_other_input_channels(tmp_path, authors_t2t_vit_7):
    """As timm adapts a first convolution: the T2T module's first linear map summed over the colour channels of
    its (C, kh, kw) patches for one channel, repeated and rescaled for four; the norm before it averaged/repeated."""
    ema = authors_t2t_vit_7.ema
    path = tmp_path / "71.7_T2T_ViT_7.pth.tar"
    torch.save({"state_dict_ema": ema}, path)
    overlay = dict(file=str(path))
    gray = timm.create_model("t2t_vit_7", pretrained=True, in_chans=1, num_classes=5, pretrained_cfg_overlay=overlay)
    w = ema["tokens_to_token.attention1.kqv.weight"].reshape(192, 3, 49)
    layer = gray.tokens_to_token.attention1
    assert torch.equal(layer.kqv.weight, w.sum(1))
    assert torch.equal(layer.norm1.weight, ema["tokens_to_token.attention1.norm1.weight"].reshape(3, 49).mean(0))
    assert logits_of(gray, torch.rand(1, 1, 224, 224)).shape == (1, 5)
    four = timm.create_model("t2t_vit_7", pretrained=True, in_chans=4, pretrained_cfg_overlay=overlay)
    torch.testing.assert_close(
        four.tokens_to_token.attention1.kqv.weight.reshape(192, 4, 49), torch.cat([w, w[:, :1]], 1) * 3 / 4
    )
