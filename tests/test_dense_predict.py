"""`t2t-vit predict` with a dense checkpoint: a drawing per image at the image's size, showing the boxes, masks or
class map it lists; --json for machines (boxes inside the image, names from the checkpoint, masks as COCO RLE);
a task, option or output that does not fit is one line."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from t2t_vit.checkpoint import read_checkpoint
from t2t_vit.cli import deploy as deploy_cli
from t2t_vit.cli import main
from t2t_vit.deploy import dense_predict
from t2t_vit.deploy.dense_predict import coco_rle
from t2t_vit.deploy.predict import predict
from t2t_vit.errors import InputError
from t2t_vit.training.run import train
from t2t_vit.training.tasks import dense_model

from .helpers import one_line_error, tiny_canvases, tiny_dense_config

# pycocotools' decode under NumPy 2 (its own arrays, nothing of ours)
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)
TASKS = ("detection", "instance", "segmentation")


@pytest.fixture(scope="module")
def canvases(tmp_path_factory) -> Path:
    return tiny_canvases(tmp_path_factory.mktemp("canvases"))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, canvases) -> dict:
    """A tiny trained detection and segmentation checkpoint (one epoch each) and an instance one of random weights
    with the detector's meta, by task: each detector keeps its 10 best boxes, of any score."""
    out = {}
    for task in ("detection", "segmentation"):
        cfg = tiny_dense_config(tmp_path_factory.mktemp(task), task, canvases, epochs=1, warmup_epochs=0)
        cfg["model_ema"] = False
        if task == "detection":  # an epoch's detector scores its boxes below torchvision's default floor, 0.05
            cfg["dense_kwargs"].update(box_score_thresh=0.0, box_detections_per_img=10)
        out[task] = Path(train(cfg, progress=False)["run_dir"]) / "last.pth.tar"
    meta = dict(read_checkpoint(out["detection"])["meta"], task="instance")
    torch.manual_seed(0)
    out["instance"] = tmp_path_factory.mktemp("instance") / "instance.pth.tar"
    torch.save({"model": dense_model(meta).state_dict(), "meta": meta}, out["instance"])
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory, canvases) -> list:
    """A held-out canvas (grey) and an RGBA crop of it at a size no backbone stride divides (77 x 61)."""
    folder = tmp_path_factory.mktemp("images")
    grey = Image.open(sorted((canvases / "images" / "val").glob("*.png"))[0])
    grey.save(folder / "canvas.png")
    grey.crop((40, 30, 117, 91)).convert("RGBA").save(folder / "odd.png")
    return [folder / "canvas.png", folder / "odd.png"]


def _predict_json(capsys, *argv) -> list:
    assert main(["predict", *map(str, argv), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _pixels(path: Path) -> torch.Tensor:
    with Image.open(path) as img:
        return pil_to_tensor(img.convert("RGB"))


@pytest.mark.parametrize("task", ["detection", "instance"])
def test_the_best_detection_is_drawn_where_its_box_lies(tmp_path, capsys, monkeypatch, checkpoints, images, task):
    """--json lists boxes inside the image, best first, named from the checkpoint; drawn at the best score alone, the
    drawing is the image with that box (and its label at its top left) on it."""
    monkeypatch.chdir(tmp_path)
    (record,) = _predict_json(capsys, images[0], "--checkpoint", checkpoints[task], "--score-thresh", 0)
    names = read_checkpoint(checkpoints[task])["meta"]["class_names"]
    width, height = Image.open(images[0]).size
    assert (record["task"], record["width"], record["height"]) == (task, width, height)
    found = record["detections"]
    assert found and [d["score"] for d in found] == sorted((d["score"] for d in found), reverse=True)
    for d in found:
        x0, y0, x1, y1 = d["box"]
        assert 0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height, d
        assert d["name"] == names[d["label"]] and d["label"] > 0
    assert list(tmp_path.iterdir()) == []  # --json draws only with --out

    best = found[0]
    out = tmp_path / "out"
    argv = ["predict", str(images[0]), "--checkpoint", str(checkpoints[task]), "--out", str(out)]
    assert main([*argv, "--score-thresh", str(best["score"])]) == 0
    drawing = out / f"{images[0].stem}.png"
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{images[0]}: ") and line.endswith(f"-> wrote {drawing}") and best["name"] in line
    changed = (_pixels(drawing) != _pixels(images[0])).any(0)  # (H, W)
    assert changed.shape == (height, width)
    x0, y0, x1, y1 = (int(v) for v in best["box"])  # as draw_bounding_boxes puts it
    assert changed[y0 : y1 + 1, x0].all()  # the box's left side
    near = torch.zeros_like(changed)  # the box, its 2 px line, the label at its top left
    near[max(y0 - 2, 0) : y1 + 3, max(x0 - 2, 0) : x1 + 3] = True
    near[max(y0 - 2, 0) : y0 + 16, max(x0 - 2, 0) : x0 + 80] = True
    assert not changed[~near].any()


def test_instance_masks_are_coco_rle_inside_their_boxes(capsys, checkpoints, images):
    mask_api = pytest.importorskip("pycocotools.mask")
    (record,) = _predict_json(capsys, images[1], "--checkpoint", checkpoints["instance"], "--score-thresh", 0)
    assert record["detections"]
    for d in record["detections"]:
        mask = d["mask"]
        decoded = mask_api.decode({"size": mask["size"], "counts": mask["counts"]})
        assert decoded.shape == (record["height"], record["width"]) and decoded.sum() == mask["area"]
        ys, xs = np.nonzero(decoded)
        x0, y0, x1, y1 = d["box"]
        assert (xs >= x0 - 2).all() and (xs <= x1 + 2).all() and (ys >= y0 - 2).all() and (ys <= y1 + 2).all()


def test_coco_rle_is_pycocotools_encoding():
    mask_api = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (5, 7), (103, 153)]:
        for p in (0.0, 0.03, 0.5, 0.97, 1.0):
            mask = rng.random(shape) < p
            ours = coco_rle(mask)
            theirs = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
            assert (ours["size"], ours["counts"], ours["area"]) == (list(shape), theirs["counts"].decode(), mask.sum())


def test_a_class_map_is_blended_where_it_is_not_background(tmp_path, capsys, checkpoints, images):
    """Each image's class counts fill it; its drawing (at its size) differs from it at least on every pixel of a class
    other than the background and is the image elsewhere but for the legend. The segmenter has random weights, which
    name many classes (a one-epoch one may name a handful of pixels), and no pixel is black, so that the legend's black
    box changes every pixel it covers."""
    meta = read_checkpoint(checkpoints["segmentation"])["meta"]
    torch.manual_seed(0)
    ckpt = tmp_path / "random.pth.tar"
    torch.save({"model": dense_model(meta).state_dict(), "meta": meta}, ckpt)
    brightened = []
    for image in images:
        with Image.open(image) as img:
            Image.eval(img, lambda v: max(v, 1)).save(tmp_path / image.name)
        brightened.append(tmp_path / image.name)
    images = brightened
    out = tmp_path / "out"
    records = _predict_json(capsys, *images, "--checkpoint", ckpt, "--out", out)
    names = read_checkpoint(ckpt)["meta"]["class_names"]
    for image, record in zip(images, records):
        width, height = Image.open(image).size
        assert (record["width"], record["height"]) == (width, height)
        assert sum(c["pixels"] for c in record["classes"]) == width * height
        assert sum(c["fraction"] for c in record["classes"]) == pytest.approx(1.0, abs=1e-4)
        assert all(c["name"] == names[c["label"]] for c in record["classes"])
        drawing = out / f"{image.stem}.png"
        assert record["drawing"] == str(drawing)
        changed = (_pixels(drawing) != _pixels(image)).any(0)
        assert changed.shape == (height, width)
        foreground = sum(c["pixels"] for c in record["classes"] if c["name"] != "background")
        assert 0 < foreground <= changed.sum() < width * height


@pytest.mark.parametrize("task", TASKS)
def test_any_image_size_is_drawn_at_its_size_and_reported_a_line_each(tmp_path, capsys, monkeypatch, checkpoints, task):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    sizes = [(211, 37), (45, 160)]  # width, height
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"im{i}.jpg")
    assert main(["predict", "im0.jpg", "im1.jpg", "--checkpoint", str(checkpoints[task])]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(": ")[0] for line in lines] == ["im0.jpg", "im1.jpg"]
    for i, size in enumerate(sizes):  # the default folder
        assert lines[i].endswith(f"-> wrote {Path('predictions', f'im{i}.png')}")
        assert Image.open(tmp_path / "predictions" / f"im{i}.png").size == size


def test_a_drawing_is_overwritten_only_with_force(tmp_path, capsys, checkpoints, images):
    argv = ["predict", "--checkpoint", str(checkpoints["segmentation"]), "--out", str(tmp_path), str(images[0])]
    drawing = tmp_path / f"{images[0].stem}.png"
    drawing.write_bytes(b"keep me")
    assert main(argv) == 2
    one_line_error(capsys, str(drawing), "exists", "--force")
    assert drawing.read_bytes() == b"keep me"
    assert main([*argv, "--force"]) == 0
    assert Image.open(drawing).size == Image.open(images[0]).size
    twin = tmp_path / "other" / images[0].name
    twin.parent.mkdir()
    twin.write_bytes(images[0].read_bytes())
    assert main([*argv, str(twin), "--force"]) == 2
    one_line_error(capsys, "would both be drawn to", str(drawing))


@pytest.mark.parametrize(
    "task, args, says",
    [
        ("detection", "--task segmentation", "holds a detection model, not segmentation: drop --task"),
        ("classification", "--task detection", "holds a classification model, not detection"),
        ("segmentation", "--runtime onnxruntime", "--runtime onnxruntime: for a classification checkpoint"),
        ("detection", "--top-k 3 --batch-size 4", "--top-k, --batch-size: for a classification checkpoint"),
        ("segmentation", "--score-thresh 0.3", "--score-thresh: for detection and instance"),
        ("classification", "--out drawings --force", "--out, --force: for a dense checkpoint"),
    ],
)
def test_a_task_or_option_that_does_not_fit_is_one_line(
    tmp_path, capsys, monkeypatch, checkpoints, tiny_checkpoint, images, task, args, says
):
    monkeypatch.chdir(tmp_path)
    ckpt = tiny_checkpoint if task == "classification" else checkpoints[task]
    argv = ["predict", str(images[0]), "--checkpoint", str(ckpt), *args.split()]
    assert main(argv) == 2
    one_line_error(capsys, "t2t-vit predict: error:", says)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "command",
    [
        "export --format onnx --out m.onnx",
        "convert --out hub",
        "visualize attention IMAGE --out a.png",
        "finetune --data digits --output runs",
    ],
)
def test_a_command_for_classifiers_names_a_dense_checkpoint_as_one(
    tmp_path, capsys, monkeypatch, checkpoints, images, command
):
    """Not a list of missing and unexpected tensors sized 'width 0, depth 0': the task, and where such files go."""
    monkeypatch.chdir(tmp_path)
    name, *args = command.replace("IMAGE", str(images[0])).split()
    given = (
        [str(checkpoints["segmentation"])] if name == "convert" else ["--checkpoint", str(checkpoints["segmentation"])]
    )
    assert main([name, *args, *given]) == 2
    one_line_error(capsys, "holds a segmentation model; this takes a classifier's checkpoint (`t2t-vit eval` and")
    assert list(tmp_path.iterdir()) == []


def test_unreadable_inputs_are_skipped_and_none_readable_is_one_line(tmp_path, capsys, checkpoints, images):
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    base = ["predict", "--checkpoint", str(checkpoints["detection"]), "--out", str(tmp_path / "out")]
    assert main([*base, str(notes), str(images[0])]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"{notes}: skipped, unreadable image") and lines[1].startswith(f"{images[0]}: ")
    assert main([*base, str(notes), "--force"]) == 2
    one_line_error(capsys, "none of the 1 inputs could be read")
    assert main([*base, str(tmp_path / "missing.png")]) == 2
    one_line_error(capsys, "missing.png", "is not a file")


def test_the_cli_default_threshold_is_the_librarys():
    assert deploy_cli.SCORE_THRESHOLD == dense_predict.SCORE_THRESHOLD


def test_the_classifier_s_predict_refuses_a_dense_checkpoint(checkpoints, images):
    with pytest.raises(InputError, match="holds a detection model, not classification"):
        predict([str(images[0])], str(checkpoints["detection"]))
