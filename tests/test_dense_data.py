"""Detection and segmentation data: COCO instances (boxes, contiguous labels, masks from polygons and RLE), semantic
index masks, each bad input counted and named; the canvases generator (deterministic, boxes and masks equal to the
pasted items); the flip and resize that move boxes and masks with the image, and the two collations."""

import dataclasses
import json
import logging
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from t2t_vit import InputError
from t2t_vit.data import (
    DenseTransform,
    coco,
    create_dataset,
    create_dense_dataset,
    detection_collate,
    masks,
    segmentation_collate,
)
from t2t_vit.data.canvases import (
    CanvasConfig,
    cached_canvases,
    canvases_root,
    fashion_canvases,
    rle_counts,
    write_canvases,
)
from t2t_vit.data.dense import canvas_config
from t2t_vit.data.dense_transforms import crop, hflip, resize
from t2t_vit.data.masks import SemanticMasks

from .helpers import tiny_canvases

# pycocotools' decode under NumPy 2 (its own arrays, nothing of ours)
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)
NEEDS_PYCOCOTOOLS = "instance masks need pycocotools: pip install 't2t-vit[dense]'"
H, W = 30, 40  # the COCO test image


def _pycocotools() -> None:
    pytest.importorskip("pycocotools", reason=NEEDS_PYCOCOTOOLS)


def _image_pixels(seed: int = 0, size=(H, W)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def _rect_mask(x: int, y: int, w: int, h: int) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[y : y + h, x : x + w] = True
    return mask


def _instances() -> dict:
    """A valid instances JSON: one 40 x 30 image, three objects (a polygon, an uncompressed and a compressed RLE),
    category ids 7 ("cat") and 3 ("dog") listed out of order."""
    from pycocotools import mask as mask_api

    uncompressed = {"size": [H, W], "counts": rle_counts(_rect_mask(2, 3, 6, 4))}
    compressed = mask_api.encode(np.asfortranarray(_rect_mask(30, 20, 5, 5).astype(np.uint8)))
    compressed["counts"] = compressed["counts"].decode()
    return {
        "images": [{"id": 42, "file_name": "a.png", "width": W, "height": H}],
        "annotations": [
            dict(
                id=1, image_id=42, category_id=7, bbox=[10, 10, 10, 10], segmentation=[[10, 10, 20, 10, 20, 20, 10, 20]]
            ),
            dict(id=2, image_id=42, category_id=3, bbox=[2, 3, 6, 4], segmentation=uncompressed),
            dict(id=3, image_id=42, category_id=7, bbox=[30, 20, 5, 5], segmentation=compressed),
        ],
        "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}],
    }


def _coco_folder(root: Path, instances: dict) -> Path:
    """root/train/a.png and root/train/annotations.json (the one-folder-per-split layout)."""
    (root / "train").mkdir(parents=True)
    Image.fromarray(_image_pixels()).save(root / "train" / "a.png")
    (root / "train" / "annotations.json").write_text(json.dumps(instances))
    return root


def test_coco_reads_boxes_contiguous_labels_and_masks(tmp_path):
    _pycocotools()
    ds = create_dense_dataset(f"coco:{_coco_folder(tmp_path, _instances())}", "train")
    assert ds.classes == ["__background__", "dog", "cat"] and ds.category_ids == [3, 7]  # labels in category id order
    assert ds.problems.counts == {}
    image, target = ds[0]
    assert image.dtype == torch.uint8 and torch.equal(image, torch.from_numpy(_image_pixels()).permute(2, 0, 1))
    assert target["image_id"] == 42
    assert target["boxes"].dtype == torch.float32
    assert target["boxes"].tolist() == [[10, 10, 20, 20], [2, 3, 8, 7], [30, 20, 35, 25]]  # x1 y1 x2 y2
    assert target["labels"].tolist() == [2, 1, 2]
    assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (3, H, W)
    expected = [
        _rect_mask(10, 10, 10, 10),
        _rect_mask(2, 3, 6, 4),
        _rect_mask(30, 20, 5, 5),
    ]  # polygon, RLE, compressed RLE
    for mask, want in zip(target["masks"], expected):
        assert torch.equal(mask.bool(), torch.from_numpy(want))


def _break(instances: dict, change: str) -> str:
    """Spoil one thing of a valid instances JSON; returns the name the warning must give."""
    first = instances["annotations"][0]
    if change == "missing image":
        instances["images"].append({"id": 5, "file_name": "gone.jpg", "width": W, "height": H})
        return "gone.jpg"
    if change == "unknown image":
        instances["annotations"].append(dict(first, id=9, image_id=77))
        return "annotation 9 (image 77)"
    extra = dict(first, id=9)
    instances["annotations"].append(extra)
    if change == "zero width":
        extra["bbox"] = [10, 10, 0, 10]
    elif change == "negative height":
        extra["bbox"] = [10, 10, 5, -1]
    elif change == "unknown category":
        extra["category_id"] = 99
    elif change == "bbox not numbers":
        extra["bbox"] = ["a", 1, 2, 3]
    elif change == "box outside":
        extra["bbox"] = [W + 5, 0, 4, 4]
    elif change == "RLE of another size":
        extra["segmentation"] = {"size": [H + 1, W], "counts": [H * W + W]}
    elif change == "RLE runs short":
        extra["segmentation"] = {"size": [H, W], "counts": [5, 10]}
    elif change == "polygon of two points":
        extra["segmentation"] = [[1, 1, 5, 5]]
    return "annotation 9 (image 42)"


@pytest.mark.parametrize(
    "change, kind",
    [
        ("missing image", coco.MISSING_IMAGE),
        ("unknown image", coco.UNKNOWN_IMAGE),
        ("zero width", coco.EMPTY_BOX),
        ("negative height", coco.EMPTY_BOX),
        ("unknown category", coco.UNKNOWN_CATEGORY),
        ("bbox not numbers", coco.BAD_BBOX),
        ("box outside", coco.OUTSIDE_BOX),
        ("RLE of another size", coco.MASK_SIZE),
        ("RLE runs short", coco.BAD_SEGMENTATION),
        ("polygon of two points", coco.BAD_SEGMENTATION),
    ],
)
def test_coco_bad_annotations_are_dropped_counted_and_named(tmp_path, caplog, change, kind):
    _pycocotools()
    instances = _instances()
    name = _break(instances, change)
    with caplog.at_level(logging.WARNING):
        ds = create_dense_dataset(f"coco:{_coco_folder(tmp_path, instances)}", "train")
    assert ds.problems.counts == {kind: 1} and ds.problems.names[kind] == [name]
    assert name in caplog.text and kind in caplog.text
    assert len(ds) == 1 and len(ds[0][1]["boxes"]) == 3  # the good ones stay


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "is not JSON"),
        ("[1, 2]", "it holds a list"),
        ('{"images": [], "annotations": []}', "it has no categories list"),
        (
            '{"images": [{"id": 1, "file_name": "a.png", "width": 4}], "annotations": [], "categories": []}',
            r"images\[0\] has no height",
        ),
        (
            '{"images": [], "annotations": [{"image_id": 1, "category_id": 1}], "categories": []}',
            r"annotations\[0\] has no bbox",
        ),
        (
            '{"images": [], "annotations": [], "categories": [{"id": "7", "name": "cat"}]}',
            r"categories\[0\] has a non-integer id",
        ),
    ],
)
def test_a_json_that_is_not_coco_is_one_input_error(tmp_path, content, message):
    (tmp_path / "instances.json").write_text(content)
    with pytest.raises(InputError, match=message) as info:
        create_dense_dataset(f"coco:{tmp_path}:instances.json", "train", with_masks=False)
    assert "instances.json" in str(info.value) and "\n" not in str(info.value)


def test_coco_layouts(tmp_path):
    _pycocotools()
    shipped = tmp_path / "shipped"  # as COCO ships it: val2017/ and annotations/instances_val2017.json
    (shipped / "val2017").mkdir(parents=True)
    (shipped / "annotations").mkdir()
    Image.fromarray(_image_pixels()).save(shipped / "val2017" / "a.png")
    instances = _instances()
    (shipped / "annotations" / "instances_val2017.json").write_text(json.dumps(instances))
    assert create_dense_dataset(f"coco:{shipped}", "val").records[0].path == shipped / "val2017" / "a.png"
    named = tmp_path / "named"  # the JSON given, {split} standing for the split; images in images/<split>/
    (named / "images" / "train").mkdir(parents=True)
    Image.fromarray(_image_pixels()).save(named / "images" / "train" / "a.png")
    (named / "boxes-train.json").write_text(json.dumps(instances))
    assert len(create_dense_dataset(f"coco:{named}:boxes-{{split}}.json", "train")) == 1
    with pytest.raises(InputError, match=r"no instances JSON for the train split .*instances_train2017\.json"):
        create_dense_dataset(f"coco:{shipped}", "train")
    with pytest.raises(InputError, match="holds detection targets, not segmentation"):
        create_dense_dataset(f"coco:{shipped}", "val", task="segmentation")


def test_missing_pycocotools_names_the_extra(tmp_path, monkeypatch):
    _pycocotools()
    root = _coco_folder(tmp_path, _instances())
    monkeypatch.setitem(sys.modules, "pycocotools", None)  # `import pycocotools` raises ImportError
    with pytest.raises(InputError, match=r"pip install 't2t-vit\[dense\]'"):
        create_dense_dataset(f"coco:{root}", "train")
    image, target = create_dense_dataset(f"coco:{root}", "train", with_masks=False)[0]  # boxes need no pycocotools
    assert len(target["boxes"]) == 3 and "masks" not in target


# ----------------------------------------------------------------------------------------------- masks:DIR


def _masks_folder(root: Path, names=("a", "b"), classes="background\ncat\ndog\n") -> Path:
    """root/images/train/<name>.jpg beside root/masks/train/<name>.png: 12 x 16 images, masks of indices 0..2."""
    for folder in ("images", "masks"):
        (root / folder / "train").mkdir(parents=True)
    for i, name in enumerate(names):
        Image.fromarray(_image_pixels(i, (12, 16))).save(root / "images" / "train" / f"{name}.png")
        indices = np.zeros((12, 16), dtype=np.uint8)
        indices[2:6, 3:9], indices[8:, :4], indices[0, 0] = 1, 2, 255
        Image.fromarray(indices).save(root / "masks" / "train" / f"{name}.png")
    if classes is not None:
        (root / "classes.txt").write_text(classes)
    return root


def test_masks_dir_reads_images_and_index_masks(tmp_path):
    root = _masks_folder(tmp_path)
    ds = create_dense_dataset(f"masks:{root}", "train", task="segmentation")
    assert ds.classes == ["background", "cat", "dog"] and len(ds) == 2 and ds.problems.counts == {}
    image, mask = ds[1]
    assert torch.equal(image, torch.from_numpy(_image_pixels(1, (12, 16))).permute(2, 0, 1))
    assert mask.dtype == torch.int64 and mask.shape == (12, 16)
    assert mask[3, 4] == 1 and mask[9, 0] == 2 and mask[0, 0] == 255 and mask[0, 15] == 0
    assert (
        create_dense_dataset(
            f"masks:{_masks_folder(tmp_path / 'plain', classes=None)}", "train", task="segmentation"
        ).classes
        is None
    )


def test_masks_dir_values_beyond_the_classes_are_ignored(tmp_path, caplog):
    ds = SemanticMasks(_masks_folder(tmp_path, classes="background\ncat\n"), "train")
    with caplog.at_level(logging.WARNING):
        _, mask = ds[0]
    assert (mask[8:, :4] == 255).all() and mask[3, 4] == 1  # 2 is not a class of classes.txt
    assert "values [2] are not classes" in caplog.text


@pytest.mark.parametrize(
    "spoil, kind",
    [
        (lambda m: m.unlink(), masks.MISSING_MASK),
        (lambda m: Image.new("L", (16, 13)).save(m), masks.MASK_SIZE),
        (lambda m: Image.new("RGB", (16, 12)).save(m), masks.NOT_INDEX),
        (lambda m: m.write_bytes(b"not a png"), masks.UNREADABLE),
    ],
)
def test_masks_dir_bad_masks_are_skipped_counted_and_named(tmp_path, caplog, spoil, kind):
    root = _masks_folder(tmp_path)
    spoil(root / "masks" / "train" / "b.png")
    with caplog.at_level(logging.WARNING):
        ds = create_dense_dataset(f"masks:{root}", "train", task="segmentation")
    assert ds.problems.counts == {kind: 1} and ds.problems.names[kind][0].startswith("b.png")
    assert kind in caplog.text and "b.png" in caplog.text
    assert [image.name for image, _ in ds.samples] == ["a.png"]


def test_masks_dir_layout_errors(tmp_path):
    root = _masks_folder(tmp_path)
    with pytest.raises(InputError, match=r"has no images/val/ folder: the layout is DIR/images/<split>/x\.jpg"):
        create_dense_dataset(f"masks:{root}", "val", task="segmentation")
    (root / "masks" / "train" / "a.png").unlink()
    (root / "masks" / "train" / "b.png").unlink()
    with pytest.raises(InputError, match="no image with a usable mask"):
        create_dense_dataset(f"masks:{root}", "train", task="segmentation")


# ----------------------------------------------------------------------------------------------- canvases


def _files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_canvases_are_deterministic_from_the_seed(tmp_path):
    first, again, other = (tiny_canvases(tmp_path / name, seed) for name, seed in (("a", 0), ("b", 0), ("c", 1)))
    files = _files(first)
    assert len(files) == 2 * (8 + 4) + 2 + 1  # images and masks, two JSONs, classes.txt
    assert files == _files(again)
    differ = [name for name, data in _files(other).items() if data != files[name]]
    assert len(differ) >= 2 * (8 + 4)  # every image and mask; the JSONs
    # a canvas depends on (seed, split, index) only: more canvases leave the first ones as they were
    more = tmp_path / "more"
    write_canvases(more, CanvasConfig(train=10, val=4))
    assert (more / "images" / "train" / "00007.png").read_bytes() == files["images/train/00007.png"]


def test_canvas_boxes_and_masks_are_the_pasted_digits(tmp_path):
    config = CanvasConfig(train=8, val=4)
    root = tiny_canvases(tmp_path)
    for split in ("train", "val"):
        instances = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
        digits = create_dataset("digits", split)
        assert [c["name"] for c in instances["categories"]] == [str(d) for d in range(10)]
        by_image = {image["id"]: [] for image in instances["images"]}
        for ann in instances["annotations"]:
            by_image[ann["image_id"]].append(ann)
        for image in instances["images"]:
            canvas = np.array(Image.open(root / "images" / split / image["file_name"]))
            semantic = np.array(Image.open(root / "masks" / split / image["file_name"]))
            h, w = canvas.shape
            assert (h, w) == (image["height"], image["width"]) and 96 <= min(h, w) and max(h, w) <= 160
            anns = by_image[image["id"]]
            assert 1 <= len(anns) <= 4
            union = np.zeros((h, w), dtype=bool)
            for ann in anns:
                mask = _decode_counts(ann["segmentation"]["counts"], h, w)
                assert not (mask & union).any()  # objects do not overlap
                union |= mask
                # the mask is the pasted digit's ink: the source digit scaled to where it went, at or above threshold
                x, y, pw, ph = ann["pasted_at"]
                assert 0 <= x and x + pw <= w and 0 <= y and y + ph <= h
                scaled = np.asarray(
                    Image.fromarray(digits.images[ann["source_index"]]).resize((pw, ph), Image.BILINEAR)
                )
                ink = scaled >= config.mask_threshold
                assert np.array_equal(mask[y : y + ph, x : x + pw], ink) and mask.sum() == ink.sum() == ann["area"]
                assert np.array_equal(canvas[y : y + ph, x : x + pw][ink], scaled[ink])
                assert ann["category_id"] == digits.labels[ann["source_index"]] + 1
                rows, cols = np.nonzero(mask)
                bx, by, bw, bh = ann["bbox"]  # the mask's tight box, inside the canvas
                assert (bx, by, bx + bw, by + bh) == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
                assert np.array_equal(semantic[mask], np.full(mask.sum(), ann["category_id"]))
            assert np.array_equal(canvas >= config.mask_threshold, union)  # clutter stays below the ink
            assert (semantic[~union] == 0).all()


def _decode_counts(counts: list, h: int, w: int) -> np.ndarray:
    """COCO's uncompressed RLE (column-major runs, zeros first) as a bool (H, W) mask, without pycocotools."""
    values = np.repeat(np.arange(len(counts)) % 2 == 1, counts)
    return values.reshape(w, h).T


def test_rle_counts_decode_through_pycocotools():
    _pycocotools()
    from pycocotools import mask as mask_api

    rng = np.random.default_rng(0)
    for first_pixel in (False, True):  # COCO's runs start with zeros: a set first pixel needs a run of 0 zeros
        for _ in range(10):
            mask = rng.random((int(rng.integers(1, 20)), int(rng.integers(1, 20)))) < rng.random()
            mask[0, 0] = first_pixel
            rle = mask_api.frPyObjects({"size": list(mask.shape), "counts": rle_counts(mask)}, *mask.shape)
            assert np.array_equal(mask_api.decode(rle), mask)


def test_canvases_read_back_through_both_readers(tmp_path):
    _pycocotools()
    root = tiny_canvases(tmp_path)
    detection = create_dense_dataset(f"coco:{root}", "val")
    segmentation = create_dense_dataset(f"masks:{root}", "val", task="segmentation")
    assert len(detection) == len(segmentation) == 4 and detection.problems.counts == {} == segmentation.problems.counts
    assert (
        detection.classes == ["__background__", *map(str, range(10))] == ["__background__", *segmentation.classes[1:]]
    )
    for (image, target), (seg_image, semantic) in zip(detection, segmentation):
        assert torch.equal(image, seg_image) and image.shape[0] == 3
        painted = torch.zeros_like(semantic)
        for mask, label in zip(target["masks"], target["labels"]):
            painted[mask.bool()] = label
        assert torch.equal(painted, semantic)  # pycocotools decodes the RLE into the semantic mask's objects


def test_canvases_spec_draws_once_into_the_cache(tmp_path, monkeypatch):
    from t2t_vit.data import canvases, dense

    monkeypatch.setattr(dense, "CanvasConfig", lambda: CanvasConfig(train=3, val=2))
    ds = create_dense_dataset("canvases", "train", task="segmentation", cache_dir=tmp_path)
    assert len(ds) == 3 and [p.name for p in tmp_path.iterdir()] == [ds.images_dir.parents[1].name]

    def no_second_drawing(*args):
        raise AssertionError("drew the canvases again")

    monkeypatch.setattr(canvases, "write_canvases", no_second_drawing)
    assert len(create_dense_dataset("canvases", "val", task="segmentation", cache_dir=tmp_path)) == 2
    monkeypatch.undo()
    monkeypatch.setattr(dense, "CanvasConfig", lambda: CanvasConfig(train=3, val=2))
    more = create_dense_dataset("canvases:5", "train", task="segmentation", cache_dir=tmp_path)  # N training ones
    assert len(more) == 5 and more.images_dir != ds.images_dir
    for index in range(3):  # each canvas is drawn from (seed, split, index): the first 3 are the 3 above
        assert torch.equal(more[index][1], ds[index][1])
    val = create_dense_dataset("canvases:5", "val", task="segmentation", cache_dir=tmp_path)
    assert len(val) == 2 and torch.equal(
        val[1][0], create_dense_dataset("canvases", "val", "segmentation", cache_dir=tmp_path)[1][0]
    )
    for bad in ("canvases:many", "canvases:0"):
        with pytest.raises(InputError, match="canvases:N takes a number of training canvases"):
            create_dense_dataset(bad, "train", task="segmentation", cache_dir=tmp_path)


def test_fashion_canvases_draw_from_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("t10k", 10)):  # small IDX files of 28 x 28 items
        pixels = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        (tmp_path / f"{split}-images-idx3-ubyte").write_bytes(
            struct.pack(">HBBIII", 0, 8, 3, n, 28, 28) + pixels.tobytes()
        )
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        (tmp_path / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">HBBI", 0, 8, 1, n) + labels.tobytes())
    config = fashion_canvases(str(tmp_path))
    assert config.source == f"fashion-mnist:{tmp_path.resolve()}" and config.object_side == (24, 56)
    root = cached_canvases(dataclasses.replace(config, train=3, val=2), tmp_path / "cache")
    instances = json.loads((root / "annotations" / "instances_val.json").read_text())
    assert [c["name"] for c in instances["categories"]][:2] == ["T-shirt/top", "Trouser"] and instances["annotations"]
    assert root.name.startswith("canvases-fashion-mnist-")


# ----------------------------------------------------------------------------------------------- transforms, batches


def test_flip_moves_boxes_and_masks_with_the_image(tmp_path):
    _pycocotools()
    image, target = create_dense_dataset(f"coco:{tiny_canvases(tmp_path)}", "train")[0]
    flipped, moved = hflip(image, target)
    assert torch.equal(flipped, image.flip(-1)) and torch.equal(moved["labels"], target["labels"])
    for box, mask in zip(moved["boxes"], moved["masks"]):
        rows, cols = torch.nonzero(mask, as_tuple=True)
        assert box.tolist() == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]  # still the mask's tight box
    assert all(
        torch.equal(a, b) for a, b in zip(hflip(flipped, moved)[1].values(), target.values()) if torch.is_tensor(a)
    )
    seg_image, semantic = create_dense_dataset(f"masks:{tmp_path}", "train", task="segmentation")[0]
    _, semantic_flipped = DenseTransform(hflip=1.0)(seg_image, semantic)
    assert torch.equal(semantic_flipped, semantic.flip(-1))
    assert torch.equal(DenseTransform(hflip=0.0)(image, target)[0], image)


def test_resize_scales_boxes_as_it_resizes_masks(tmp_path):
    _pycocotools()
    image, target = create_dense_dataset(f"coco:{tiny_canvases(tmp_path)}", "train")[1]
    small, scaled = resize(image, target, (64, 80))
    assert small.shape == (3, 64, 80) and small.dtype == torch.uint8 and scaled["masks"].shape[1:] == (64, 80)
    for box, mask in zip(scaled["boxes"], scaled["masks"]):
        rows, cols = torch.nonzero(mask, as_tuple=True)
        tight = torch.tensor([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=torch.float32)
        assert (box - tight).abs().max() <= 1.0  # nearest pixels: within a pixel of the scaled box


def test_crop_keeps_the_boxes_centred_in_it_clipped_and_windows_the_masks():
    image = torch.arange(20 * 30, dtype=torch.uint8).reshape(1, 20, 30)
    target = {
        "boxes": torch.tensor([[2.0, 2.0, 8.0, 6.0], [12.0, 4.0, 26.0, 10.0], [0.0, 14.0, 4.0, 20.0]]),
        "labels": torch.tensor([1, 2, 3]),
        "area": torch.tensor([24.0, 84.0, 24.0]),
        "iscrowd": torch.zeros(3, dtype=torch.int64),
        "masks": torch.zeros(3, 20, 30, dtype=torch.uint8),
        "image_id": 7,
    }
    window, inside = crop(image, target, 3, 10, (10, 12))  # rows 3..12, columns 10..21
    assert torch.equal(window, image[:, 3:13, 10:22])
    # box 0's centre (5, 4) is left of the window, box 2's (2, 17) below it; box 1's (19, 7) is in, cut at x = 22
    assert inside["labels"].tolist() == [2] and inside["boxes"].tolist() == [[2.0, 1.0, 12.0, 7.0]]
    assert inside["area"].tolist() == [84.0 * 10 / 14] and inside["masks"].shape == (1, 10, 12)
    assert inside["image_id"] == 7 and inside["iscrowd"].shape == (1,)
    semantic = torch.arange(20 * 30).reshape(20, 30)
    assert torch.equal(crop(image, semantic, 15, 25, (10, 12))[1], semantic[15:, 25:])  # clipped to the image
    torch.manual_seed(0)
    windows = [DenseTransform(crop_size=(10, 12))(image, semantic) for _ in range(50)]
    assert all(w.shape == (1, 10, 12) and torch.equal(w[0].long(), m % 256) for w, m in windows)
    corners = {(int(m[0, 0]) // 30, int(m[0, 0]) % 30) for _, m in windows}
    assert len(corners) > 10 and all(0 <= r <= 10 and 0 <= c <= 18 for r, c in corners)  # random, all inside
    assert DenseTransform(crop_size=(64, 64))(image, semantic)[0].shape == (1, 20, 30)  # smaller: the whole image


def test_collations(tmp_path):
    root = _masks_folder(tmp_path)
    a, b = SemanticMasks(root, "train")[0], SemanticMasks(root, "train")[1]
    wide = (torch.full((3, 10, 20), 7, dtype=torch.uint8), torch.ones(10, 20, dtype=torch.int64))
    images, targets, skipped = segmentation_collate([a, None, wide, (*b, 2, 0)], multiple=8)
    assert images.shape == (3, 3, 16, 24) and targets.shape == (3, 16, 24) and skipped == 1 + 2
    assert (
        torch.equal(targets[0, :12, :16], a[1]) and (targets[0, 12:] == 255).all() and (targets[0, :, 16:] == 255).all()
    )
    assert (images[1, :, :10, :20] == 7).all() and (images[1, :, 10:] == 0).all() and (targets[1, 10:] == 255).all()
    box_target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    images, targets, skipped = detection_collate([(a[0], box_target), None, (wide[0], box_target, 1, 0)])
    assert [i.shape[-1] for i in images] == [16, 20] and targets == [box_target, box_target] and skipped == 2


def test_the_readme_predict_lines_name_the_folders_the_demos_draw_into():
    """The README's predict examples point into the cache by folder name, which changes with the canvases' config and
    drawing (GENERATOR_VERSION): a change to either must change the README too."""
    import yaml

    from .helpers import ROOT

    readme = (ROOT / "README.md").read_text()
    for config in ("canvases_detection", "canvases_segmentation"):
        spec = yaml.safe_load((ROOT / "src" / "t2t_vit" / "configs" / f"{config}.yaml").read_text())["data"]
        folder = canvases_root(canvas_config(spec), Path("~/.cache/t2t_vit")).as_posix()
        assert f"t2t-vit predict {folder}/images/val/" in readme, (config, folder)
