"""The shipped embedded models (models/synthetic128/, what `make demo` runs on) load and do what the README
says: the parser's mIoU on a fixed set of held-out synthetic faces, and the generator's samples showing the
face parts the parser reads, each above a floor set a margin below the README's figures (256 faces there,
32 here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from datamodules.face_render import CELEBAMASK_HQ_CLASSES
from facelab.cli import model_report
from facelab.metrics.face_parts import found_fractions, parts_found
from facelab.metrics.segmentation import confusion_matrix, mean_iou
from facelab.nets.bisenet import load_bisenet
from facelab.nets.stylegan2_checkpoints import load_generator

MODELS = Path(__file__).resolve().parents[1] / "models" / "synthetic128"
COUNT = 32
PARSER_MIOU_FLOOR = 0.50  # README: 0.565 on 256 held-out faces
ALL_PARTS_FLOOR = 0.70  # README: 0.86 of 256 samples at psi 1.0 (real faces: 0.81 by the parser)


@pytest.fixture(scope="module")
def parser():
    return load_bisenet(MODELS / "parser.pth")


def test_shipped_files_are_small_and_in_their_formats():
    sizes = [(MODELS / name).stat().st_size for name in ("generator.pt", "parser.pth")]
    assert sum(sizes) < 25 * 2**20
    generator = load_generator(MODELS / "generator.pt")
    assert generator.img_resolution == 128  # DragGAN reads the 128 px block


def test_shipped_parser_miou_on_held_out_faces(parser):
    images, truth = model_report.held_out_faces(128, COUNT)
    predicted = model_report.parse_all(parser, images)
    miou = mean_iou(confusion_matrix(predicted, truth, len(CELEBAMASK_HQ_CLASSES)))
    assert miou >= PARSER_MIOU_FLOOR


def test_shipped_generator_samples_show_the_face_parts(parser):
    generator = load_generator(MODELS / "generator.pt").eval()
    samples = model_report.generator_samples(generator, range(COUNT), psi=1.0)
    assert torch.isfinite(samples).all()
    fractions = found_fractions(parts_found(model_report.parse_all(parser, samples)))
    assert fractions["all"] >= ALL_PARTS_FLOOR
