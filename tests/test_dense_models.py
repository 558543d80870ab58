"""Dense models (t2t_vit.dense): each detector's and the segmenter's loss falls on a few canvases, any image size comes
back in the input's coordinates, the authors' weights load into the backbone, parameters map to the T2T-ViT's names,
COCO mAP and mIoU on cases worked by hand, drawings of predictions."""

import math
import sys

import pytest
import timm
import torch
from torchvision.transforms.functional import pil_to_tensor

from t2t_vit import InputError
from t2t_vit.data import segmentation_collate
from t2t_vit.data.dense import create_dense_dataset
from t2t_vit.dense import (
    CocoMeanAP,
    SegmentationScores,
    backbone_parameter_name,
    create_dense_model,
    draw_detections,
    draw_segmentation,
)

from .helpers import TINY_MODEL, official_state_dict, tiny_canvases

# a T2T-ViT-7 two blocks deep and 64 wide under a 32-wide FPN; the R-CNNs sample fewer anchors and RoIs
TINY = dict(backbone_kwargs=dict(embed_dim=64, depth=2, num_heads=2, token_dim=32), fpn_channels=32)
RCNN_SAMPLING = dict(rpn_batch_size_per_image=64, rpn_post_nms_top_n_train=200, box_batch_size_per_image=64)
KINDS = {  # (task, detector, kwargs of each kind)
    "fasterrcnn": ("detection", "fasterrcnn", RCNN_SAMPLING),
    "retinanet": ("detection", "retinanet", {}),
    "maskrcnn": ("instance", "fasterrcnn", RCNN_SAMPLING),
    "segmenter": ("segmentation", "fasterrcnn", dict(head_channels=32)),
    # the options the canvas demos use: a narrow box head; a full-resolution refinement and a lighter background
    "fasterrcnn_narrow": ("detection", "fasterrcnn", dict(RCNN_SAMPLING, representation_size=64)),
    "maskrcnn_narrow": ("instance", "fasterrcnn", dict(RCNN_SAMPLING, representation_size=64)),
    "segmenter_refined": (
        "segmentation",
        "fasterrcnn",
        dict(head_channels=32, detail_channels=8, class_weight=[0.1] + [1.0] * 10),
    ),
}
# every detection kept, so that the bounds below are checked on boxes
KEEP_ALL = dict(
    fasterrcnn=dict(box_score_thresh=0.0), retinanet=dict(score_thresh=0.0), maskrcnn=dict(box_score_thresh=0.0)
)


def _tiny(kind: str, num_classes: int = 11, **kwargs) -> torch.nn.Module:
    task, detector, sizes = KINDS[kind]
    return create_dense_model(task, num_classes=num_classes, detector=detector, **TINY, **sizes, **kwargs)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on 2 cores that other processes share, torch's second OpenMP thread waits for a core at
    every parallel region, and a tiny detector's step took 2.7 s instead of 0.15 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def canvases(tmp_path_factory):
    """The first 4 training canvases (64-96 px, both sides drawn apart) as (images in [0, 1], detection targets with
    masks, semantic masks, detection classes, segmentation classes)."""
    root = tiny_canvases(tmp_path_factory.mktemp("canvases"), side=(64, 96))
    detection = create_dense_dataset(f"coco:{root}", "train", "detection")
    segmentation = create_dense_dataset(f"masks:{root}", "train", "segmentation")
    images = [detection[i][0].float() / 255 for i in range(4)]
    targets = [detection[i][1] for i in range(4)]
    masks = [segmentation[i][1] for i in range(4)]
    return images, targets, masks, detection.classes, segmentation.classes


# ----------------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("kind", list(KINDS))
def test_loss_falls_over_a_few_steps_on_canvases(canvases, kind):
    images, targets, masks, det_classes, seg_classes = canvases
    torch.manual_seed(0)
    segmenter = kind.startswith("segmenter")
    model = _tiny(kind, len(seg_classes if segmenter else det_classes)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(10):
        loss = sum(model(images, masks if segmenter else targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # seeds 0-2 end at 0.13-0.49 of the first loss (the R-CNNs, whose sampled RoIs make theirs noisy, at 0.43-0.49)
    assert losses[-1] < 0.7 * losses[0], losses


def test_every_parameter_trains(canvases):
    """No parameter is left without a gradient (DistributedDataParallel would need find_unused_parameters)."""
    images, targets, masks, classes, _ = canvases
    for kind in KINDS:
        model = _tiny(kind, len(classes)).train()
        sum(model(images[:2], (masks if kind.startswith("segmenter") else targets)[:2]).values()).backward()
        assert [n for n, p in model.named_parameters() if p.grad is None] == [], kind


# ----------------------------------------------------------------------------------------------- sizes

ODD_SIZES = [(77, 123), (101, 64)]


@pytest.mark.parametrize("kind", ["fasterrcnn", "retinanet", "maskrcnn"])
def test_detections_of_odd_sizes_come_back_inside_the_input(kind):
    torch.manual_seed(0)
    model = _tiny(kind, **KEEP_ALL[kind]).eval()
    images = [torch.rand(3, h, w) for h, w in ODD_SIZES]
    with torch.no_grad():
        batch, _ = model.transform(images)
        detections = model(images)
    # each image at its own size, the batch padded to the multiple of 32 the soft splits tile and the top level needs
    assert batch.image_sizes == ODD_SIZES and tuple(batch.tensors.shape[-2:]) == (128, 128)
    for (h, w), found in zip(ODD_SIZES, detections):
        boxes = found["boxes"]
        assert len(boxes) > 0
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        # RetinaNet scores every class with a sigmoid, label 0 too (torchvision's: trained as never an object)
        assert found["labels"].min() >= (0 if kind == "retinanet" else 1) and found["labels"].max() < 11
        if kind == "maskrcnn":
            assert found["masks"].shape == (len(boxes), 1, h, w)


def test_min_size_resizes_as_torchvision_does_and_boxes_come_back():
    model = _tiny("fasterrcnn", min_size=64, max_size=200, box_score_thresh=0.0).eval()
    image = torch.rand(3, 77, 123)
    with torch.no_grad():
        batch, _ = model.transform([image])
        (found,) = model([image])
    assert batch.image_sizes == [(64, round(123 * 64 / 77))]  # the shorter side to min_size
    assert (found["boxes"][:, 2] <= 123).all() and (found["boxes"][:, 3] <= 77).all()
    assert (found["boxes"][:, 2] > 64 * 123 / 77).any()  # in the input's coordinates, not the resized image's


@pytest.mark.parametrize("pyramid", ["t2t", "simple"])
def test_segmenter_logits_are_at_the_input_size(pyramid):
    model = _tiny("segmenter", num_classes=5, pyramid=pyramid).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, *ODD_SIZES[0])).shape == (2, 5, *ODD_SIZES[0])
        # a list of sizes: the batch's largest, the rest of each padding (as segmentation_collate's ignored masks)
        logits = model([torch.rand(3, h, w) for h, w in ODD_SIZES])
    assert logits.shape == (2, 5, 101, 123)
    model.train()
    masks = [torch.randint(0, 5, size) for size in ODD_SIZES]
    masks[1][:] = 255  # all ignored: the loss is the first image's alone, not NaN
    loss = model([torch.rand(3, h, w) for h, w in ODD_SIZES], masks)["loss_seg"]
    assert torch.isfinite(loss) and loss > 0
    # the padding is black however it comes, as segmentation_collate pads a batch: what the backbone sees of an image
    # padded by the collate (zeros, then one size) is what it sees of the image given alone in a list
    images = [torch.rand(3, h, w) for h, w in ODD_SIZES]
    collated = segmentation_collate([(image, torch.zeros(image.shape[1:], dtype=torch.int64)) for image in images])[0]
    torch.testing.assert_close(model._batch(collated)[0], model._batch(images)[0], rtol=0, atol=0)


def test_size_divisible_follows_the_soft_splits_and_the_top_stride():
    fashion_splits = [[3, 2, 1], [3, 2, 1], [3, 1, 1]]  # strides 2, 4, 4 and the pool's 8: images a multiple of 8
    model = create_dense_model(
        "segmentation", num_classes=3, backbone_kwargs=dict(TINY["backbone_kwargs"], soft_splits=fashion_splits)
    )
    assert model.size_divisible == 8
    assert model.backbone.strides == [2, 4, 4, 8]
    assert create_dense_model("detection", "timm:resnet18", num_classes=3).transform.size_divisible == 32
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 3, 21, 30)).shape == (1, 3, 21, 30)


# ----------------------------------------------------------------------------------------------- weights


@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_authors_checkpoint_loads_into_the_backbone(tmp_path, official_keys, task):
    ema = official_state_dict(official_keys, "t2t_vit_7")
    path = tmp_path / "71.7_T2T_ViT_7.pth.tar"
    torch.save({"state_dict_ema": ema, "state_dict": official_state_dict(official_keys, "t2t_vit_7", 1)}, path)
    model = create_dense_model(task, num_classes=3, checkpoint_path=path, fpn_channels=32)
    # the backbone's state (the Performer's random features and the position table too) under the authors' names
    loaded = {backbone_parameter_name(k): v for k, v in model.state_dict().items()}
    loaded.pop(None)
    # every tensor of the T2T-ViT but its head and final norm, which a feature pyramid has not
    assert set(loaded) == set(ema) - {"head.weight", "head.bias", "norm.weight", "norm.bias"}
    assert all(torch.equal(v, ema[name]) for name, v in loaded.items())


def test_our_checkpoint_loads_into_the_backbone(tiny_checkpoint):
    model = create_dense_model(
        "detection", num_classes=3, checkpoint_path=tiny_checkpoint, backbone_kwargs=dict(TINY_MODEL, img_size=16)
    )
    ours = torch.load(tiny_checkpoint, weights_only=True)["model"]
    loaded = {backbone_parameter_name(k): v for k, v in model.state_dict().items()}
    loaded.pop(None)
    assert set(loaded) == set(ours) - {"head.weight", "head.bias", "norm.weight", "norm.bias"}
    assert all(torch.equal(v, ours[name]) for name, v in loaded.items())


def test_timm_cnn_backbone_takes_a_checkpoint_and_freezes_its_batch_norm(tmp_path):
    resnet = timm.create_model("resnet18")
    torch.save(resnet.state_dict(), tmp_path / "resnet18.pth")
    model = create_dense_model("detection", "timm:resnet18", num_classes=3, checkpoint_path=tmp_path / "resnet18.pth")
    assert torch.equal(model.backbone.body.layer4[1].conv2.weight, resnet.layer4[1].conv2.weight)
    assert type(model.backbone.body.bn1).__name__ == "FrozenBatchNorm2d"
    assert backbone_parameter_name("backbone.body.layer4.1.conv2.weight") == "layer4.1.conv2.weight"


@pytest.mark.parametrize("kind", list(KINDS))
def test_backbone_parameter_names_are_the_t2t_vits_own(kind):
    model = _tiny(kind)
    names = {n: backbone_parameter_name(n) for n, _ in model.named_parameters()}
    backbone = timm.create_model("t2t_vit_7", **TINY["backbone_kwargs"])
    own = {n for n, _ in backbone.named_parameters()} - {"head.weight", "head.bias", "norm.weight", "norm.bias"}
    assert {v for v in names.values() if v is not None} == own
    assert {"cls_token", "blocks.1.attn.qkv.weight", "tokens_to_token.attention1.kqv.weight"} <= own
    assert all(v is None for n, v in names.items() if not n.startswith("backbone.body."))  # FPN and heads
    assert any(n.startswith("backbone.fpn.") for n in names)


def test_backbone_parameter_name_sees_through_ddp_and_compile():
    assert backbone_parameter_name("module._orig_mod.backbone.body.model.blocks.3.attn.qkv.weight") == (
        "blocks.3.attn.qkv.weight"
    )
    assert backbone_parameter_name("module.backbone.fpn.layer_blocks.0.0.weight") is None
    assert backbone_parameter_name("roi_heads.box_head.fc6.weight") is None


# ----------------------------------------------------------------------------------------------- bad input


def test_narrow_box_head_and_refinement_have_the_sizes_asked_for():
    detector = _tiny("maskrcnn_narrow", num_classes=4)
    assert detector.roi_heads.box_head.fc7.out_features == 64
    assert detector.roi_heads.box_predictor.cls_score.out_features == 4
    assert detector.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 4
    segmenter = _tiny("segmenter_refined", num_classes=11).eval()
    assert segmenter.detail.image[0].out_channels == 8
    # the refinement starts as the identity on the upsampled logits: a model without it, given the same weights,
    # gives the same logits
    plain = _tiny("segmenter", num_classes=11).eval()
    plain.load_state_dict({k: v for k, v in segmenter.state_dict().items() if not k.startswith("detail.")})
    image = torch.rand(1, 3, 45, 70)
    with torch.no_grad():
        torch.testing.assert_close(segmenter(image), plain(image))


def test_class_weight_weighs_each_pixel_by_its_class():
    """The loss is the weighted mean over the pixels: with weight 0 for class 0, the pixels of class 0 do not count."""
    torch.manual_seed(0)
    model = _tiny("segmenter", num_classes=3, class_weight=[0.0, 1.0, 2.0]).train()
    image, mask = torch.rand(1, 3, 32, 32), torch.randint(0, 3, (1, 32, 32))  # 32: no padding to crop
    head = []
    model.head.register_forward_hook(lambda module, args, out: head.append(out))
    loss = model(image, mask)["loss_seg"]
    logits = torch.nn.functional.interpolate(head[0], size=(32, 32), mode="bilinear", align_corners=False)
    per_pixel = torch.nn.functional.cross_entropy(logits, mask, reduction="none")
    weights = torch.tensor([0.0, 1.0, 2.0])[mask]
    torch.testing.assert_close(loss, (per_pixel * weights).sum() / weights.sum())


def test_bad_arguments_name_the_fix():
    with pytest.raises(InputError, match="task 'panoptic' is not one of"):
        create_dense_model("panoptic", num_classes=3)
    with pytest.raises(InputError, match="detector 'yolo' is not one of"):
        create_dense_model("detection", num_classes=3, detector="yolo")
    with pytest.raises(InputError, match=r"num_classes=1 for detection: give the classes with the background"):
        create_dense_model("detection", num_classes=1)
    with pytest.raises(InputError, match="RetinaNet takes no box_score_thresh"):
        create_dense_model("detection", num_classes=3, detector="retinanet", box_score_thresh=0.1, **TINY)
    with pytest.raises(InputError, match="instance segmentation is Mask R-CNN"):
        create_dense_model("instance", num_classes=3, detector="retinanet")
    with pytest.raises(InputError, match="the segmenter takes no min_size"):
        create_dense_model("segmentation", num_classes=3, min_size=64)
    with pytest.raises(InputError, match="size_divisible=8: .* tile multiples of 16 only: use 32"):
        create_dense_model("segmentation", num_classes=3, size_divisible=8, **TINY)
    with pytest.raises(InputError, match="class_weight has 2 values .* for 3 classes"):
        create_dense_model("segmentation", num_classes=3, class_weight=[1.0, 1.0], **TINY)
    for task, key in (("detection", "fpn_channels"), ("segmentation", "head_channels")):
        with pytest.raises(InputError, match=f"{key}=0: give a whole number of channels >= 1"):
            create_dense_model(task, num_classes=3, **{**TINY, key: 0})
    with pytest.raises(InputError, match="FasterRCNN takes no detail_channels"):
        create_dense_model("detection", num_classes=3, detail_channels=8, **TINY)
    for bad, why in (
        (dict(box_detections_per_img=-1), r"FasterRCNN box_detections_per_img=-1: give a whole number >= 1"),
        (dict(rpn_pre_nms_top_n_test=2.5), r"rpn_pre_nms_top_n_test=2.5: give a whole number >= 1 \(torchvision: 1000"),
        (dict(box_nms_thresh=5), r"box_nms_thresh=5: give a number from 0 to 1 \(torchvision: 0.5\)"),
        (dict(representation_size=0), r"representation_size=0: give a whole number >= 1"),
    ):
        with pytest.raises(InputError, match=why):
            create_dense_model("detection", num_classes=3, **bad, **TINY)
    with pytest.raises(InputError, match=r"RetinaNet detections_per_img=True: give a whole number"):
        create_dense_model("detection", num_classes=3, detector="retinanet", detections_per_img=True, **TINY)
    segmenter = _tiny("segmenter", num_classes=3).eval()
    with pytest.raises(InputError, match=r"float images in \[0, 1\].*image.float\(\) / 255"):
        segmenter(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(InputError, match="a mask of shape"):
        segmenter.train()(torch.rand(1, 3, 32, 32), torch.zeros(1, 32, 30, dtype=torch.int64))


# ----------------------------------------------------------------------------------------------- metrics


def _target(*boxes_and_labels, size=(60, 80), masks=False):
    boxes = torch.tensor([b for b, _ in boxes_and_labels], dtype=torch.float32).reshape(-1, 4)
    target = dict(boxes=boxes, labels=torch.tensor([label for _, label in boxes_and_labels], dtype=torch.int64))
    if masks:
        target["masks"] = _box_masks(boxes, size).to(torch.uint8)
    return target


def _box_masks(boxes: torch.Tensor, size) -> torch.Tensor:
    out = torch.zeros(len(boxes), *size)
    for i, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
        out[i, y1:y2, x1:x2] = 1
    return out


def _prediction(target: dict, scores, boxes=None) -> dict:
    boxes = target["boxes"] if boxes is None else torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    out = dict(boxes=boxes, labels=target["labels"][: len(boxes)], scores=torch.tensor(scores, dtype=torch.float32))
    if "masks" in target:
        out["masks"] = _box_masks(boxes, target["masks"].shape[-2:])[:, None] * 0.9  # probabilities
    return out


A, B = [10, 10, 40, 30], [45, 20, 75, 55]


def test_map_is_one_for_a_perfect_prediction_boxes_and_masks():
    targets = [_target((A, 1), (B, 2), masks=True), _target((B, 1), masks=True)]
    metric = CocoMeanAP(masks=True)
    metric.update([_prediction(t, [0.9] * len(t["boxes"])) for t in targets], targets)
    assert metric.compute() == dict(map=1.0, map50=1.0, map75=1.0, mask_map=1.0, mask_map50=1.0, mask_map75=1.0)


def test_map_is_zero_without_predictions():
    metric = CocoMeanAP()
    target = _target((A, 1))
    metric.update(
        [dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.int64), scores=torch.zeros(0))], [target]
    )
    assert metric.compute() == dict(map=0.0, map50=0.0, map75=0.0)


def test_map_of_half_right_cases_is_the_arithmetic():
    # one class found, one missed: the mean over the classes of 1 and 0
    metric = CocoMeanAP()
    target = _target((A, 1), (B, 2))
    metric.update([_prediction(target, [0.9], boxes=[A])], [target])
    assert metric.compute()["map"] == pytest.approx(0.5)
    # two images, one object each: the higher-scored detection right, the other on nothing. Precision is 1 up to
    # recall 1/2, then no detection reaches more: COCO's 101 recall points 0, 0.01, ..., 0.5 score 1, the rest 0
    targets = [_target((A, 1)), _target((A, 1))]
    metric = CocoMeanAP()
    metric.update([_prediction(targets[0], [0.9]), _prediction(targets[1], [0.8], boxes=[B])], targets)
    assert metric.compute() == pytest.approx(dict(map=51 / 101, map50=51 / 101, map75=51 / 101))


def test_map_merges_across_processes():
    targets = [_target((A, 1)), _target((A, 1))]
    predictions = [_prediction(targets[0], [0.9]), _prediction(targets[1], [0.8], boxes=[B])]
    rank0, rank1 = CocoMeanAP(), CocoMeanAP()
    rank0.update(predictions[:1], targets[:1])
    rank1.update(predictions[1:], targets[1:])
    rank0.merge(rank1.state())
    assert rank0.compute()["map"] == pytest.approx(51 / 101)


def test_map_without_pycocotools_names_the_extra(monkeypatch):
    for name in ("pycocotools", "pycocotools.mask", "pycocotools.coco", "pycocotools.cocoeval"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(InputError, match=r"pip install 't2t-vit\[dense\]'"):
        CocoMeanAP()


def test_segmentation_scores_on_a_hand_made_confusion():
    masks = torch.tensor([[[0, 0, 1], [1, 1, 255]]])
    predicted = torch.tensor([[[0, 1, 1], [1, 1, 2]]])  # the ignored pixel's prediction does not count
    scores = SegmentationScores(num_classes=4)
    scores.update(predicted, masks)
    # truth 0: 1 right, 1 taken for 1; truth 1: 3 right. IoU 0: 1 / (2 + 1 - 1); IoU 1: 3 / (3 + 4 - 3); 2 and 3 absent
    assert scores.confusion[:2, :2].tolist() == [[1, 1], [0, 3]]
    assert scores.compute() == pytest.approx(dict(miou=(1 / 2 + 3 / 4) / 2, pixel_acc=4 / 5))
    assert math.isnan(scores.iou()[2]) and math.isnan(scores.iou()[3])
    # logits give the same, and another process's scores add
    other = SegmentationScores(num_classes=4)
    other.update(torch.nn.functional.one_hot(predicted, 4).permute(0, 3, 1, 2).float(), masks)
    scores.merge(other.state())
    assert scores.compute() == pytest.approx(dict(miou=(1 / 2 + 3 / 4) / 2, pixel_acc=4 / 5))
    with pytest.raises(InputError, match="outside 0..3"):
        scores.update(torch.zeros(1, 2, 3, dtype=torch.int64), torch.full((1, 2, 3), 7))


# ----------------------------------------------------------------------------------------------- drawing


def test_draw_detections_marks_the_boxes_and_masks_only():
    image = torch.full((3, 60, 80), 0.5)
    target = _target((A, 1), (B, 2), masks=True)
    prediction = _prediction(target, [0.9, 0.3])  # the second under the threshold
    drawn = pil_to_tensor(draw_detections(image, prediction, ["__background__", "a", "b"]))
    plain = (image * 255).round().to(torch.uint8)
    assert drawn.shape == plain.shape
    assert (drawn[:, 10:31, 10:41] != plain[:, 10:31, 10:41]).any(dim=0).float().mean() > 0.9  # tinted and framed
    assert torch.equal(drawn[:, 21:55, 46:75], plain[:, 21:55, 46:75])  # B scored 0.3: not drawn
    assert torch.equal(drawn[:, 35:, :40], plain[:, 35:, :40])


def test_draw_segmentation_tints_the_classes_not_the_background():
    image = torch.full((1, 60, 80), 128, dtype=torch.uint8)  # grey, 1 channel
    mask = torch.zeros(60, 80, dtype=torch.int64)
    mask[30:50, 20:60] = 2
    mask[55:, :] = 255
    drawn = pil_to_tensor(draw_segmentation(image, mask, ["background", "a", "b"]))
    assert drawn.shape == (3, 60, 80)
    assert (drawn[:, 30:50, 20:60] != 128).any(0).all()  # class b, blended in its colour
    assert (drawn[:, 20:, 65:] == 128).all() and (drawn[:, 52:, :] == 128).all()  # background and ignored: unchanged
