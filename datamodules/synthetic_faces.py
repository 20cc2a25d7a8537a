"""Procedural faces: the project's embedded default dataset (no files, no downloads).

`render_face(size, seed, index)` draws one portrait with its CelebAMask-HQ style parsing map, the 68 iBUG
landmarks and the attributes it was built from. Every choice is drawn from `default_rng([seed, index])` in
face units before the size is used, so one (seed, index) is the same person at 32 or 1024 px. Drawing
happens in `datamodules.face_render`, whose docstring states the left/right convention: `l_*` classes
and iBUG 42-47 / 22-26 are the person's left, which is the image right.

Pixels are rendered at 2x (4x below 64 px) and box-filtered; the parsing map takes the majority label of
the same supersamples, so it is the topmost part covering most of each pixel. At 64 px and below a brow,
an upper lip or a slightly open mouth can be thinner than half a pixel; it then tints the image but owns
no pixel of the parsing map.

    python -m datamodules.synthetic_faces --sheet /tmp/faces.png   # contact sheet + /tmp/faces_labels.png
    python -m datamodules.synthetic_faces --benchmark              # ms per face at 64 and 256 px
"""

import argparse
import math
import operator
import time
from dataclasses import dataclass
from functools import lru_cache
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from datamodules import face_render as fr
from datamodules.face_render import CELEBAMASK_HQ_CLASSES

__all__ = ["CELEBAMASK_HQ_CLASSES", "CLASS_COLOURS", "FaceSample", "SyntheticFaces", "render_face"]

MIN_SIZE, MAX_SIZE = 32, 1024
HAIR_STYLES = ("short", "long", "bangs", "bun", "bald", "curly", "bob")
_HAIR_STYLE_WEIGHTS = (0.2, 0.17, 0.12, 0.1, 0.09, 0.12, 0.2)
HAIR_COLOURS = {"black": (32, 27, 25), "dark_brown": (68, 45, 32), "brown": (118, 80, 50),
                "blond": (216, 182, 120), "red": (168, 76, 38), "grey": (160, 156, 152)}
EYE_COLOURS = {"brown": (98, 58, 30), "dark": (50, 32, 22), "hazel": (132, 102, 52), "green": (84, 124, 74),
               "blue": (82, 130, 180), "grey": (122, 132, 138)}
# Light to dark; a face's tone is a random point on this piecewise-linear ramp.
SKIN_TONES = np.array([(248, 220, 198), (236, 196, 164), (220, 168, 130), (192, 134, 96), (148, 96, 64),
                       (102, 66, 46)], dtype=float)
LIPSTICKS = ((178, 30, 50), (204, 84, 112), (112, 40, 72), (188, 110, 100))
METALS = {"gold": (236, 194, 92), "silver": (218, 218, 224)}
FRAME_COLOURS = ((22, 22, 24), (96, 54, 30), (206, 174, 92), (176, 176, 186), (150, 30, 40))


@dataclass
class FaceSample:
    """One rendered face with its annotations."""

    image: np.ndarray  # [H, W, 3] uint8 RGB
    parsing: np.ndarray  # [H, W] uint8, class ids in CELEBAMASK_HQ_CLASSES order
    landmarks: np.ndarray  # [68, 2] float32, (x, y) in pixels (integers at pixel centres), iBUG order
    attributes: dict  # hair_style, hair_colour, glasses, hat, ... (plain python values)


def _check_size(size: int) -> int:
    """`size` as an int, or a ValueError naming the argument."""
    if not isinstance(size, int | np.integer) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be an integer in [{MIN_SIZE}, {MAX_SIZE}], got {size!r}.")
    return int(size)


def _colour(rng, low: float = 20, high: float = 235) -> np.ndarray:
    """A random RGB colour of moderate saturation, so clothes and walls look like fabric and paint."""
    return np.clip(rng.uniform(low, high) + rng.uniform(-70, 70, 3), 0, 255)


def _choice(rng, options, weights=None) -> str:
    """A plain-str pick among `options` (weights optional); cheaper than Generator.choice for tiny lists."""
    if weights is None:
        return str(options[int(rng.integers(len(options)))])
    cumulative = np.cumsum(weights)
    return str(options[int(np.searchsorted(cumulative, rng.uniform(0, cumulative[-1]), side="right"))])


def _sample_face(rng: np.random.Generator) -> SimpleNamespace:
    """Every random choice of one face, in face units; nothing here depends on the image size."""
    u, ns = rng.uniform, SimpleNamespace
    f = ns()
    f.pose = ns(angle=u(-0.2, 0.2), scale=u(0.18, 0.22), cx=u(0.45, 0.55), cy=u(0.5, 0.57))
    light = np.array([u(-0.75, 0.75), u(-0.6, 0.05), 1.0])
    f.light, f.ambient = light / np.linalg.norm(light), u(0.3, 0.5)
    f.face = ns(top=u(1.5, 1.68), chin=u(1.28, 1.45), taper=u(0.25, 0.45))
    eye_w = u(0.16, 0.2)
    f.eye = ns(x=u(0.37, 0.45), y=u(-0.2, -0.08), half_w=eye_w, half_h=eye_w * u(0.42, 0.55),
               tilt=u(-0.015, 0.04), iris_r=eye_w * u(0.42, 0.5), gaze_x=u(-0.25, 0.25),
               gaze_y=u(-0.15, 0.15))
    f.brow = ns(x=f.eye.x + u(-0.02, 0.04), y=f.eye.y - u(0.17, 0.26), half_w=u(0.2, 0.25),
                thick=u(0.05, 0.09), arch=u(0.02, 0.08))
    f.nose = ns(tip_y=u(0.26, 0.4), half_w=u(0.16, 0.22), bridge_w=u(0.06, 0.09))
    f.mouth = ns(y=max(u(0.66, 0.8), f.nose.tip_y + 0.3), half_w=u(0.28, 0.37), upper=u(0.055, 0.085),
                 lower=u(0.07, 0.12), smile=u(-0.02, 0.06), gap=u(0.06, 0.13) if u() < 0.3 else 0.0,
                 teeth=u() < 0.7)
    f.ear = ns(top=f.eye.y - u(0.0, 0.08), bottom=f.nose.tip_y + u(0.0, 0.12), width=u(0.12, 0.17))
    f.neck = ns(half_w=u(0.48, 0.6))
    f.cloth = ns(neckline_y=u(1.75, 1.95), depth=u(0.1, 0.45), style=_choice(rng, ("round", "v", "collar")),
                 trim=u() < 0.4, shoulders=u(0.9, 1.15))
    style = _choice(rng, HAIR_STYLES, _HAIR_STYLE_WEIGHTS)
    volume = {"short": (0.06, 0.2), "bun": (0.03, 0.08), "curly": (0.3, 0.55)}.get(style, (0.1, 0.25))
    f.hair = ns(style=style, colour=_choice(rng, tuple(HAIR_COLOURS)), vol_side=u(*volume),
                vol_top=1.2 * u(*volume), hairline=-f.face.top * u(0.55, 0.68), arch=u(0.0, 0.12),
                inset=u(0.05, 0.18), flare=u(0.05, 0.35), side_bottom=f.eye.y + u(-0.15, 0.05),
                length=u(2.2, 3.0), fringe_y=f.brow.y - u(0.04, 0.14), bun_r=u(0.3, 0.42), bumps=u(0.05, 0.1),
                phase=u(0, np.pi), part=u(-0.3, 0.3), strands=u(30, 50))
    if style in ("long", "bob", "bangs"):
        f.hair.side_bottom = 0.0  # the side locks take over below the temples
    if style in ("bob", "bangs"):
        f.hair.length = u(0.8, 1.3)
    elif style == "curly":
        f.hair.length = u(0.3, 1.0)
    f.ears_visible = style not in ("long", "bob", "bangs")
    f.glasses = None
    if u() < 0.25:
        kind = _choice(rng, ("clear", "sunglasses"), (0.75, 0.25))
        # Lenses wider than the eye but clear of the nose, so frames never cross an eye.
        lens_w = min(f.eye.half_w * u(1.35, 1.6) + 0.04, f.eye.x - 0.06)
        f.glasses = ns(kind=kind, half_w=lens_w, half_h=max(lens_w * u(0.6, 0.85), f.eye.half_h + 0.09),
                       drop=u(0.0, 0.05), thick=u(0.025, 0.05), squareness=float(rng.choice((2.0, 4.0, 6.0))))
    f.hat = None
    if u() < 0.15:
        kind = _choice(rng, ("beanie", "brimmed"))
        band_y = f.hair.hairline + u(-0.05, 0.2) if kind == "beanie" else -f.face.top * u(0.62, 0.72)
        f.hat = ns(kind=kind, band_y=band_y, band_h=u(0.15, 0.3), crown_h=u(0.75, 0.95), brim=u(0.4, 0.75),
                   brim_h=u(0.1, 0.18))
    f.earrings = None
    if f.ears_visible and u() < 0.35:
        f.earrings = ns(kind=_choice(rng, ("stud", "hoop", "drop")), size=u(0.035, 0.05))
    f.necklace = ns(drop=u(0.15, 0.45), pendant=u() < 0.5) if u() < 0.2 else None
    f.colours = _sample_colours(rng, f)
    return f


def _sample_colours(rng, f) -> dict[str, np.ndarray]:
    """The palette: one RGB (0..255) per material name; also records the tone, eye colour and background."""
    u = rng.uniform
    tone = u()
    skin = np.array([np.interp(tone * 5, np.arange(6), SKIN_TONES[:, k]) for k in range(3)]) + u(-6, 6, 3)
    hair = np.array(HAIR_COLOURS[f.hair.colour], float) * u(0.85, 1.15)
    brow = hair * (0.7 if f.hair.colour in ("blond", "red", "grey") else 0.9)
    lips = skin * [0.82, 0.55, 0.55] + [30, 5, 10]
    if u() < 0.15:
        lips = np.array(LIPSTICKS[rng.integers(len(LIPSTICKS))], float)
    cloth, trim = _colour(rng), _colour(rng)
    background = (_colour(rng, 40, 230), _colour(rng, 40, 230))
    metal = np.array(METALS[_choice(rng, tuple(METALS))], float)
    colours = {"skin": skin, "crease": skin * 0.78, "nose": skin * [1.0, 0.97, 0.96],
               "nose_shadow": skin * 0.8, "nostril": skin * 0.35, "neck": skin * 0.95,
               "mouth": np.array([70.0, 22, 26]), "teeth": np.array([236.0, 228, 212]), "u_lip": lips * 0.88,
               "l_lip": lips, "hair": hair, "hat": _colour(rng), "hat_band": _colour(rng),
               "lens": np.array([28.0, 30, 36]), "earring": metal, "necklace": metal, "cloth": cloth,
               "cloth_trim": trim, "background": np.zeros(3),
               "frame": np.array(FRAME_COLOURS[rng.integers(len(FRAME_COLOURS))], float)}
    f.eye_colour = _choice(rng, tuple(EYE_COLOURS))
    iris = np.array(EYE_COLOURS[f.eye_colour], float) * u(0.85, 1.1)
    for side in ("l", "r"):
        colours.update({f"{side}_ear": skin * [0.98, 0.93, 0.92], f"{side}_ear_inner": skin * 0.75,
                        f"{side}_brow": brow, f"{side}_eye_white": np.array([236.0, 230, 224]),
                        f"{side}_iris": iris, f"{side}_pupil": np.array([14.0, 12, 12]),
                        f"{side}_glint": np.full(3, 255.0), f"{side}_lash": np.array([26.0, 20, 18])})
    f.tone, f.background, f.background_angle = float(tone), background, u(0, 2 * np.pi)
    return colours


def ellipsoid_lambert(x: np.ndarray, y: np.ndarray, centre: tuple[float, float], radii: tuple[float, float],
                      light: np.ndarray) -> np.ndarray:
    """Lambert term n.l of a frontal ellipsoid; outside its silhouette the normal lies in the image plane."""
    ex, ey = (x - centre[0]) / radii[0], (y - centre[1]) / radii[1]
    r2 = ex * ex + ey * ey
    inv_norm = 1.0 / np.sqrt(np.maximum(r2, 1.0))
    nz = np.sqrt(np.clip(1.0 - r2, 0.0, None))
    return np.clip((ex * light[0] + ey * light[1]) * inv_norm + nz * light[2], 0.0, None)


@lru_cache(maxsize=8)
def _block_index(size: int, supersample: int) -> np.ndarray:
    """For every supersampled pixel, the flat index of the output pixel it falls into."""
    rows = np.arange(size * supersample, dtype=np.int64) // supersample
    return rows[:, None] * size + rows[None, :]


def majority_labels(labels: np.ndarray, supersample: int) -> np.ndarray:
    """Most frequent label in each supersample x supersample block."""
    if supersample == 2:  # the common case, without counting: ties go to the first sample
        a, b, c, d = labels[0::2, 0::2], labels[0::2, 1::2], labels[1::2, 0::2], labels[1::2, 1::2]
        pair_b_c_d = np.where((b == c) | (b == d), b, np.where(c == d, c, a))
        return np.where((a == b) | (a == c) | (a == d), a, pair_b_c_d)
    size, n = labels.shape[0] // supersample, len(CELEBAMASK_HQ_CLASSES)
    counts = np.bincount((_block_index(size, supersample) * n + labels).ravel(), minlength=size * size * n)
    return counts.reshape(size, size, n).argmax(axis=2).astype(labels.dtype)


def _blocks(values: np.ndarray, supersample: int):
    """The supersample**2 strided views that tile `values` block by block."""
    steps = range(supersample)
    return [values[dy::supersample, dx::supersample] for dy in steps for dx in steps]


def _packed_palette(colours: dict[str, np.ndarray]) -> np.ndarray:
    """Material colours as RGBA uint32 (one lookup per sample); alpha marks the background."""
    rgb = np.zeros((len(fr.MATERIAL_IDS), 3))
    rgb[[fr.MATERIAL_IDS[name] for name in colours]] = list(colours.values())
    rgba = np.zeros((len(fr.MATERIAL_IDS), 4), np.uint8)
    rgba[:, :3] = np.clip(rgb + 0.5, 0, 255)
    rgba[fr.MATERIAL_IDS["background"], 3] = 255
    return rgba.view(np.uint32)[:, 0]


def composite(materials: np.ndarray, palette: np.ndarray, shading: np.ndarray, background: np.ndarray,
              supersample: int) -> np.ndarray:
    """Box-filter the material colours and shade them: float [H, W, 3] in 0..255 (unclipped).

    The background gets its own gradient through its coverage, so an edge pixel blends the face's colour
    with the real background instead of a shaded copy of it.
    """
    size = shading.shape[0]
    rgba = palette[materials].view(np.uint8).reshape(size * supersample, size * supersample, 4)
    parts = _blocks(rgba, supersample)
    total = parts[0].astype(np.uint16)
    for part in parts[1:]:
        total += part
    mean = total.astype(np.float32) * (1.0 / supersample**2)
    return mean[..., :3] * shading[..., None] + (mean[..., 3:] * (1.0 / 255)) * background


def _shading(c: fr.Canvas, f: SimpleNamespace, groups: np.ndarray) -> np.ndarray:
    """Multiplicative shading [H, W] float32; each pixel is shaded by the model of its shading group."""
    cos, sin = math.cos(c.angle), math.sin(c.angle)
    # The light is fixed in the image; the normals below live in face coordinates, so rotate it into them.
    light = np.array([cos * f.light[0] + sin * f.light[1], -sin * f.light[0] + cos * f.light[1], f.light[2]])

    def shade(lambert):
        # Normalised so a surface facing the camera keeps its albedo; the lit side may brighten a little.
        return f.ambient + (1.0 - f.ambient) * lambert / light[2]

    def head(x, y):
        socket = ((np.abs(x) - f.eye.x) / 0.28) ** 2 + ((y - f.eye.y + 0.03) / 0.16) ** 2
        # The brow ridge and the cheeks leave the eyes in a soft hollow.
        return shade(ellipsoid_lambert(x, y, (0.0, -0.1), (1.05, f.face.top + 0.1), light)) * (
            1.0 - 0.12 * np.exp(-socket))

    def hair(x, y):
        rx, ry = 1.1 + f.hair.vol_side, f.face.top + f.hair.vol_top
        lit = shade(ellipsoid_lambert(x, y, (0.0, -0.2), (rx, ry), light))
        if f.hair.style == "curly":
            curls = np.sin(14 * x + 2 * np.sin(9 * y)) * np.sin(14 * y + 2 * np.sin(9 * x))
            return lit * (1.0 + 0.16 * curls)
        # Strands radiate from a point just above the head, so they fall vertically beside the face.
        angle = np.arctan2(y + ry + 0.3, x - f.hair.part)
        waves = 3 * np.sin(5 * angle + f.hair.phase)
        return lit * (1.0 + 0.06 * np.sin(f.hair.strands * angle + waves)
                      + 0.04 * np.sin(2.7 * f.hair.strands * angle + 1.3 * waves))

    def neck(x, y):
        chin_shadow = 0.55 + 0.45 * np.clip((y - f.face.chin + 0.05) / 0.45, 0.0, 1.0)
        cylinder = ellipsoid_lambert(x, 0.0 * y, (0.0, 0.0), (1.2 * f.neck.half_w, 1.0), light)
        return shade(cylinder) * chin_shadow

    def cloth(x, y):
        return shade(ellipsoid_lambert(x, y, (0.0, f.cloth.neckline_y + 1.6), (3.0, 2.0), light))

    shading = np.ones(c.size * c.size, np.float32)
    for group, model in (("head", head), ("hair", hair), ("neck", neck), ("cloth", cloth)):
        where = np.flatnonzero(groups == fr.SHADING_GROUPS.index(group))
        if where.size:
            columns, rows = (where % c.size).astype(np.float32), (where // c.size).astype(np.float32)
            shading[where] = model(*c.to_face(columns, rows))
    return shading.reshape(c.size, c.size)


def _background(c: fr.Canvas, f: SimpleNamespace) -> np.ndarray:
    """A linear two-colour gradient, [H, W, 3] float32."""
    axis = np.arange(c.size, dtype=np.float32) - c.size / 2
    along = axis[None, :] * math.cos(f.background_angle) + axis[:, None] * math.sin(f.background_angle)
    t = np.clip(0.5 + along / c.size, 0.0, 1.0)[..., None]
    start, end = (np.asarray(colour, np.float32) for colour in f.background)
    return start + (end - start) * t


def _supersample_for(size: int) -> int:
    """Samples per pixel side: tiny images need more for their thin strokes to blend, not flicker."""
    return 4 if size < 64 else 2


def render_face(size: int, seed: int, index: int) -> FaceSample:
    """Draw face `index` of the family `seed` at `size` x `size` pixels.

    Painter's order: background, hair behind the head, neck, cloth (its neckline over the neck base),
    necklace, ears, skin, nose, eyes, brows, mouth and lips, earrings, hair in front, glasses, hat.
    """
    size = _check_size(size)
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed}, index={index}.")
    f = _sample_face(np.random.default_rng([int(seed), int(index)]))
    ss = _supersample_for(size)
    c = fr.Canvas(size, ss, (f.pose.cx * size, f.pose.cy * size), f.pose.scale * size, f.pose.angle)
    shape = fr.FaceShape(f.face.top, f.face.chin, f.face.taper)
    marks = np.zeros((68, 2))
    fr.paint_hair_back(c, f)
    fr.paint_body(c, f)
    if f.necklace:
        fr.paint_necklace(c, f)
    lobes = fr.paint_ears(c, f, shape)
    c.fill("skin", shape.outline())
    marks[0:17] = shape.jaw_landmarks(f.eye.y + 0.04)
    marks[27:36] = fr.paint_nose(c, f, 1 if f.light[0] < 0 else -1)  # shadow on the side away from the light
    marks[36:48] = fr.paint_eyes(c, f)
    marks[17:27] = fr.paint_brows(c, f)
    marks[48:68] = fr.paint_mouth(c, f)
    if f.earrings:
        fr.paint_earrings(c, f, lobes)
    fr.paint_hair_front(c, f, shape)
    if f.glasses:
        fr.paint_glasses(c, f, shape)
    if f.hat:
        fr.paint_hat(c, f)

    materials = c.materials()
    parsing = majority_labels(fr.MATERIAL_CLASS[materials], ss)
    # An edge pixel is shaded by its highest-numbered group, so the background never wins over a face part.
    groups = np.maximum.reduce(_blocks(fr.MATERIAL_GROUP[materials], ss))
    shading = _shading(c, f, groups.ravel())
    colour = composite(materials, _packed_palette(f.colours), shading, _background(c, f), ss)
    # A little sensor grain; its own stream so it never shifts the face's random choices.
    grain = np.random.default_rng([int(seed), int(index), size]).standard_normal((size, size, 1), np.float32)
    image = np.clip(colour + 1.5 * grain + 0.5, 0, 255).astype(np.uint8)
    return FaceSample(image, parsing, c.to_pixels(marks).astype(np.float32), _attributes(f))


def _rgb(colour) -> tuple[int, ...]:
    """An RGB triple as plain ints in 0..255."""
    return tuple(int(round(v)) for v in np.clip(colour, 0, 255))


def _attributes(f: SimpleNamespace) -> dict:
    """What the face is made of, as plain python values (identical at every size)."""
    bald = f.hair.style == "bald"
    return {
        "hair_style": f.hair.style, "hair_colour": None if bald else f.hair.colour,
        "eye_colour": f.eye_colour, "skin_tone": f.tone, "glasses": f.glasses is not None,
        "glasses_style": f.glasses.kind if f.glasses else None, "hat": f.hat is not None,
        "hat_style": f.hat.kind if f.hat else None, "earrings": f.earrings is not None,
        "necklace": f.necklace is not None, "mouth_open": f.mouth.gap > 0, "ears_visible": f.ears_visible,
        "roll_degrees": math.degrees(f.pose.angle),
        "colours": {"skin": _rgb(f.colours["skin"]), "hair": None if bald else _rgb(f.colours["hair"]),
                    "background": (_rgb(f.background[0]), _rgb(f.background[1]))},
    }


class SyntheticFaces(Dataset):
    """`length` procedural faces of family `seed`, rendered on the fly at `size` px."""

    def __init__(self, size: int = 256, length: int = 10_000, seed: int = 0):
        self.size = _check_size(size)
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}.")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}.")
        self.length, self.seed = int(length), int(seed)

    def __len__(self) -> int:
        """The number of faces."""
        return self.length

    def __getitem__(self, index) -> dict:
        """Face `index` as tensors: image [3, H, W] in [-1, 1], parsing [H, W] int64, landmarks [68, 2]."""
        index = operator.index(index)
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} synthetic faces.")
        sample = render_face(self.size, self.seed, index)
        image = torch.from_numpy(sample.image).permute(2, 0, 1).float().div_(127.5).sub_(1.0).contiguous()
        return {"image": image, "parsing": torch.from_numpy(sample.parsing.astype(np.int64)),
                "landmarks": torch.from_numpy(sample.landmarks),
                "meta": {"index": index, "name": f"synthetic_s{self.seed}_{index:07d}"}}


# A colour per parsing class for the labelled contact sheet.
CLASS_COLOURS = np.array([(0, 0, 0), (204, 150, 120), (255, 200, 0), (0, 255, 255), (0, 90, 255),
                           (0, 200, 90), (150, 0, 200), (220, 0, 120), (255, 120, 0), (120, 60, 0),
                           (255, 0, 0), (255, 90, 150), (150, 0, 40), (60, 40, 20), (0, 120, 120),
                           (255, 255, 0), (200, 255, 120), (120, 120, 255), (90, 90, 90)], np.uint8)


def contact_sheets(count: int = 16, size: int = 128, seed: int = 0, start: int = 0) -> tuple:
    """A grid of faces and its twin with the parsing map blended in and the 68 landmarks dotted."""
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    faces, labels = (Image.new("RGB", (columns * size, rows * size)) for _ in range(2))
    for k in range(count):
        sample = render_face(size, seed, start + k)
        corner = ((k % columns) * size, (k // columns) * size)
        faces.paste(Image.fromarray(sample.image), corner)
        blend = (0.35 * sample.image + 0.65 * CLASS_COLOURS[sample.parsing]).astype(np.uint8)
        tile = Image.fromarray(blend)
        draw = ImageDraw.Draw(tile)
        for n, (x, y) in enumerate(sample.landmarks):
            draw.point((float(x), float(y)), fill=(255, 255, 255) if n < 17 or n >= 27 else (255, 0, 255))
        labels.paste(tile, corner)
    return faces, labels


def _benchmark(sizes=(64, 256), count: int = 100, rounds: int = 3) -> None:
    """Print the render time per face at each size (the best of a few rounds, to discount a busy CPU)."""
    for size in sizes:
        timings = []
        for _ in range(rounds):
            began = time.perf_counter()
            for index in range(count):
                render_face(size, 0, index)
            timings.append((time.perf_counter() - began) / count)
        print(f"{size:5d} px: {1000 * min(timings):.2f} ms per face")


def main(argv=None) -> None:
    """Command line: write contact sheets and/or time the renderer."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sheet", help="PNG path of the contact sheet (its labelled twin gets _labels)")
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0, help="first index on the sheet")
    parser.add_argument("--benchmark", action="store_true", help="time 64 and 256 px renders")
    args = parser.parse_args(argv)
    if args.sheet:
        faces, labels = contact_sheets(args.count, args.size, args.seed, args.start)
        faces.save(args.sheet)
        stem, dot, suffix = args.sheet.rpartition(".")
        labels.save(f"{stem}_labels.{suffix}" if dot else f"{args.sheet}_labels")
    if args.benchmark:
        _benchmark()
    if not (args.sheet or args.benchmark):
        parser.print_help()


if __name__ == "__main__":
    main()
