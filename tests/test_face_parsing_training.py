"""Face-parsing training: OHEM against a direct top-k implementation, IoU / mIoU against a hand count, the
optimiser's groups and schedule, flips that swap left and right, and a real `facelab-train` fit that is
preempted, resumed to the same weights, reports the mIoU its exported parser has, and loads with
`load_bisenet`."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from datamodules.face_images import FaceImages
from datamodules.face_render import CELEBAMASK_HQ_CLASSES
from datamodules.faces import SyntheticFaceSource
from facelab.cli.train import run_train
from facelab.cluster import hpc_checkpoints
from facelab.losses.face_parsing import ohem_cross_entropy, parsing_loss
from facelab.metrics.segmentation import confusion_matrix, iou_per_class, mean_iou
from facelab.nets.bisenet import BiSeNet, load_bisenet, parse
from lightning_modules.face_parsing import (
    FaceParsingTraining,
    export_parser,
    parameter_groups,
    warmup_poly_factor,
)
from tests.conftest import compose_config


def _ohem_direct(logits, labels, thresh, n_min):
    """OHEM written from its description: the pixels whose loss exceeds -log(thresh) if there are more
    than n_min of them, else the n_min hardest (top-k)."""
    losses = F.cross_entropy(logits, labels, reduction="none").flatten()
    hard = losses[losses > -math.log(thresh)]
    return hard.mean() if hard.numel() > n_min else losses.topk(n_min).values.mean()


def test_ohem_equals_a_direct_top_k_implementation():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (2, 8, 8), generator=generator)
    uncertain = torch.randn(2, 5, 8, 8, generator=generator) * 0.1  # every pixel hard: the threshold branch
    confident = F.one_hot(labels, 5).permute(0, 3, 1, 2).float() * 8  # easy pixels ...
    confident[0, :, 0, :4] = torch.randn(5, 4, generator=generator) * 3  # ... and 4 hard ones: top-k
    n_min = labels.numel() // 16
    for logits in (uncertain, confident):
        got = ohem_cross_entropy(logits, labels, thresh=0.7, n_min=n_min)
        assert torch.allclose(got, _ohem_direct(logits, labels, 0.7, n_min))
    losses = F.cross_entropy(confident, labels, reduction="none").flatten()
    assert (losses > -math.log(0.7)).sum() <= n_min, "the confident case exercises the top-k branch"
    assert torch.allclose(ohem_cross_entropy(confident, labels), losses.topk(n_min).values.mean())


def test_parsing_loss_sums_the_three_heads():
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 4, (2, 8, 8), generator=generator)
    heads = tuple(torch.randn(2, 4, 8, 8, generator=generator) for _ in range(3))
    total, parts = parsing_loss(heads, labels, kind="ohem")
    direct = [_ohem_direct(head, labels, 0.7, labels.numel() // 16) for head in heads]
    assert torch.allclose(total, sum(direct)) and set(parts) == {"main", "aux16", "aux32"}
    total, _ = parsing_loss(heads, labels, kind="ce", aux_weight=0.5)
    expected = F.cross_entropy(heads[0], labels) + 0.5 * (F.cross_entropy(heads[1], labels)
                                                          + F.cross_entropy(heads[2], labels))
    assert torch.allclose(total, expected)
    with pytest.raises(ValueError, match="model.loss.kind"):
        parsing_loss(heads, labels, kind="dice")


def test_iou_and_miou_equal_a_hand_count():
    target = torch.tensor([[0, 0, 1], [1, 2, 2]])
    predicted = torch.tensor([[0, 1, 1], [1, 2, 0]])
    confusion = confusion_matrix(predicted, target, n_classes=4)
    # class 0: TP 1, FP 1 (a 2 called 0), FN 1 -> 1/3; class 1: TP 2, FP 1 -> 2/3; class 2: TP 1, FN 1 -> 1/2
    ious = iou_per_class(confusion)
    assert torch.allclose(ious[:3], torch.tensor([1 / 3, 2 / 3, 1 / 2], dtype=torch.float64))
    assert ious[3].isnan(), "a class neither present nor predicted has no IoU"
    assert mean_iou(confusion) == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert int(confusion.sum()) == 6 and int(confusion[2, 0]) == 1  # row: true class, column: predicted


def test_optimiser_groups_and_schedule_follow_face_parsing_pytorch():
    net = BiSeNet(n_classes=5)
    groups = parameter_groups(net, weight_decay=5e-4)
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))
    head_weights = {id(net.conv_out.conv_out.weight), id(net.ffm.conv1.weight)}
    batch_norm = {id(p) for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()}
    for group in groups:
        ids = {id(p) for p in group["params"]}
        if ids & head_weights:
            assert group["head"], "the fusion module and the output heads train at 10x lr"
        if ids & batch_norm:
            assert group["weight_decay"] == 0.0
    assert any(g["head"] for g in groups) and any(not g["head"] for g in groups)
    schedule = dict(lr=1e-2, warmup_steps=10, warmup_start_lr=1e-5, max_steps=110, power=0.9)
    assert warmup_poly_factor(0, **schedule) == pytest.approx(1e-3)
    assert warmup_poly_factor(5, **schedule) * 1e-2 == pytest.approx(1e-5 * (1e-2 / 1e-5) ** 0.5)
    assert warmup_poly_factor(10, **schedule) == pytest.approx(1.0)
    assert warmup_poly_factor(60, **schedule) == pytest.approx(0.5**0.9)
    assert warmup_poly_factor(110, **schedule) == 0.0


def test_a_flip_swaps_the_left_and_right_classes():
    faces = SyntheticFaceSource(size=64, train_length=16).dataset("train")
    flipped = FaceImages(faces, flip=True, seed=0)
    l_eye = CELEBAMASK_HQ_CLASSES.index("l_eye")
    index = next(i for i in range(16) if not torch.equal(flipped[i]["image"], faces[i]["image"])
                 and (faces[i]["parsing"] == l_eye).any())  # a flipped face that shows its left eye
    original, mirrored = faces[index]["parsing"], flipped[index]["parsing"]
    assert torch.equal(flipped[index]["image"], faces[index]["image"].flip(-1))
    for left, right in (("l_eye", "r_eye"), ("l_brow", "r_brow"), ("l_ear", "r_ear"), ("hair", "hair")):
        i, j = CELEBAMASK_HQ_CLASSES.index(left), CELEBAMASK_HQ_CLASSES.index(right)
        assert torch.equal(mirrored == j, (original == i).flip(-1)), f"{left} must become {right}"


FIT = [
    "experiment=face_parsing_synthetic",
    "data.faces.size=32", "data.faces.train_length=8", "data.faces.val_length=4",
    "data.batch_size=4", "data.eval_batch_size=4",
    "trainer.max_epochs=1", "+trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false",
    # validate and checkpoint per epoch (the experiments do it every N steps of their long splits)
    "trainer.val_check_interval=null", "callbacks.model_checkpoint.every_n_train_steps=null",
    "callbacks.model_checkpoint.every_n_epochs=1",
    "~callbacks.rich_progress_bar", "~callbacks.model_summary", "logger=csv", "extras.print_config=false",
]


def _checkpoint(path):
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.mark.slow
def test_fit_preempted_and_resumed_equals_uninterrupted_and_its_parser_loads(tmp_path):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    run_train(compose_config("train", straight, FIT))
    signal = ["+callbacks.signal._target_=tests.signal_helpers.SendSignalAt", "+callbacks.signal.epoch=0",
              "+callbacks.signal.batch=0"]
    assert run_train(compose_config("train", interrupted, [*FIT, *signal])) is None
    assert len(hpc_checkpoints(interrupted)) == 1
    run_train(compose_config("train", interrupted, [*FIT, "ckpt_path=last"]))
    expected = _checkpoint(straight / "checkpoints" / "last.ckpt")
    got = _checkpoint(interrupted / "checkpoints" / "last.ckpt")
    assert got["global_step"] == expected["global_step"] == 2
    for key, value in expected["state_dict"].items():
        assert torch.equal(got["state_dict"][key], value), f"{key} differs after the mid-epoch resume"
    assert got["lr_schedulers"][0]["last_epoch"] == 2

    # The exported parser is the trained net, and the logged mIoU is its mIoU on the validation faces.
    module = FaceParsingTraining.load_from_checkpoint(straight / "checkpoints" / "last.ckpt").eval()
    parser = load_bisenet(straight / "parser.pth")
    val = SyntheticFaceSource(size=32, val_length=4).dataset("val")
    images = torch.stack([val[i]["image"] for i in range(4)])
    labels = torch.stack([val[i]["parsing"] for i in range(4)])
    with torch.no_grad():
        assert torch.equal(parser(images), module.net(images))
        predicted = parse(parser, images)
    by_hand = []
    for k in range(19):
        union = ((predicted == k) | (labels == k)).sum().item()
        if union:
            by_hand.append(((predicted == k) & (labels == k)).sum().item() / union)
    metrics = json.loads((straight / "final_metrics.json").read_text())
    assert metrics["val/miou"] == pytest.approx(sum(by_hand) / len(by_hand), abs=1e-6)
    assert "val/iou/skin" in metrics
    export_parser(straight / "checkpoints" / "last.ckpt", tmp_path / "exported.pth")
    assert torch.equal(load_bisenet(tmp_path / "exported.pth")(images), parser(images))


def test_export_names_a_foreign_checkpoint(tmp_path):
    foreign = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"generator.weight": torch.zeros(1)}}, foreign)
    with pytest.raises(ValueError, match="other.ckpt.*not a FaceParsingTraining"):
        export_parser(foreign, tmp_path / "parser.pth")


def test_the_experiment_composes_with_the_reference_settings(tmp_path):
    cfg = compose_config("train", tmp_path, ["experiment=face_parsing_synthetic"])
    assert cfg.model.loss.kind == "ohem" and cfg.model.loss.thresh == 0.7
    assert cfg.model.loss.n_min_fraction == 1 / 16 and cfg.model.optim.lr == 0.01
    assert cfg.data.require_parsing and cfg.data.flip and cfg.callbacks.model_checkpoint.monitor == "val/miou"
