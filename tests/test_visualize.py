"""`t2t-vit visualize`: feature maps, attention maps and rollout, training curves; each a non-blank PNG."""

import csv
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from t2t_vit.cli import build_parser
from t2t_vit.errors import InputError
from t2t_vit.study import visualize
from t2t_vit.study.visualize import (
    attention_rollout,
    attention_weights,
    token_feature_maps,
)
from t2t_vit.training.metrics import METRICS_COLUMNS, curves_figure, plot_curves, run_names


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """A 90 x 80 RGB picture of stripes and a gradient (not square: the crop is exercised)."""
    yy, xx = np.mgrid[0:90, 0:80]
    pixels = np.stack([(xx % 16 < 8) * 255, (yy % 12 < 6) * 200, (xx + yy) * 1.4], -1).astype(np.uint8)
    path = tmp_path_factory.mktemp("img") / "stripes.png"
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    t2t = timm.create_model("t2t_vit_7", img_size=64, depth=2).eval()
    vit = timm.create_model("t2t_vit_14_wo_t2t", img_size=64, depth=2).eval()
    return t2t, vit


def _pixel_variance(path) -> float:
    return float(np.asarray(Image.open(path).convert("RGB"), dtype=np.float64).var())


def _run(argv) -> None:
    """A `t2t-vit` command, letting its InputError through (main turns it into one line and exit code 2)."""
    args = build_parser().parse_args(argv)
    args.func(args)


def test_feature_maps_png(image, models, tmp_path):
    t2t, vit = models
    x, picture = visualize.load_image(image, t2t)
    assert x.shape == (1, 3, 64, 64) and picture.shape == (64, 64, 3) and 0 <= picture.min() < picture.max() <= 1
    maps = token_feature_maps(t2t, x, block=0)
    assert maps.shape == (256, 4, 4) and (maps.flatten(1).std(1) > 0).all()
    out = visualize.plot_feature_maps(image, [("T2T", t2t), ("ViT", vit)], tmp_path / "f.png", channels=9)
    assert out.is_file() and _pixel_variance(out) > 0


def test_attention_weights_are_the_softmax_of_the_block_input(image, models):
    t2t, _ = models
    x, _ = visualize.load_image(image, t2t)
    attn = attention_weights(t2t, x, [0, -1])
    assert sorted(attn) == [0, 1] and attn[1].shape == (1, 4, 17, 17)
    torch.testing.assert_close(attn[1].sum(-1), torch.ones(1, 4, 17))
    with torch.no_grad():
        block = t2t.blocks[0]
        tokens = block.norm1(t2t._tokens(x)[0])  # the input of block 0's attention
        q, k, _ = block.attn.qkv(tokens).reshape(1, 17, 3, 4, 64).permute(2, 0, 3, 1, 4)
        expected = (q @ k.transpose(-2, -1) * 64**-0.5).softmax(-1)
    torch.testing.assert_close(attn[0], expected)
    assert not block.attn._forward_hooks  # hooks are removed


def test_attention_rollout_adds_the_residual_and_multiplies():
    torch.manual_seed(0)
    a1, a2 = torch.randn(2, 1, 3, 5, 5).softmax(-1).unbind(0)
    step = lambda a: 0.5 * a.mean(1) + 0.5 * torch.eye(5)  # noqa: E731 (rows already sum to 1)
    torch.testing.assert_close(attention_rollout([a1]), step(a1))
    torch.testing.assert_close(attention_rollout([a1, a2]), step(a2) @ step(a1))


def test_attention_png(image, models, tmp_path):
    t2t, _ = models
    out = visualize.plot_attention(image, t2t, tmp_path / "a.png", blocks=[0, 1], heads=2, label="t2t")
    assert out.is_file() and _pixel_variance(out) > 0
    dense = timm.create_model("t2t_vit_dense", img_size=64, block_config=(1, 1)).eval()  # dense, transition, dense
    out = visualize.plot_attention(image, dense, tmp_path / "dense.png", blocks=[0, 2])  # rollout skips block 1
    assert out.is_file() and _pixel_variance(out) > 0


def test_cli_features_and_attention(image, tmp_path):
    _run(
        [
            "visualize",
            "features",
            str(image),
            "--model",
            "t2t_vit_7",
            "--img-size",
            "64",
            "--channels",
            "4",
            "--out",
            str(tmp_path / "f.png"),
        ]
    )
    _run(
        [
            "visualize",
            "attention",
            str(image),
            "--model",
            "t2t_vit_7",
            "--img-size",
            "64",
            "--blocks",
            "0",
            "-1",
            "--heads",
            "2",
            "--out",
            str(tmp_path / "a.png"),
        ]
    )
    assert _pixel_variance(tmp_path / "f.png") > 0 and _pixel_variance(tmp_path / "a.png") > 0


def test_cli_takes_the_model_from_our_checkpoints(image, models, tmp_path, capsys):
    from t2t_vit.deploy.export import export_safetensors

    t2t, _ = models
    meta = dict(
        arch="t2t_vit_7",
        model_kwargs=dict(img_size=64, depth=2),
        class_names=None,
        data_config=dict(input_size=[3, 64, 64], interpolation="bicubic", mean=[0.5] * 3, std=[0.5] * 3, crop_pct=1.0),
    )
    ours = tmp_path / "ours.safetensors"
    export_safetensors(t2t, ours, meta)
    _run(
        [
            "visualize",
            "features",
            "--checkpoint",
            str(ours),
            str(ours),
            str(image),  # after the checkpoints, as people write it: the image, not a third checkpoint
            "--channels",
            "4",
            "--out",
            str(tmp_path / "f.png"),
        ]
    )
    _run(["visualize", "attention", str(image), "--checkpoint", str(ours), "--out", str(tmp_path / "a.png")])
    assert _pixel_variance(tmp_path / "f.png") > 0 and _pixel_variance(tmp_path / "a.png") > 0
    assert capsys.readouterr().out.count("wrote ") == 2


def test_cli_curves_of_two_runs(tmp_path):
    for run, offset in (("a", 0.0), ("b", 0.5)):
        (tmp_path / run).mkdir(parents=True)
        with open(tmp_path / run / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRICS_COLUMNS)
            writer.writeheader()
            for epoch in range(4):
                writer.writerow(
                    dict(
                        epoch=epoch,
                        train_loss=2 - 0.3 * epoch + offset,
                        val_loss=2.1 - 0.2 * epoch,
                        val_top1=10 + 5 * epoch,
                    )
                )
    out = tmp_path / "curves.png"
    _run(["visualize", "curves", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)])
    assert _pixel_variance(out) > 0
    (tmp_path / "x").mkdir()
    (tmp_path / "a").rename(tmp_path / "x" / "b")  # two runs named b: told apart by their folders
    runs = [tmp_path / "x" / "b", tmp_path / "b", tmp_path / "b"]
    assert run_names(runs) == ["x/b", f"{tmp_path.name}/b", f"{tmp_path.name}/b"]
    fig = curves_figure(runs)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend[:2] == ["x/b train", "x/b held-out"] and legend[2] == f"{tmp_path.name}/b train"
    for ax in fig.axes:  # epochs are whole numbers
        assert all(float(tick).is_integer() for tick in ax.get_xticks())
    fig.clear()
    before = out.read_bytes()
    _stopped_mid_write(lambda: plot_curves([tmp_path / "b"], out))  # training redraws it at every epoch's end
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["b", "curves.png", "x"]


def _stopped_mid_write(draw) -> None:
    """Run `draw` with savefig writing half a PNG and then stopped (a kill, Ctrl-C): it wrote straight into the
    picture's name, cut there."""
    from matplotlib.figure import Figure

    real = Figure.savefig

    def half(self, target, **kwargs):
        Path(target).write_bytes(b"\x89PNG half")
        raise KeyboardInterrupt

    Figure.savefig = half
    try:
        with pytest.raises(KeyboardInterrupt):
            draw()
    finally:
        Figure.savefig = real


def test_bad_inputs_name_the_fix(image, models, tmp_path, capsys):
    t2t, _ = models
    with pytest.raises(InputError, match="missing.png.*does not exist"):
        visualize.load_image(tmp_path / "missing.png", t2t)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(InputError, match="broken.png.*could not be read"):
        visualize.load_image(tmp_path / "broken.png", t2t)
    with pytest.raises(InputError, match="block 7 is out of range.*0..1"):
        visualize.plot_attention(image, t2t, tmp_path / "a.png", blocks=[7])
    dense = timm.create_model("t2t_vit_dense", img_size=64, block_config=(1, 1)).eval()
    with pytest.raises(InputError, match="block 1 .*no attention"):
        visualize.plot_attention(image, dense, tmp_path / "a.png", blocks=[1])
    with pytest.raises(InputError, match="one --checkpoint per --model"):
        _run(["visualize", "features", str(image), "--model", "t2t_vit_7", "--checkpoint", "a", "b"])
    with pytest.raises(InputError, match="an image to show the features of is required: give it first"):
        _run(["visualize", "features", "--model", "t2t_vit_7"])
    with pytest.raises(InputError, match="no metrics.csv"):
        _run(["visualize", "curves", str(tmp_path), "--out", str(tmp_path / "c.png")])
    for flag in ("--img-size", "--heads"):  # argparse's usage error, not a traceback from torchvision's resize
        with pytest.raises(SystemExit):
            _run(["visualize", "attention", str(image), "--model", "t2t_vit_7", flag, "0"])
        assert f"argument {flag}: 0 is not a positive integer" in capsys.readouterr().err


def _edges_blank(path) -> bool:
    """Whether the PNG's outermost rows and columns are all white: nothing drawn runs off an edge."""
    pixels = np.asarray(Image.open(path).convert("RGB"))
    edges = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return bool((edges == 255).all())


def test_long_names_stay_inside_the_pictures(image, models, tmp_path):
    """A release's label ("tag (file)") is wider than an attention column, and two-line titles sit over square
    maps: nothing is cut at an edge of the saved picture."""
    t2t, vit = models
    label = "t2t_vit_t_14.in1k (81.7_T2T_ViTt_14.pth.tar)"
    for heads in (1, 6):
        out = visualize.plot_attention(image, t2t, tmp_path / f"a{heads}.png", blocks=[0, 1], heads=heads, label=label)
        assert _edges_blank(out), out
    out = visualize.plot_feature_maps(image, [(label, t2t), ("hard 4x4 split", vit)], tmp_path / "f.png")
    assert _edges_blank(out)
