"""A PNG of each metric against hole ratio, drawn with PIL (matplotlib is not a dependency).

One panel per metric: the bucket means at the bucket mid-points joined by a line, a whisker of +- one
standard deviation where the metric has one, and the overall mean as a dashed line.
"""

from __future__ import annotations

import io
import math

from PIL import Image, ImageDraw, ImageFont

PANEL_WIDTH, PANEL_HEIGHT, COLUMNS = 340, 250, 3
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 58, 14, 26, 40
LINE, WHISKER, OVERALL, AXIS = (31, 119, 180), (150, 180, 210), (214, 39, 40), (60, 60, 60)


def _finite(values) -> list[float]:
    return [v for v in values if v is not None and math.isfinite(v)]


def _panel(
    draw: ImageDraw.ImageDraw,
    font,
    origin: tuple[int, int],
    metric: str,
    buckets: list[dict],
    overall: float | None,
) -> None:
    left, top = origin[0] + MARGIN_LEFT, origin[1] + MARGIN_TOP
    right, bottom = origin[0] + PANEL_WIDTH - MARGIN_RIGHT, origin[1] + PANEL_HEIGHT - MARGIN_BOTTOM
    draw.text((origin[0] + PANEL_WIDTH // 2 - 4 * len(metric), origin[1] + 6), metric, fill=AXIS, font=font)
    draw.rectangle((left, top, right, bottom), outline=AXIS)
    points = [
        ((b["hole_ratio_low"] + b["hole_ratio_high"]) / 2, b[metric], b.get(f"{metric}_std")) for b in buckets
    ]
    spread = [(m - (s or 0), m + (s or 0)) for _, m, s in points if m is not None and math.isfinite(m)]
    values = _finite([v for pair in spread for v in pair] + [overall])
    if not values:
        draw.text((left + 10, (top + bottom) // 2), "no finite values", fill=AXIS, font=font)
        return
    low, high = min(values), max(values)
    pad = (high - low) * 0.08 or max(abs(high) * 0.05, 1e-6)
    low, high = low - pad, high + pad
    x_max = max(b["hole_ratio_high"] for b in buckets)

    def xy(ratio: float, value: float) -> tuple[float, float]:
        return (left + (right - left) * ratio / x_max, bottom - (bottom - top) * (value - low) / (high - low))

    for tick in range(0, 4):  # y ticks: four evenly spaced values
        value = low + (high - low) * tick / 3
        y = xy(0, value)[1]
        draw.line((left - 4, y, left, y), fill=AXIS)
        draw.text((origin[0] + 4, y - 6), f"{value:.3g}", fill=AXIS, font=font)
    for bucket in buckets:  # x ticks at the bucket edges
        x = xy(bucket["hole_ratio_high"], low)[0]
        draw.line((x, bottom, x, bottom + 4), fill=AXIS)
        draw.text((x - 8, bottom + 6), f"{bucket['hole_ratio_high']:g}", fill=AXIS, font=font)
    draw.text(((left + right) // 2 - 28, bottom + 22), "hole ratio", fill=AXIS, font=font)
    if overall is not None and math.isfinite(overall):
        y = xy(0, overall)[1]
        for x in range(int(left), int(right), 10):
            draw.line((x, y, min(x + 5, right), y), fill=OVERALL)
    finite = [(r, m, s) for r, m, s in points if m is not None and math.isfinite(m)]
    for ratio, mean, std in finite:
        if std is not None and math.isfinite(std) and std > 0:
            draw.line((*xy(ratio, mean - std), *xy(ratio, mean + std)), fill=WHISKER, width=2)
    if len(finite) > 1:
        draw.line([xy(r, m) for r, m, _ in finite], fill=LINE, width=2)
    for ratio, mean, _ in finite:
        x, y = xy(ratio, mean)
        draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=LINE)


def plot_against_hole_ratio(rows: list[dict]) -> bytes:
    """PNG bytes: one panel per metric mean of `rows` (first row overall, then buckets)."""
    overall, buckets = rows[0], rows[1:]
    metrics = [
        k
        for k in overall
        if k not in ("group", "hole_ratio_low", "hole_ratio_high", "count") and not k.endswith("_std")
    ]
    columns = min(COLUMNS, max(len(metrics), 1))
    panel_rows = math.ceil(len(metrics) / columns)
    image = Image.new("RGB", (columns * PANEL_WIDTH, panel_rows * PANEL_HEIGHT), "white")
    draw, font = ImageDraw.Draw(image), ImageFont.load_default()
    for index, metric in enumerate(metrics):
        origin = ((index % columns) * PANEL_WIDTH, (index // columns) * PANEL_HEIGHT)
        _panel(draw, font, origin, metric, buckets, overall.get(metric))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
