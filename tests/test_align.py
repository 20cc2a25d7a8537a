"""FFHQ alignment on a real photo (skimage's astronaut): dlib landmarks, the crop, paste-back and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageDraw
from scipy import ndimage

from facelab.cli.align import align_main
from facelab.io.images import read_rgb, save_image
from facelab.ops.align import (
    NoFaceFoundError,
    align_face,
    align_photo,
    detect_faces,
    ffhq_quad,
    paste_back,
)

SIZE = 256


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()  # [512, 512, 3] uint8


@pytest.fixture(scope="module")
def landmarks(astronaut) -> np.ndarray:
    faces = detect_faces(astronaut)
    assert len(faces) == 1
    return faces[0]


@pytest.fixture(scope="module")
def aligned(astronaut, landmarks):
    return align_face(astronaut, landmarks, output_size=SIZE)


@pytest.fixture(scope="module")
def two_faces(astronaut) -> np.ndarray:
    head = astronaut[:256, 96:352]  # [256, 256, 3], the head with margin
    return np.concatenate([head, head[:, ::-1]], axis=1)  # [256, 512, 3]: the face and its mirror image


def quad_masks(quad: np.ndarray, shape: tuple[int, int], margin: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(well inside, well outside) boolean `[H, W]` masks of a quad, `margin` px away from its edge."""
    canvas = Image.new("L", (shape[1], shape[0]), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in quad], fill=1)
    polygon = np.asarray(canvas).astype(bool)
    inside = ndimage.binary_erosion(polygon, iterations=margin)
    return inside, ~ndimage.binary_dilation(polygon, iterations=margin)


def roughness(image: np.ndarray) -> float:
    """Mean absolute difference between neighbouring pixels of `[h, w, 3]` uint8."""
    image = image.astype(float)
    return float(np.abs(np.diff(image, axis=0)).mean() + np.abs(np.diff(image, axis=1)).mean())


def test_landmarks_lie_on_the_astronauts_eyes_nose_and_mouth(landmarks):
    assert landmarks.shape == (68, 2)
    left_eye, right_eye = landmarks[36:42].mean(axis=0), landmarks[42:48].mean(axis=0)
    mouth, nose_tip = landmarks[48:68].mean(axis=0), landmarks[30]
    # pixel regions read off the photo: eyes at about (203, 101) and (246, 104), mouth at about (223, 146)
    assert 190 < left_eye[0] < 215 and 90 < left_eye[1] < 112
    assert 234 < right_eye[0] < 258 and 92 < right_eye[1] < 115
    assert 208 < mouth[0] < 240 and 135 < mouth[1] < 158
    assert left_eye[0] < nose_tip[0] < right_eye[0]
    assert max(left_eye[1], right_eye[1]) < nose_tip[1] < mouth[1]
    assert 30 < np.hypot(*(right_eye - left_eye)) < 60  # the face box is about 90 px wide
    # every eye point lies above every mouth point, and the jaw (0-16) encloses the eyes horizontally
    assert landmarks[36:48, 1].max() < landmarks[48:68, 1].min()
    assert landmarks[0, 0] < landmarks[36:48, 0].min() and landmarks[16, 0] > landmarks[36:48, 0].max()


def test_min_score_drops_the_low_scoring_false_detection(astronaut):
    # at upsample 1 dlib also reports the mission patch (bottom left) with a low score
    everything = detect_faces(astronaut, min_score=0.0)
    assert len(everything) == 2
    assert sorted(face[:, 1].mean() > 300 for face in everything) == [False, True]


def test_ffhq_quad_is_a_square_centred_below_the_eyes(landmarks):
    quad = ffhq_quad(landmarks)
    sides = np.hypot(*(np.roll(quad, -1, axis=0) - quad).T)
    np.testing.assert_allclose(sides, sides[0], rtol=1e-9)
    np.testing.assert_allclose(np.dot(quad[3] - quad[0], quad[1] - quad[0]), 0.0, atol=1e-6)
    eye_left, eye_right = landmarks[36:42].mean(axis=0), landmarks[42:48].mean(axis=0)
    eye_to_eye = np.hypot(*(eye_right - eye_left))
    mouth = (landmarks[48] + landmarks[54]) / 2
    eye_to_mouth = np.hypot(*(mouth - (eye_left + eye_right) / 2))
    np.testing.assert_allclose(sides[0], 2 * max(2.0 * eye_to_eye, 1.8 * eye_to_mouth), rtol=1e-9)
    center = quad.mean(axis=0)
    expected = (eye_left + eye_right) / 2 + 0.1 * (mouth - (eye_left + eye_right) / 2)
    np.testing.assert_allclose(center, expected, atol=1e-9)
    # the crop's top edge runs left to right, its left edge top to bottom
    assert quad[3, 0] > quad[0, 0] and quad[1, 1] > quad[0, 1]


def test_aligned_crop_puts_the_eyes_level_at_the_ffhq_height(aligned, landmarks):
    assert aligned.image.shape == (SIZE, SIZE, 3) and aligned.image.dtype == np.uint8
    crop_faces = detect_faces(aligned.image)
    assert len(crop_faces) == 1
    crop_lm = crop_faces[0]
    left, right = crop_lm[36:42].mean(axis=0), crop_lm[42:48].mean(axis=0)
    assert abs(left[1] - right[1]) < 2.0  # level, although the astronaut's head is tilted in the photo
    landmarks_tilt = landmarks[42:48, 1].mean() - landmarks[36:42, 1].mean()
    assert landmarks_tilt > 2.0
    # the eye midpoint lands where the quad puts it: centred, at 1/2 - 0.1 * |eye-to-mouth| / side
    quad = aligned.quad
    side = np.hypot(*(quad[3] - quad[0]))
    eye_avg = (landmarks[36:42].mean(axis=0) + landmarks[42:48].mean(axis=0)) / 2
    mouth = (landmarks[48] + landmarks[54]) / 2
    expected_y = (0.5 - 0.1 * np.hypot(*(mouth - eye_avg)) / side) * SIZE - 0.5
    midpoint = (left + right) / 2
    assert 0.45 * SIZE < expected_y < 0.49 * SIZE
    np.testing.assert_allclose(midpoint, [SIZE / 2 - 0.5, expected_y], atol=2.5)
    # all 68 crop landmarks map back onto the photo's landmarks through the stored transform
    mapped = crop_lm @ aligned.crop_to_photo[:, :2].T + aligned.crop_to_photo[:, 2]
    assert np.abs(mapped - landmarks).mean() < 2.0


def test_large_photos_are_shrunk_first_without_moving_the_crop(astronaut, landmarks):
    small = align_face(astronaut, landmarks, output_size=128)
    big = np.asarray(Image.fromarray(astronaut).resize((2048, 2048), Image.BICUBIC))
    # pixel index i of the small photo is index 4 i + 1.5 of the 4x photo (pixel centres)
    shrunk = align_face(big, landmarks * 4 + 1.5, output_size=128)  # quad side ~690 px -> shrink by 2
    assert np.abs(shrunk.image.astype(int) - small.image.astype(int)).mean() < 3.0
    np.testing.assert_allclose(shrunk.quad, ffhq_quad(landmarks) * 4 + 1.5)


def test_paste_back_of_the_unedited_crop_reproduces_the_photo(astronaut, aligned):
    inside, outside = quad_masks(aligned.quad, astronaut.shape[:2])
    assert inside.sum() > 20000 and outside.sum() > 100000
    restored = paste_back(astronaut, aligned.image, aligned)
    diff = np.abs(restored.astype(int) - astronaut.astype(int))
    assert diff[inside].mean() < 3.0
    np.testing.assert_array_equal(restored[outside], astronaut[outside])


def test_paste_back_places_an_edit_inside_the_quad_only(astronaut, aligned):
    edited = 255 - aligned.image  # a visible edit everywhere in the crop
    result = paste_back(astronaut, edited, aligned, feather=0.1)
    inside, outside = quad_masks(aligned.quad, astronaut.shape[:2])
    np.testing.assert_array_equal(result[outside], astronaut[outside])
    # the quad's centre is fully replaced by the (inverted) edit; the feathered edge is a blend
    cx, cy = np.rint(aligned.quad.mean(axis=0)).astype(int)
    np.testing.assert_allclose(result[cy, cx].astype(int), 255 - astronaut[cy, cx].astype(int), atol=12)
    changed = np.abs(result.astype(int) - astronaut.astype(int)).max(axis=-1) > 0
    assert changed[inside].mean() > 0.9
    # an edited crop of another size maps onto the same quad
    big = np.asarray(Image.fromarray(edited).resize((2 * SIZE, 2 * SIZE), Image.BICUBIC))
    assert np.abs(paste_back(astronaut, big, aligned).astype(int) - result.astype(int))[inside].mean() < 3.0


def test_align_photo_orders_two_faces_left_to_right(two_faces, tmp_path):
    path = tmp_path / "pair.png"
    save_image(two_faces, path)
    faces = align_photo(path, output_size=64)
    assert [face.name for face in faces] == ["pair_0", "pair_1"]
    centres = [face.quad.mean(axis=0)[0] for face in faces]
    assert centres[0] < 256 < centres[1]
    # the right face is the mirror image of the left: its quad centre mirrors the left one's
    np.testing.assert_allclose(centres[1], 511 - centres[0], atol=3.0)
    assert all(face.image.shape == (64, 64, 3) for face in faces)
    # their crops are mirror images too (up to landmark noise)
    assert np.abs(faces[0].image.astype(int) - faces[1].image[:, ::-1].astype(int)).mean() < 20


@pytest.mark.parametrize("image", ["gray", "coffee"])
def test_no_face_raises_naming_the_file(image, tmp_path):
    array = np.full((200, 300, 3), 128, np.uint8) if image == "gray" else skimage.data.coffee()
    path = tmp_path / f"{image}.png"
    save_image(array, path)
    with pytest.raises(NoFaceFoundError, match=rf"{image}\.png.*--upsample 2"):
        align_photo(path)
    with pytest.raises(NoFaceFoundError, match="my_array"):
        align_photo(array, name="my_array")


def test_cli_aligns_a_folder_and_pastes_back(two_faces, tmp_path, capsys):
    photos, out = tmp_path / "photos", tmp_path / "aligned"
    save_image(two_faces, photos / "pair.png")
    save_image(np.full((64, 64, 3), 90, np.uint8), photos / "blank.png")
    status = align_main([str(photos), str(out), "--size", "128"])
    assert status == 1  # the blank photo fails, named, and the other photo is still aligned
    assert "blank.png" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["pair_0.json", "pair_0.png", "pair_1.json", "pair_1.png"]
    meta = json.loads((out / "pair_1.json").read_text())
    assert meta["output_size"] == 128 and meta["photo_size"] == [256, 512] and meta["index"] == 1
    assert len(meta["quad"]) == 4 and np.mean(meta["quad"], axis=0)[0] > 256
    crop = read_rgb(out / "pair_1.png")
    assert crop.shape == (128, 128, 3)

    edited = tmp_path / "edited.png"
    save_image(255 - crop, edited)
    result_path = tmp_path / "result.png"
    status = align_main(
        ["--paste", str(edited), "--into", str(photos / "pair.png"), "--meta", str(out / "pair_1.json"),
         "--out", str(result_path)]
    )
    assert status == 0
    result = read_rgb(result_path)
    faces = align_photo(photos / "pair.png", output_size=128)
    expected = paste_back(two_faces, 255 - crop, faces[1])
    np.testing.assert_array_equal(result, expected)
    inside, outside = quad_masks(np.asarray(meta["quad"]), two_faces.shape[:2])
    np.testing.assert_array_equal(result[outside], two_faces[outside])
    assert np.abs(result.astype(int) - two_faces.astype(int))[inside].mean() > 50
    # a sidecar for another photo size is refused, naming the photo
    save_image(two_faces[:, :256], photos / "half.png")
    status = align_main(
        ["--paste", str(edited), "--into", str(photos / "half.png"), "--meta", str(out / "pair_1.json"),
         "--out", str(tmp_path / "bad.png")]
    )
    assert status == 1 and "half.png" in capsys.readouterr().err
    assert not (tmp_path / "bad.png").exists()
    assert align_main([str(tmp_path / "missing.jpg"), str(out)]) == 1
    assert "missing.jpg" in capsys.readouterr().err


def test_faces_near_the_photo_edge_are_reflect_padded_without_shifting(astronaut, landmarks, aligned):
    top, left = 40, 100  # cut the photo so the quad sticks out above it
    cut = np.ascontiguousarray(astronaut[top:, left:])  # [472, 412, 3]
    shifted = landmarks - [left, top]
    assert ffhq_quad(shifted).min() < -20
    padded = align_face(cut, shifted, output_size=SIZE)
    # same face, same quad: the centre of the crop agrees with the crop of the whole photo
    centre = slice(SIZE // 4, 3 * SIZE // 4)
    diff = np.abs(padded.image[centre, centre].astype(int) - aligned.image[centre, centre].astype(int))
    assert diff.mean() < 2.0
    # the top band of the crop lies above the cut photo: a reflection of the hair, filled (not black) and
    # blurred (much smoother than the hair band just inside the photo)
    band, hair = padded.image[0:12, 64:192], padded.image[40:52, 64:192]
    assert band.mean() > 60
    assert roughness(band) < 0.4 * roughness(hair)
    # paste-back touches only the photo and restores it
    restored = paste_back(cut, padded.image, padded)
    inside, outside = quad_masks(padded.quad, cut.shape[:2])
    assert np.abs(restored.astype(int) - cut.astype(int))[inside].mean() < 3.0
    np.testing.assert_array_equal(restored[outside], cut[outside])
