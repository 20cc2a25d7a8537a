"""Hole masks for inpainting (float, 1 = hole): procedural generators and hole-ratio buckets.

Generators, re-implemented from the published parameters:

- DeepFill v2 free-form brush strokes (Yu et al. 2019, `brush_stroke_mask`), united with a random box as
  in DeepFill v2's training masks.
- LaMa's thick irregular strokes and random boxes (Suvorov et al. 2022, `make_random_irregular_mask`,
  `make_random_rectangle_mask`) with Big-LaMa's training parameters, mixed 50/50 as LaMa trains.

All pixel parameters are given at 256 px and scaled with the mask size, and masks are drawn at the target
size with PIL (lines plus filled circles at the joints, no OpenCV).

Hole-ratio buckets follow the NVIDIA irregular mask set (Liu et al. 2018): half-open intervals (lo, hi].
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw
from scipy import ndimage

STYLES = ("deepfill", "lama_thick", "lama_box", "mixed")
HOLE_RATIO_BUCKETS = ((0.01, 0.1), (0.1, 0.2), (0.2, 0.3), (0.3, 0.4), (0.4, 0.5), (0.5, 0.6))
MAX_ATTEMPTS = 64  # rejection-sampling budget before the fallback; a few attempts suffice for wide ranges

# DeepFill v2 (`brush_stroke_mask`, widths at 256 px) and its training box (inpaint.yml: 128 px box whose
# sides shrink by up to max_delta / 2 each). DeepFill always adds the box; here it is added half of the
# time, because a 96-128 px box alone covers 14-25% of the image and would rule out the small-hole buckets.
DEEPFILL_MIN_VERTEX, DEEPFILL_MAX_VERTEX = 4, 12
DEEPFILL_MEAN_ANGLE, DEEPFILL_ANGLE_RANGE = 2 * math.pi / 5, 2 * math.pi / 15
DEEPFILL_MIN_WIDTH, DEEPFILL_MAX_WIDTH = 12, 40
DEEPFILL_BOX, DEEPFILL_MAX_DELTA, DEEPFILL_BOX_PROBABILITY = 128, 32, 0.5

# Big-LaMa training masks ("thick" irregular strokes and boxes), at 256 px.
LAMA_THICK = {"max_angle": 4, "max_len": 200, "max_width": 100, "min_times": 1, "max_times": 5}
LAMA_BOX = {"margin": 10, "bbox_min_size": 30, "bbox_max_size": 150, "min_times": 1, "max_times": 4}


def _size_pair(size: int | tuple[int, int]) -> tuple[int, int]:
    """(height, width) from an int or a pair."""
    height, width = (size, size) if isinstance(size, int | np.integer) else size
    if height < 1 or width < 1:
        raise ValueError(f"Mask size must be positive, got {size}.")
    return int(height), int(width)


def _scaled(value: float, scale: float, minimum: int = 1) -> int:
    """A 256-px pixel parameter at another size, never below `minimum`."""
    return max(minimum, int(round(value * scale)))


def _draw_stroke(draw: ImageDraw.ImageDraw, points: list[tuple[int, int]], width: int) -> None:
    """A polyline of `width` with filled circles at every vertex (round joints and caps, like cv2.line)."""
    draw.line(points, fill=1, width=width)
    radius = width // 2
    for x, y in points:
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=1)


def deepfill_strokes(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """DeepFill v2 free-form brush strokes: `[H, W]` float32, 1 = hole."""
    scale = min(height, width) / 256
    average_radius = math.sqrt(height**2 + width**2) / 8
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(rng.integers(1, 4)):
        num_vertex = rng.integers(DEEPFILL_MIN_VERTEX, DEEPFILL_MAX_VERTEX)
        angle_min = DEEPFILL_MEAN_ANGLE - rng.uniform(0, DEEPFILL_ANGLE_RANGE)
        angle_max = DEEPFILL_MEAN_ANGLE + rng.uniform(0, DEEPFILL_ANGLE_RANGE)
        # Even steps turn one way and odd steps the other, which makes the zig-zag brush look.
        angles = []
        for i in range(num_vertex):
            angle = rng.uniform(angle_min, angle_max)
            angles.append(2 * math.pi - angle if i % 2 == 0 else angle)
        vertices = [(int(rng.integers(0, width)), int(rng.integers(0, height)))]
        for angle in angles:
            step = np.clip(rng.normal(average_radius, average_radius // 2), 0, 2 * average_radius)
            x = np.clip(vertices[-1][0] + step * math.cos(angle), 0, width)
            y = np.clip(vertices[-1][1] + step * math.sin(angle), 0, height)
            vertices.append((int(x), int(y)))
        brush_width = max(1, int(rng.uniform(DEEPFILL_MIN_WIDTH * scale, DEEPFILL_MAX_WIDTH * scale)))
        _draw_stroke(draw, vertices, brush_width)
    mask = np.asarray(canvas, dtype=np.float32)
    # DeepFill's flips discard their result (a no-op); these flips are real.
    if rng.random() < 0.5:
        mask = mask[:, ::-1]
    if rng.random() < 0.5:
        mask = mask[::-1, :]
    return np.ascontiguousarray(mask)


def deepfill_box(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """DeepFill v2's training box: a 128-px (at 256) box, each side shrunk by up to 16 px, anywhere."""
    scale = min(height, width) / 256
    box_side = _scaled(DEEPFILL_BOX, scale)
    box_height, box_width = min(box_side, height), min(box_side, width)
    half_delta = int(DEEPFILL_MAX_DELTA * scale) // 2
    top = rng.integers(0, height - box_height + 1)
    left = rng.integers(0, width - box_width + 1)
    delta_h, delta_w = rng.integers(0, half_delta + 1), rng.integers(0, half_delta + 1)
    mask = np.zeros((height, width), np.float32)
    mask[top + delta_h : top + box_height - delta_h, left + delta_w : left + box_width - delta_w] = 1
    return mask


def lama_thick_strokes(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """LaMa's irregular thick strokes (`make_random_irregular_mask`, Big-LaMa parameters)."""
    scale = min(height, width) / 256
    max_len, max_width = _scaled(LAMA_THICK["max_len"], scale), _scaled(LAMA_THICK["max_width"], scale)
    base_len, base_width = _scaled(10, scale), _scaled(5, scale)
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for stroke in range(rng.integers(LAMA_THICK["min_times"], LAMA_THICK["max_times"] + 1)):
        start_x, start_y = int(rng.integers(width)), int(rng.integers(height))
        for _ in range(1 + rng.integers(5)):
            angle = 0.01 + rng.integers(LAMA_THICK["max_angle"])  # whole radians, as in LaMa
            if stroke % 2 == 0:
                angle = 2 * math.pi - angle
            length = base_len + rng.integers(max_len)
            brush_width = int(base_width + rng.integers(max_width))
            # LaMa steps x with sin and y with cos; kept for the same direction statistics.
            end_x = int(np.clip(int(start_x + length * math.sin(angle)), 0, width))
            end_y = int(np.clip(int(start_y + length * math.cos(angle)), 0, height))
            _draw_stroke(draw, [(start_x, start_y), (end_x, end_y)], brush_width)
            start_x, start_y = end_x, end_y
    return np.asarray(canvas, dtype=np.float32).copy()


def lama_boxes(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """LaMa's random boxes (`make_random_rectangle_mask`, Big-LaMa parameters)."""
    scale = min(height, width) / 256
    margin = _scaled(LAMA_BOX["margin"], scale, minimum=0)
    bbox_min = _scaled(LAMA_BOX["bbox_min_size"], scale)
    bbox_max = min(_scaled(LAMA_BOX["bbox_max_size"], scale), height - 2 * margin, width - 2 * margin)
    bbox_max = max(bbox_max, bbox_min + 1)  # tiny masks: keep the (exclusive) upper bound above the lower
    mask = np.zeros((height, width), np.float32)
    for _ in range(rng.integers(LAMA_BOX["min_times"], LAMA_BOX["max_times"] + 1)):
        box_width, box_height = rng.integers(bbox_min, bbox_max), rng.integers(bbox_min, bbox_max)
        left = rng.integers(margin, max(margin, width - margin - box_width) + 1)
        top = rng.integers(margin, max(margin, height - margin - box_height) + 1)
        mask[top : top + box_height, left : left + box_width] = 1
    return mask


def _draw_style(height: int, width: int, style: str, rng: np.random.Generator) -> np.ndarray:
    """One unconstrained mask of `style`."""
    if style == "mixed":
        style = "lama_thick" if rng.random() < 0.5 else "lama_box"
    if style == "lama_thick":
        return lama_thick_strokes(height, width, rng)
    if style == "lama_box":
        return lama_boxes(height, width, rng)
    mask = deepfill_strokes(height, width, rng)
    if rng.random() < DEEPFILL_BOX_PROBABILITY:
        mask = np.maximum(mask, deepfill_box(height, width, rng))
    return mask


def _count_bounds(low: float, high: float, pixels: int) -> tuple[int, int]:
    """Smallest and largest hole-pixel counts c with low < c / pixels <= high (float64, as hole_ratio)."""
    smallest = max(0, math.floor(low * pixels) - 1)
    while smallest / pixels <= low:
        smallest += 1
    largest = min(pixels, math.floor(high * pixels) + 1)
    while largest / pixels > high:
        largest -= 1
    if smallest > largest:
        raise ValueError(f"No {pixels}-pixel mask has a hole ratio in ({low}, {high}]; widen the range.")
    return smallest, largest


def _adjust_to_count(mask: np.ndarray, target: int, rng: np.random.Generator) -> np.ndarray:
    """Grow (dilate) or shrink (erode) `mask` pixel layer by pixel layer to exactly `target` hole pixels."""
    mask = mask.astype(bool)
    count = int(mask.sum())
    if count == target:
        return mask.astype(np.float32)
    if count < target:
        if count == 0:  # nothing to dilate from: seed a random pixel
            mask[rng.integers(mask.shape[0]), rng.integers(mask.shape[1])] = True
            count = 1
        distance = ndimage.distance_transform_edt(~mask)  # distance of each background pixel to the hole
        order = np.argsort(np.where(mask, np.inf, distance), axis=None, kind="stable")
        mask.flat[order[: target - count]] = True
    else:
        # Pad with background so that holes touching the border also erode from it (scipy's border_value=0).
        distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        order = np.argsort(np.where(mask, distance, np.inf), axis=None, kind="stable")
        mask.flat[order[: count - target]] = False
    return mask.astype(np.float32)


def procedural_mask(size: int | tuple[int, int], seed: int, index: int,
                    hole_ratio: tuple[float, float] = (0.01, 0.6), style: str = "mixed",
                    max_attempts: int = MAX_ATTEMPTS) -> np.ndarray:
    """Mask number `index` of stream `seed`: `[H, W]` float32 in {0, 1} with lo < hole ratio <= hi.

    Deterministic per (seed, index): attempt k draws from `np.random.default_rng([seed, index, k])` and the
    first attempt inside the range is returned. Fallback after `max_attempts` misses: the attempt whose
    ratio was closest to the range is dilated (too small) or eroded (too large) pixel layer by pixel layer
    (Euclidean distance order, ties in row-major order) to exactly the nearest count inside the range.
    """
    if style not in STYLES:
        raise ValueError(f"Unknown mask style {style!r}; choose one of {STYLES}.")
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed}, index={index}.")
    low, high = float(hole_ratio[0]), float(hole_ratio[1])
    if not 0 <= low < high <= 1:
        raise ValueError(f"hole_ratio must satisfy 0 <= lo < hi <= 1, got {hole_ratio}.")
    height, width = _size_pair(size)
    pixels = height * width
    smallest, largest = _count_bounds(low, high, pixels)
    closest, closest_miss, closest_rng = None, math.inf, None
    for attempt in range(max(1, max_attempts)):
        rng = np.random.default_rng([seed, index, attempt])
        mask = _draw_style(height, width, style, rng)
        count = int(np.count_nonzero(mask))
        if smallest <= count <= largest:
            return mask
        miss = smallest - count if count < smallest else count - largest
        if miss < closest_miss:
            closest, closest_miss, closest_rng = mask, miss, rng
    target = smallest if int(np.count_nonzero(closest)) < smallest else largest
    return _adjust_to_count(closest, target, closest_rng)


def hole_ratio(mask: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Fraction of hole pixels of each `[..., H, W]` mask (float64 for numpy, float32 for torch)."""
    if isinstance(mask, torch.Tensor):
        # Sum then divide: the sum of 0/1 values is exact, so the ratio is rounded only once.
        return mask.float().sum(dim=(-2, -1)) / (mask.shape[-2] * mask.shape[-1])
    mask = np.asarray(mask)
    return mask.sum(axis=(-2, -1), dtype=np.float64) / (mask.shape[-2] * mask.shape[-1])


def bucket_name(index: int) -> str:
    """Label of bucket `index`, e.g. "(0.01,0.1]"."""
    low, high = HOLE_RATIO_BUCKETS[index]
    return f"({low:g},{high:g}]"


BUCKET_NAMES = tuple(bucket_name(i) for i in range(len(HOLE_RATIO_BUCKETS)))


def bucket_indices(ratios: torch.Tensor) -> torch.Tensor:
    """Bucket of each ratio as int64 (-1 outside every bucket); compares in the ratios' own dtype."""
    if not ratios.is_floating_point():
        ratios = ratios.float()
    # Bounds in the ratios' dtype, so a float32 ratio of exactly 0.1 lands in (0.01, 0.1] like the float 0.1.
    bounds = torch.tensor(HOLE_RATIO_BUCKETS, dtype=ratios.dtype, device=ratios.device)
    inside = (ratios[..., None] > bounds[:, 0]) & (ratios[..., None] <= bounds[:, 1])
    index = inside.to(torch.int64).argmax(dim=-1)
    return torch.where(inside.any(dim=-1), index, torch.full_like(index, -1))


def bucket_index(ratio: float | np.floating | torch.Tensor) -> int | None:
    """Bucket of one hole ratio: i with lo_i < ratio <= hi_i, or None outside every bucket."""
    if isinstance(ratio, torch.Tensor):
        index = int(bucket_indices(ratio.reshape(())))
        return None if index < 0 else index
    # numpy float32 ratios compare in float32 for the same reason as in bucket_indices.
    kind = type(ratio) if isinstance(ratio, np.floating) else float
    for index, (low, high) in enumerate(HOLE_RATIO_BUCKETS):
        if kind(low) < ratio <= kind(high):
            return index
    return None


def bucket_from_name(bucket: int | str) -> int:
    """Bucket index from an index or a label such as "(0.1,0.2]" (spaces ignored)."""
    if isinstance(bucket, int | np.integer):
        if not 0 <= bucket < len(HOLE_RATIO_BUCKETS):
            raise ValueError(f"Bucket index {bucket} out of range 0..{len(HOLE_RATIO_BUCKETS) - 1}.")
        return int(bucket)
    label = str(bucket).replace(" ", "")
    if label in BUCKET_NAMES:
        return BUCKET_NAMES.index(label)
    raise ValueError(f"Unknown hole-ratio bucket {bucket!r}; use an index or one of {BUCKET_NAMES}.")


def masked_input(image: torch.Tensor, mask: torch.Tensor, fill: float) -> torch.Tensor:
    """Holes (mask 1) set to `fill`; EdgeConnect whitens them, fill = 1 in [-1, 1]."""
    return image * (1 - mask) + fill * mask


def composite(pred: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Generated pixels in the hole, known pixels elsewhere."""
    return mask * pred + (1 - mask) * image
