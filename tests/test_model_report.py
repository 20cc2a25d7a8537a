"""The embedded models' report (facelab/cli/model_report.py): parts found in hand-made label maps, and one
report on tiny random networks whose figures equal numpy's count of the same label maps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from datamodules.face_render import CELEBAMASK_HQ_CLASSES
from datamodules.synthetic_faces import SyntheticFaces
from facelab.cli import model_report
from facelab.metrics.face_parts import FACE_PARTS, found_fractions, parts_found
from facelab.nets.bisenet import load_bisenet
from facelab.nets.stylegan2_checkpoints import save_generator
from tests.fit_models import save_random_bisenet, tiny_generator

ID = {name: k for k, name in enumerate(CELEBAMASK_HQ_CLASSES)}


def test_parts_found_counts_pixels_per_part_and_the_mouth_by_its_lips():
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[0, :4] = ID["skin"]  # 32 pixels
    labels[0, 4, :4] = ID["l_eye"]  # 4: found
    labels[0, 5, :3] = ID["r_eye"]  # 3: below min_pixels
    labels[0, 6, :2] = ID["u_lip"]
    labels[0, 6, 2:4] = ID["l_lip"]  # the mouth: 4 lip pixels, no `mouth` class
    labels[1] = ID["hair"]
    found = parts_found(labels, min_pixels=4)
    names = list(FACE_PARTS)
    assert found[0].tolist() == [name in ("skin", "left eye", "mouth") for name in names]
    assert found[1].tolist() == [name == "hair" for name in names]
    assert parts_found(labels, min_pixels=3)[0, names.index("right eye")]
    fractions = found_fractions(found)
    assert fractions["skin"] == 0.5 and fractions["hair"] == 0.5 and fractions["nose"] == 0.0
    assert fractions["all"] == 0.0
    labels[1, 0, :4], labels[1, 1, :4], labels[1, 2, :4] = ID["skin"], ID["l_eye"], ID["r_eye"]
    labels[1, 3, :4], labels[1, 4, :4] = ID["nose"], ID["mouth"]
    assert found_fractions(parts_found(labels, min_pixels=4))["all"] == 0.5
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        parts_found(labels[0])


def _numpy_iou(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """IoU per class present in either map, by set counting."""
    ious = {}
    for k, name in enumerate(CELEBAMASK_HQ_CLASSES):
        union = np.logical_or(predicted == k, truth == k).sum()
        if union:
            ious[name] = np.logical_and(predicted == k, truth == k).sum() / union
    return ious


def test_report_on_tiny_networks_equals_numpy_counts_of_the_same_label_maps(tmp_path):
    generator = tiny_generator()
    save_generator(generator, tmp_path / "g.pt")
    save_random_bisenet(tmp_path / "p.pth", n_classes=len(CELEBAMASK_HQ_CLASSES))
    count, size = 16, generator.img_resolution
    models = ["--generator", str(tmp_path / "g.pt"), "--parser", str(tmp_path / "p.pth")]
    options = ["--out", str(tmp_path / "report"), "--count", str(count), "--min-pixels", "2"]
    figures = model_report.main([*models, *options])

    faces = SyntheticFaces(size=size, length=count, seed=model_report.HELD_OUT_SEED)  # the test split
    truth = np.stack([faces[i]["parsing"].numpy() for i in range(count)])
    parser = load_bisenet(tmp_path / "p.pth")
    images = torch.stack([faces[i]["image"] for i in range(count)])
    predicted = model_report.parse_all(parser, images).numpy()
    expected = _numpy_iou(predicted, truth)
    assert figures["parser_iou"] == pytest.approx({k: round(v, 4) for k, v in expected.items()}, abs=1e-4)
    assert figures["parser_miou"] == pytest.approx(np.mean(list(expected.values())), abs=1e-4)

    def numpy_all(labels: np.ndarray) -> float:
        found = [[np.isin(m, [ID[c] for c in classes]).sum() >= 2 for classes in FACE_PARTS.values()]
                 for m in labels]
        return float(np.mean([all(row) for row in found]))

    rows = figures["parts_found"]
    assert rows["real faces, true labels"]["all"] == pytest.approx(numpy_all(truth))
    assert rows["real faces, true labels"]["all"] > 0.5  # most synthetic faces show every part
    assert rows["real faces, parser"]["all"] == pytest.approx(numpy_all(predicted))
    samples = model_report.generator_samples(generator, range(count), psi=1.0)
    sample_labels = model_report.parse_all(parser, samples).numpy()
    assert rows["generator samples, parser"]["all"] == pytest.approx(numpy_all(sample_labels))

    written = json.loads((tmp_path / "report" / "model_report.json").read_text())
    assert written["parser_miou"] == figures["parser_miou"]
    markdown = (tmp_path / "report" / "model_report.md").read_text()
    assert f"{figures['parser_miou']:.3f}" in markdown and "generator samples, parser" in markdown
    for grid in ("samples.png", "samples_parsed.png", "real_parsed.png"):
        assert (tmp_path / "report" / grid).stat().st_size > 0
