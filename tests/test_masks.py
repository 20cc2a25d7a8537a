"""Hole masks: procedural generators, hole-ratio buckets and the mask datasets."""

from __future__ import annotations

import os

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

import datamodules.masks as mask_datasets
from datamodules.masks import MaskFolder, ProceduralMasks, ratio_cache_path
from facelab.io.images import CorruptImageError
from facelab.io.masks import MaskFileError, read_mask
from facelab.ops.masks import (
    HOLE_RATIO_BUCKETS,
    STYLES,
    _draw_style,
    bucket_index,
    bucket_indices,
    bucket_name,
    hole_ratio,
    procedural_mask,
)

RANGES = [(0.01, 0.6), *HOLE_RATIO_BUCKETS]


@pytest.fixture(autouse=True)
def user_cache(tmp_path_factory, monkeypatch):
    """A fresh FACELAB_CACHE per test: the mask ratio cache never touches the real home cache."""
    cache = tmp_path_factory.mktemp("user_cache")
    monkeypatch.setenv("FACELAB_CACHE", str(cache))
    return cache


def corner_windows(mask: np.ndarray) -> int:
    """2x2 windows holding 1 or 3 hole pixels: corners, few for boxes and many for slanted strokes."""
    window_sums = mask[:-1, :-1] + mask[1:, :-1] + mask[:-1, 1:] + mask[1:, 1:]
    return int(np.count_nonzero((window_sums == 1) | (window_sums == 3)))


def dihedral(mask: torch.Tensor) -> list[torch.Tensor]:
    """The 8 flips/rotations of a `[H, W]` mask."""
    return [torch.rot90(variant, k, dims=(-2, -1)) for variant in (mask, mask.flip(-1)) for k in range(4)]


def write_mask(path, holes: np.ndarray, white_is_hole: bool = True) -> None:
    """Save a {0, 1} hole array as an 8-bit mask image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = holes if white_is_hole else 1 - holes
    Image.fromarray((pixels * 255).astype(np.uint8)).save(path)


def rows_mask(size: int, rows: int) -> np.ndarray:
    """A size x size mask whose first `rows` rows are holes (ratio rows / size)."""
    mask = np.zeros((size, size), np.uint8)
    mask[:rows] = 1
    return mask


# --- procedural masks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
def test_procedural_mask_is_deterministic_per_seed_and_index(style):
    first = procedural_mask(64, 5, 3, style=style)
    assert np.array_equal(first, procedural_mask(64, 5, 3, style=style))
    assert not np.array_equal(first, procedural_mask(64, 5, 4, style=style))
    assert not np.array_equal(first, procedural_mask(64, 6, 3, style=style))


@pytest.mark.parametrize("size", [32, 64, 256])
@pytest.mark.parametrize("style", STYLES)
def test_procedural_masks_are_binary_and_inside_every_range(style, size):
    for low, high in RANGES:
        for index in range(3):
            mask = procedural_mask(size, 11, index, (low, high), style)
            assert mask.shape == (size, size) and mask.dtype == np.float32
            assert set(np.unique(mask)) <= {0.0, 1.0}
            assert low < hole_ratio(mask) <= high, (style, size, low, high, index)


def test_procedural_mask_non_square_size():
    mask = procedural_mask((48, 80), 0, 0, style="deepfill")
    assert mask.shape == (48, 80) and 0.01 < hole_ratio(mask) <= 0.6


def test_fallback_grows_the_first_attempt_into_the_range():
    # Big-LaMa boxes never cover 90% of the image, so one attempt must fall back to growing it.
    attempt = _draw_style(64, 64, "lama_box", np.random.default_rng([2, 9, 0]))
    mask = procedural_mask(64, 2, 9, (0.9, 1.0), "lama_box", max_attempts=1)
    assert hole_ratio(attempt) < 0.9 < hole_ratio(mask) <= 1.0
    assert np.all(mask >= attempt)  # a dilation keeps every original hole pixel


def test_fallback_shrinks_the_first_attempt_into_the_range():
    attempt = _draw_style(64, 64, "lama_thick", np.random.default_rng([4, 1, 0]))
    mask = procedural_mask(64, 4, 1, (0.0, 0.002), "lama_thick", max_attempts=1)
    assert hole_ratio(attempt) > 0.002 and 0.0 < hole_ratio(mask) <= 0.002
    assert np.all(mask <= attempt)  # an erosion keeps only original hole pixels


def test_impossible_or_invalid_requests_raise():
    with pytest.raises(ValueError, match="widen"):
        procedural_mask(4, 0, 0, (0.5, 0.55))  # 16 pixels: 8/16 is not > 0.5 and 9/16 > 0.55
    with pytest.raises(ValueError, match="style"):
        procedural_mask(32, 0, 0, style="spiral")
    with pytest.raises(ValueError, match="hole_ratio"):
        procedural_mask(32, 0, 0, (0.6, 0.1))


def test_styles_differ_in_character():
    boxes = [procedural_mask(256, 1, i, style="lama_box") for i in range(8)]
    thick = [procedural_mask(256, 1, i, style="lama_thick") for i in range(8)]
    deepfill = [procedural_mask(256, 1, i, style="deepfill") for i in range(8)]
    # Unions of at most 4 axis-aligned boxes have a bounded number of corners; strokes are slanted.
    assert max(corner_windows(mask) for mask in boxes) <= 48
    assert min(corner_windows(mask) for mask in thick) > 100
    assert min(corner_windows(mask) for mask in deepfill) > 100
    # DeepFill's brush is at most 40 px wide at 256, LaMa's thick brush up to 105 px: thicker holes.
    assert np.mean([hole_ratio(m) for m in thick]) > np.mean([hole_ratio(m) for m in deepfill])
    mixed = [corner_windows(procedural_mask(256, 1, i, style="mixed")) for i in range(16)]
    assert min(mixed) <= 48 and max(mixed) > 100  # both LaMa generators show up


# --- hole ratios and buckets --------------------------------------------------------------------------


def test_bucket_index_boundaries():
    assert bucket_index(0.1) == 0
    assert bucket_index(0.1 + 1e-9) == 1
    assert bucket_index(0.01) is None
    assert bucket_index(0.01 + 1e-9) == 0
    assert bucket_index(0.6) == 5
    assert bucket_index(0.6 + 1e-9) is None
    assert bucket_index(0.0) is None
    assert bucket_index(np.float32(0.1)) == 0  # float32 0.1 is a hair above the float 0.1
    assert bucket_index(torch.tensor(0.1)) == 0
    assert [bucket_name(i) for i in (0, 5)] == ["(0.01,0.1]", "(0.5,0.6]"]


def test_bucket_indices_vectorised_matches_scalar():
    ratios = [0.0, 0.01, 0.0101, 0.1, 0.1001, 0.2, 0.35, 0.5, 0.6, 0.6001, 1.0]
    expected = [-1, -1, 0, 0, 1, 1, 3, 4, 5, -1, -1]
    for dtype in (torch.float32, torch.float64):
        got = bucket_indices(torch.tensor(ratios, dtype=dtype))
        assert got.dtype == torch.int64 and got.tolist() == expected
    assert [bucket_index(r) if bucket_index(r) is not None else -1 for r in ratios] == expected
    assert bucket_indices(torch.tensor([[0.05, 0.55], [0.7, 0.25]])).tolist() == [[0, 5], [-1, 2]]


def test_hole_ratio_counts_pixels_for_numpy_and_torch():
    masks = np.zeros((3, 1, 10, 10), np.float32)
    masks[0, 0].flat[:10] = 1  # exactly 0.1 -> first bucket
    masks[1, 0].flat[:11] = 1  # 0.11 -> second bucket
    ratios_np, ratios_torch = hole_ratio(masks), hole_ratio(torch.from_numpy(masks))
    assert ratios_np.shape == (3, 1) and tuple(ratios_torch.shape) == (3, 1)
    assert np.allclose(ratios_np[:, 0], [0.1, 0.11, 0.0]) and torch.allclose(
        ratios_torch[:, 0], torch.tensor([0.1, 0.11, 0.0])
    )
    assert bucket_indices(ratios_torch[:, 0]).tolist() == [0, 1, -1]
    assert [bucket_index(r) for r in ratios_np[:, 0]] == [0, 1, None]


# --- ProceduralMasks ----------------------------------------------------------------------------------


def test_procedural_masks_fixed_are_identical_across_instances():
    first, second = ProceduralMasks(32, 6, seed=3), ProceduralMasks(32, 6, seed=3)
    assert len(first) == 6
    for i in range(6):
        item = first[i]
        assert item.shape == (1, 32, 32) and item.dtype == torch.float32
        assert torch.equal(item, second[i]) and torch.equal(item, first[i])
        assert torch.equal(item[0], torch.from_numpy(procedural_mask(32, 3, i)))
    assert not torch.equal(first[0], first[1])


def test_procedural_masks_unfixed_vary_but_are_reproducible(monkeypatch):
    train = ProceduralMasks(32, 4, seed=3, fixed=False)
    draws = [train[0] for _ in range(3)]
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
    assert not torch.equal(draws[0], ProceduralMasks(32, 4, seed=3)[0])  # not the validation mask
    replay = ProceduralMasks(32, 4, seed=3, fixed=False)
    assert all(torch.equal(draw, replay[0]) for draw in draws)

    class Worker:
        seed = 123456789

    monkeypatch.setattr(mask_datasets, "get_worker_info", lambda: Worker())
    in_worker = ProceduralMasks(32, 4, seed=3, fixed=False)[0]
    assert not torch.equal(in_worker, draws[0])  # another worker seed (epoch) gives another stream
    assert 0.01 < float(in_worker.mean()) <= 0.6


# --- MaskFolder ---------------------------------------------------------------------------------------


@pytest.fixture
def bucket_folder(tmp_path):
    """Four 64-px masks whose names lie about their hole ratios, one of them in a subfolder."""
    root = tmp_path / "masks"
    write_mask(root / "a_bucket5_0.55.png", rows_mask(64, 3))  # 0.047 -> bucket 0
    write_mask(root / "b_0.05.png", rows_mask(64, 10))  # 0.156 -> bucket 1
    write_mask(root / "sub" / "c_bucket0.png", rows_mask(64, 36))  # 0.5625 -> bucket 5
    tiny = np.zeros((64, 64), np.uint8)
    tiny[0, :20] = 1
    write_mask(root / "d_0.35.png", tiny)  # 0.0049 -> no bucket
    return root


def test_mask_folder_measures_ratios_from_pixels(bucket_folder):
    masks = MaskFolder(bucket_folder, 64)
    names = [path.relative_to(bucket_folder).as_posix() for path in masks.paths]
    assert names == ["a_bucket5_0.55.png", "b_0.05.png", "d_0.35.png", "sub/c_bucket0.png"]
    assert np.allclose(masks.ratios, [3 / 64, 10 / 64, 20 / 4096, 36 / 64])
    assert masks.buckets == [0, 1, None, 5]
    assert masks.item_info(1)["bucket_name"] == "(0.1,0.2]"
    for i in range(len(masks)):
        item = masks[i]
        assert item.shape == (1, 64, 64) and item.dtype == torch.float32
        assert float(item.mean()) == pytest.approx(masks.ratios[i])


def test_mask_folder_bucket_filter(bucket_folder):
    only_small = MaskFolder(bucket_folder, 64, bucket=0)
    assert [p.name for p in only_small.paths] == ["a_bucket5_0.55.png"] and only_small.buckets == [0]
    only_large = MaskFolder(bucket_folder, 64, bucket="(0.5, 0.6]")
    assert [p.name for p in only_large.paths] == ["c_bucket0.png"]
    with pytest.raises(ValueError, match=r"\(0.3,0.4\]"):
        MaskFolder(bucket_folder, 64, bucket=3)


def test_mask_folder_boundary_ratio_from_pixels(tmp_path):
    exactly, above = np.zeros((10, 10), np.uint8), np.zeros((10, 10), np.uint8)
    exactly.flat[:10], above.flat[:11] = 1, 1
    write_mask(tmp_path / "0.png", exactly)
    write_mask(tmp_path / "1.png", above)
    assert MaskFolder(tmp_path, 10).buckets == [0, 1]  # 0.1 is in (0.01, 0.1]; 0.11 is not


def test_mask_folder_resizes_then_thresholds(tmp_path):
    holes = np.zeros((128, 128), np.uint8)
    holes[32:96, 40:72] = 1  # 64 x 32 box: ratio 0.125
    write_mask(tmp_path / "big.png", holes)
    masks = MaskFolder(tmp_path, 64)
    expected = torch.zeros(1, 64, 64)
    expected[0, 16:48, 20:36] = 1  # the box at half scale, with no grey or stray edge pixels
    assert torch.equal(masks[0], expected) and masks.ratios[0] == 0.125


def test_mask_folder_black_is_hole(tmp_path):
    holes = rows_mask(32, 5)
    write_mask(tmp_path / "white" / "m.png", holes)
    write_mask(tmp_path / "black" / "m.png", holes, white_is_hole=False)
    white = MaskFolder(tmp_path / "white", 32)[0]
    black = MaskFolder(tmp_path / "black", 32, white_is_hole=False)[0]
    assert torch.equal(white, black) and float(black.mean()) == pytest.approx(5 / 32)
    assert float(MaskFolder(tmp_path / "black", 32)[0].mean()) == pytest.approx(27 / 32)  # read as white=hole


def test_mask_folder_augment_is_a_flip_or_rotation(tmp_path):
    holes = np.zeros((32, 32), np.uint8)
    holes[2:20, 3:8], holes[15:20, 8:25] = 1, 1  # an L: all 8 symmetries differ
    write_mask(tmp_path / "l.png", holes)
    original = MaskFolder(tmp_path, 32)[0][0]
    variants = dihedral(original)
    augmented = MaskFolder(tmp_path, 32, augment=True)
    torch.manual_seed(0)
    seen = set()
    for _ in range(24):
        item = augmented[0][0]
        assert item.sum() == original.sum()
        matches = [k for k, variant in enumerate(variants) if torch.equal(item, variant)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) >= 4


def test_mask_folder_accepts_near_binary_jpeg(tmp_path):
    Image.fromarray(rows_mask(64, 20) * 255).save(tmp_path / "m.jpg", quality=70)
    assert MaskFolder(tmp_path, 64).ratios[0] == pytest.approx(20 / 64, abs=0.02)


@pytest.mark.parametrize("kind", ["gradient", "camera", "astronaut"])
def test_mask_folder_rejects_non_binary_images(tmp_path, kind):
    write_mask(tmp_path / "good.png", rows_mask(64, 8))
    if kind == "gradient":
        image = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (64, 1))
    else:
        image = getattr(skimage.data, kind)()  # grayscale and RGB photos
    Image.fromarray(image).save(tmp_path / f"{kind}.png")
    with pytest.raises(ValueError, match=f"{kind}.png is not a binary mask"):
        MaskFolder(tmp_path, 64)


def test_mask_folder_rejects_corrupt_files(tmp_path):
    write_mask(tmp_path / "good.png", rows_mask(64, 8))
    (tmp_path / "noise.png").write_bytes(np.random.default_rng(0).integers(0, 256, 2000, np.uint8).tobytes())
    with pytest.raises(CorruptImageError, match="noise.png"):
        MaskFolder(tmp_path, 64)
    (tmp_path / "noise.png").unlink()
    write_mask(tmp_path / "other.png", np.random.default_rng(1).integers(0, 2, (64, 64)).astype(np.uint8))
    other = (tmp_path / "other.png").read_bytes()
    (tmp_path / "other.png").write_bytes(other[: len(other) // 2])  # truncated file
    with pytest.raises(CorruptImageError, match="Cannot decode mask image .*other.png"):
        MaskFolder(tmp_path, 64)


def test_mask_folder_missing_or_empty_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="does_not_exist.*NVIDIA"):
        MaskFolder(tmp_path / "does_not_exist", 64)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no masks here")
    with pytest.raises(FileNotFoundError, match="empty.*white = hole"):
        MaskFolder(tmp_path / "empty", 64)


def files_with_times(root) -> list[tuple[str, int, int]]:
    """Every entry under `root` with its byte size and mtime: what a read-only scan must leave as it was."""
    return sorted(
        (p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
    )


def count_decodes(monkeypatch) -> list[str]:
    """Names of the mask files MaskFolder decodes from now on."""
    decoded = []
    real_read = mask_datasets.read_mask
    monkeypatch.setattr(
        mask_datasets,
        "read_mask",
        lambda path, *args, **kwargs: decoded.append(path.name) or real_read(path, *args, **kwargs),
    )
    return decoded


def test_mask_folder_ratio_cache_avoids_decoding_again(bucket_folder, monkeypatch, user_cache):
    first = MaskFolder(bucket_folder, 64)
    assert ratio_cache_path(bucket_folder).is_file()
    assert ratio_cache_path(bucket_folder).parent == user_cache / "mask_ratios"
    decoded = count_decodes(monkeypatch)
    second = MaskFolder(bucket_folder, 64)
    assert decoded == [] and np.array_equal(first.ratios, second.ratios)
    # A changed file (new size/mtime) is measured again, and only that one.
    changed = bucket_folder / "b_0.05.png"
    write_mask(changed, rows_mask(64, 40))
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    third = MaskFolder(bucket_folder, 64)
    assert decoded == ["b_0.05.png"] and third.ratios[1] == pytest.approx(40 / 64)
    # Another size is another cache section.
    decoded.clear()
    MaskFolder(bucket_folder, 32)
    assert len(decoded) == 4


def test_mask_folder_scan_leaves_the_folder_untouched(bucket_folder):
    before = files_with_times(bucket_folder)
    MaskFolder(bucket_folder, 64)
    MaskFolder(bucket_folder, 32, white_is_hole=False)
    assert files_with_times(bucket_folder) == before


def test_mask_folder_cache_follows_added_and_deleted_files(bucket_folder, monkeypatch):
    MaskFolder(bucket_folder, 64)
    decoded = count_decodes(monkeypatch)
    write_mask(bucket_folder / "e_new.png", rows_mask(64, 16))
    (bucket_folder / "d_0.35.png").unlink()
    edited = MaskFolder(bucket_folder, 64)
    assert decoded == ["e_new.png"]
    assert [p.name for p in edited.paths] == [
        "a_bucket5_0.55.png",
        "b_0.05.png",
        "e_new.png",
        "c_bucket0.png",
    ]
    assert np.allclose(edited.ratios, [3 / 64, 10 / 64, 16 / 64, 36 / 64])
    decoded.clear()
    assert np.array_equal(MaskFolder(bucket_folder, 64).ratios, edited.ratios) and decoded == []


def test_mask_folder_cache_is_per_folder_and_env_overridable(tmp_path, monkeypatch):
    for name, rows in (("one", 8), ("two", 24)):  # same file names, different pixels
        write_mask(tmp_path / name / "m.png", rows_mask(32, rows))
    assert MaskFolder(tmp_path / "one", 32).ratios[0] == 8 / 32
    assert MaskFolder(tmp_path / "two", 32).ratios[0] == 24 / 32
    assert ratio_cache_path(tmp_path / "one") != ratio_cache_path(tmp_path / "two")
    monkeypatch.delenv("FACELAB_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert ratio_cache_path(tmp_path / "one").parent == tmp_path / "xdg" / "facelab" / "mask_ratios"


def test_mask_folder_ignores_a_broken_cache(bucket_folder):
    expected = MaskFolder(bucket_folder, 64).ratios
    ratio_cache_path(bucket_folder).write_text("{not json")
    assert np.array_equal(MaskFolder(bucket_folder, 64).ratios, expected)


def test_mask_folder_without_cache_writes_nothing(bucket_folder, user_cache):
    before = files_with_times(bucket_folder)
    MaskFolder(bucket_folder, 64, ratio_cache=False)
    assert files_with_times(bucket_folder) == before
    assert not ratio_cache_path(bucket_folder).exists() and not any(user_cache.rglob("*"))


# --- read_mask (the one reader of mask files) ----------------------------------------------------------


def test_read_mask_thresholds_at_half_and_honours_the_hole_colour(tmp_path):
    gray = np.array([[0, 127, 128, 255]], np.uint8)
    Image.fromarray(np.repeat(gray, 100, axis=0)).save(tmp_path / "m.png")  # half the pixels grey: too many
    with pytest.raises(MaskFileError):
        read_mask(tmp_path / "m.png")
    nearly_binary = np.zeros((20, 40), np.uint8)
    nearly_binary[:, :10], nearly_binary[0, 20:22] = 255, (127, 128)  # 2 grey pixels of 800: allowed
    Image.fromarray(nearly_binary).save(tmp_path / "b.png")
    white = read_mask(tmp_path / "b.png")
    black = read_mask(tmp_path / "b.png", white_is_hole=False)
    assert white.dtype == np.float32 and white.shape == (20, 40)
    assert np.array_equal(white, 1 - black) and white.sum() == 20 * 10 + 1
    assert (
        white[0, 20] == 0 and white[0, 21] == 1
    )  # 127 is not a hole, 128 is (as facelab-inpaint always did)


def test_read_mask_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="Mask image .*absent.png does not exist"):
        read_mask(tmp_path / "absent.png")
    (tmp_path / "corrupt.png").write_bytes(b"not a png at all")
    with pytest.raises(CorruptImageError, match="corrupt.png.*Replace or delete the file"):
        read_mask(tmp_path / "corrupt.png")
    Image.fromarray(skimage.data.astronaut()).save(tmp_path / "astronaut.png")
    with pytest.raises(MaskFileError, match="astronaut.png is not a binary mask.*photo.*white = hole"):
        read_mask(tmp_path / "astronaut.png")
    with pytest.raises(MaskFileError, match="black = hole"):
        read_mask(tmp_path / "astronaut.png", white_is_hole=False)
    write_mask(tmp_path / "small.png", rows_mask(16, 4))
    with pytest.raises(ValueError, match="small.png is 16x16 but image face.png is 24x32; give a mask"):
        read_mask(tmp_path / "small.png", required_shape=(32, 24), shape_of="image face.png")
    assert read_mask(tmp_path / "small.png", required_shape=(16, 16), size=32).shape == (32, 32)
