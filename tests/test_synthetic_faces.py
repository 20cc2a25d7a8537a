"""The procedural face renderer: determinism, API contract, label and landmark consistency, variety."""

import hashlib
import json
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from datamodules.synthetic_faces import (
    CELEBAMASK_HQ_CLASSES,
    HAIR_COLOURS,
    HAIR_STYLES,
    SyntheticFaces,
    main,
    render_face,
)

CLASS = {name: k for k, name in enumerate(CELEBAMASK_HQ_CLASSES)}
SIZE = 128
N_FACES = 80


@pytest.fixture(scope="module")
def faces():
    """A batch of faces at 128 px shared by the consistency tests."""
    return [render_face(SIZE, 5, index) for index in range(N_FACES)]


def _distance_to(mask: np.ndarray) -> np.ndarray:
    """Per pixel, the distance in pixels to the nearest pixel of `mask` (inf when the mask is empty)."""
    if not mask.any():
        return np.full(mask.shape, np.inf)
    return ndimage.distance_transform_edt(~mask)


def _at(field: np.ndarray, point: np.ndarray):
    """The value of `field` at the pixel holding landmark `point` (x, y)."""
    return field[int(round(float(point[1]))), int(round(float(point[0])))]


def _chromaticity(rgb) -> np.ndarray:
    rgb = np.asarray(rgb, dtype=float)
    return rgb / rgb.sum(axis=-1, keepdims=True).clip(1e-6)


def test_same_seed_and_index_give_identical_faces_and_others_differ():
    first, again = render_face(64, 3, 10), render_face(64, 3, 10)
    for name in ("image", "parsing", "landmarks"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    assert first.attributes == again.attributes
    json.dumps(first.attributes)  # plain python values only, no numpy scalars
    assert not np.array_equal(first.image, render_face(64, 3, 11).image)
    assert not np.array_equal(first.image, render_face(64, 4, 10).image)


def test_the_face_is_the_same_person_at_every_size():
    for index in range(4):
        small, large = render_face(32, 1, index), render_face(256, 1, index)
        assert small.attributes == large.attributes
        # Landmarks are the same geometry, so they scale exactly with the image.
        np.testing.assert_allclose(small.landmarks / 32, large.landmarks / 256, atol=1e-4)


@pytest.mark.parametrize("size", [32, 64, 256, 1024])
def test_every_supported_size_renders(size):
    sample = render_face(size, 0, 9)  # long hair and clear glasses
    assert sample.image.shape == (size, size, 3) and sample.image.dtype == np.uint8
    assert sample.parsing.shape == (size, size) and sample.parsing.dtype == np.uint8
    assert sample.parsing.max() < len(CELEBAMASK_HQ_CLASSES)
    assert sample.landmarks.shape == (68, 2) and sample.landmarks.dtype == np.float32
    assert (sample.landmarks >= 0).all() and (sample.landmarks <= size - 1).all()
    # Below 64 px a brow or an upper lip may cover less than half of any pixel and so own none.
    parts = ("skin", "neck", "cloth", "background")
    if size >= 64:
        parts += ("nose", "l_eye", "r_eye", "l_lip", "eye_g")
    for name in parts:
        assert (sample.parsing == CLASS[name]).any(), name


def test_dataset_items_follow_the_data_contract():
    dataset = SyntheticFaces(size=64, length=5, seed=2)
    assert len(dataset) == 5
    item = dataset[3]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert -1.0 <= item["image"].min() and item["image"].max() <= 1.0
    assert item["parsing"].shape == (64, 64) and item["parsing"].dtype == torch.int64
    assert item["landmarks"].shape == (68, 2) and item["landmarks"].dtype == torch.float32
    assert item["meta"] == {"index": 3, "name": "synthetic_s2_0000003"}
    expected = torch.from_numpy(render_face(64, 2, 3).image).permute(2, 0, 1).float() / 127.5 - 1
    torch.testing.assert_close(item["image"], expected)
    assert dataset[-1]["meta"]["index"] == 4


def test_out_of_range_sizes_and_indices_are_rejected():
    for size in (31, 1025, 0, 64.0):
        with pytest.raises(ValueError, match="size"):
            render_face(size, 0, 0)
        with pytest.raises(ValueError, match="size"):
            SyntheticFaces(size=size)
    dataset = SyntheticFaces(size=32, length=3)
    for index in (3, 100, -4):
        with pytest.raises(IndexError):
            dataset[index]
    with pytest.raises(ValueError, match="index"):
        render_face(32, 0, -1)


def test_labelled_pixels_have_the_colours_chosen_for_their_class(faces):
    for sample in faces:
        colours, image, parsing = sample.attributes["colours"], sample.image.astype(float), sample.parsing
        # Shading is grey (a multiplier per pixel), so the chromaticity of a class keeps its chosen colour's.
        for name in ("skin", "hair"):
            if colours[name] is None:
                continue
            pixels = image[parsing == CLASS[name]]
            assert len(pixels) > 20, name
            median = np.median(_chromaticity(pixels), axis=0)
            np.testing.assert_allclose(median, _chromaticity(colours[name]), atol=0.025, err_msg=name)
            brightness = np.median(pixels.sum(axis=1)) / max(sum(colours[name]), 1)
            assert 0.3 < brightness < 1.35, name
        background = np.median(image[parsing == CLASS["background"]], axis=0)
        low, high = np.minimum(*colours["background"]), np.maximum(*colours["background"])
        assert np.all(background >= low - 6) and np.all(background <= high + 6)


def test_classes_appear_exactly_when_the_attributes_say_so(faces):
    rules = {"glasses": "eye_g", "hat": "hat", "earrings": "ear_r", "necklace": "neck_l",
             "mouth_open": "mouth"}
    for sample in faces:
        present = set(np.unique(sample.parsing).tolist())
        a = sample.attributes
        for attribute, name in rules.items():
            assert (CLASS[name] in present) == bool(a[attribute]), (attribute, a)
        assert (CLASS["hair"] in present) == (a["hair_style"] != "bald"), a
        if a["ears_visible"]:
            assert {CLASS["l_ear"], CLASS["r_ear"]} <= present, a
    seen = Counter(key for s in faces for key in ("glasses", "hat", "earrings", "necklace", "mouth_open")
                   if s.attributes[key])
    assert min(seen[key] for key in rules) >= 3, seen  # every rule was exercised both ways


def test_left_and_right_classes_sit_on_the_persons_side(faces):
    columns = np.broadcast_to(np.arange(SIZE)[None, :], (SIZE, SIZE))
    for sample in faces:
        for left, right in (("l_eye", "r_eye"), ("l_brow", "r_brow"), ("l_ear", "r_ear")):
            left_mask, right_mask = sample.parsing == CLASS[left], sample.parsing == CLASS[right]
            if left_mask.any() and right_mask.any():  # sunglasses, a fringe or hair may hide them
                # The person's right is on the image left.
                assert columns[right_mask].mean() < columns[left_mask].mean(), (left, right)


def test_landmarks_lie_on_the_parts_they_name(faces):
    for sample in faces:
        parsing, marks, a = sample.parsing, sample.landmarks, sample.attributes
        assert (marks >= 0).all() and (marks <= SIZE - 1).all()
        occluders = np.isin(parsing, [CLASS[n] for n in ("hair", "hat", "eye_g")])
        near_occluder = _distance_to(occluders)
        sunglasses = (parsing == CLASS["eye_g"]) & (a["glasses_style"] == "sunglasses")
        for first, name in ((36, "r_eye"), (42, "l_eye")):
            distance = _distance_to((parsing == CLASS[name]) | sunglasses)
            assert all(_at(distance, p) <= 1.5 for p in marks[first:first + 6]), name
        skin = parsing == CLASS["skin"]
        skin_edge = skin ^ ndimage.binary_erosion(skin)
        edge_distance = _distance_to(skin_edge)
        for point in marks[0:17]:
            if _at(near_occluder, point) > 2:
                assert _at(edge_distance, point) <= 1.5
        lips = _distance_to(np.isin(parsing, [CLASS["u_lip"], CLASS["l_lip"], CLASS["mouth"]]))
        assert all(_at(lips, p) <= 1.5 for p in marks[48:68])
        nose = _distance_to(np.isin(parsing, [CLASS["nose"], CLASS["skin"], CLASS["eye_g"]]))
        assert all(_at(nose, p) <= 1.0 for p in marks[27:36])
        assert all(_at(parsing, p) == CLASS["nose"] for p in marks[29:31])
        for first, name in ((17, "r_brow"), (22, "l_brow")):
            brow = _distance_to(parsing == CLASS[name])
            assert all(_at(brow, p) <= 1.5 for p in marks[first:first + 5] if _at(near_occluder, p) > 2), name


def test_two_thousand_faces_are_all_different_and_cover_every_style():
    hashes, styles, colours, counts = set(), Counter(), Counter(), Counter()
    n = 2000
    for index in range(n):
        sample = render_face(32, 0, index)
        hashes.add(hashlib.sha1(sample.image.tobytes()).hexdigest())
        a = sample.attributes
        styles[a["hair_style"]] += 1
        colours[a["hair_colour"]] += 1
        counts.update(key for key in ("glasses", "hat", "earrings", "necklace") if a[key])
    assert len(hashes) == n
    assert set(styles) == set(HAIR_STYLES) and min(styles.values()) > 0.04 * n, styles
    assert set(colours) - {None} == set(HAIR_COLOURS) and min(colours.values()) > 0.04 * n, colours
    assert 0.18 * n < counts["glasses"] < 0.32 * n and 0.1 * n < counts["hat"] < 0.2 * n, counts
    assert counts["earrings"] > 0.1 * n and counts["necklace"] > 0.1 * n, counts


def test_command_line_writes_a_contact_sheet_and_its_labelled_twin(tmp_path):
    main(["--sheet", str(tmp_path / "faces.png"), "--count", "4", "--size", "64"])
    for name in ("faces.png", "faces_labels.png"):
        with Image.open(tmp_path / name) as sheet:
            assert sheet.size == (128, 128)
