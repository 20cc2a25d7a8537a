"""Drawing layer of the procedural face renderer (used by `datamodules.synthetic_faces`).

Every shape is described in *face coordinates*: the origin is the centre of the face oval, x points to the
image right, y points down and one unit is half the face width. A `Canvas` carries the pose (rotation,
scale, shift) that maps face coordinates to pixels, so the shapes and the landmarks computed from them are
transformed identically.

Shapes are rasterised with PIL into a supersampled *material* map (uint8). A material is a colour with a
parsing class and a shading group (an iris and a pupil are both `l_eye`), so the parsing map is a lookup
of the very pixels that get painted: the topmost material wins, exactly like the colours.

Left/right: CelebAMask-HQ's `l_*`/`r_*` classes and the iBUG 68 points follow the *person's* sides. Faces
look at the camera, so the person's left (`l_eye`, `l_brow`, `l_ear`, iBUG 42-47 and 22-26) is on the
image right and the person's right (`r_*`, iBUG 36-41 and 17-21) is on the image left.
"""

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

CELEBAMASK_HQ_CLASSES: tuple[str, ...] = (
    "background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear", "mouth",
    "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth")
SHADING_GROUPS = ("background", "head", "hair", "neck", "cloth", "flat")

# (material, parsing class, shading group). Several materials share a class so that sub-parts get their
# own colour (iris and pupil inside l_eye, teeth inside mouth) without a second label canvas.
_MATERIALS = [
    ("background", "background", "background"), ("cloth", "cloth", "cloth"), ("cloth_trim", "cloth", "cloth"),
    ("neck", "neck", "neck"), ("necklace", "neck_l", "flat"), ("skin", "skin", "head"),
    ("crease", "skin", "head"), ("nose", "nose", "head"), ("nose_shadow", "nose", "head"),
    ("nostril", "nose", "head"), ("mouth", "mouth", "head"), ("teeth", "mouth", "head"),
    ("u_lip", "u_lip", "head"), ("l_lip", "l_lip", "head"), ("hair", "hair", "hair"), ("hat", "hat", "head"),
    ("hat_band", "hat", "head"), ("frame", "eye_g", "flat"), ("lens", "eye_g", "flat"),
    ("earring", "ear_r", "flat"),
]
for _side in ("l", "r"):
    _MATERIALS += [(f"{_side}_ear", f"{_side}_ear", "head"), (f"{_side}_ear_inner", f"{_side}_ear", "head"),
                   (f"{_side}_brow", f"{_side}_brow", "head"), (f"{_side}_eye_white", f"{_side}_eye", "head"),
                   (f"{_side}_iris", f"{_side}_eye", "head"), (f"{_side}_pupil", f"{_side}_eye", "head"),
                   (f"{_side}_glint", f"{_side}_eye", "flat"), (f"{_side}_lash", f"{_side}_eye", "head")]
MATERIAL_IDS = {name: i for i, (name, _, _) in enumerate(_MATERIALS)}
MATERIAL_CLASS = np.array([CELEBAMASK_HQ_CLASSES.index(c) for _, c, _ in _MATERIALS], np.uint8)
MATERIAL_GROUP = np.array([SHADING_GROUPS.index(g) for _, _, g in _MATERIALS], np.uint8)


def side_name(sign: int) -> str:
    """The person's side ('l' / 'r') of a part drawn on the image side `sign` (+1 right, -1 left)."""
    return "l" if sign > 0 else "r"


@lru_cache(maxsize=32)
def _unit_circle(n: int, power: float) -> np.ndarray:
    """n points of the unit circle (a superellipse for power > 2), cached: faces reuse a handful of n."""
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    cos, sin = np.cos(t), np.sin(t)
    exponent = 2.0 / power
    return np.stack([np.sign(cos) * np.abs(cos) ** exponent, np.sign(sin) * np.abs(sin) ** exponent], 1)


def ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 32, power: float = 2.0) -> np.ndarray:
    """Closed outline of an ellipse (a rounded rectangle for power > 2) as [n, 2] points."""
    return _unit_circle(n, power) * (rx, ry) + (cx, cy)


def upper_arc(rx: float, ry: float, level: float, n: int = 40, cy: float = 0.0) -> np.ndarray:
    """The ellipse centred at (0, cy) from its left crossing of y = level, over the top, to the right."""
    start = math.asin(min(max((cy - level) / ry, -1.0), 1.0))
    t = np.linspace(np.pi - start, start, n)
    return np.stack([rx * np.cos(t), cy - ry * np.sin(t)], 1)


def bumpy(points: np.ndarray, centre: tuple[float, float], amount: float, count: int, phase: float):
    """Push points away from `centre` in `count` rounded bumps per turn (a curly silhouette)."""
    offset = points - np.asarray(centre)
    angle = np.arctan2(offset[:, 1], offset[:, 0])
    swell = 1 + amount * np.abs(np.sin(count * angle / 2 + phase)) ** 0.6
    return np.asarray(centre) + offset * swell[:, None]


class Canvas:
    """A supersampled material map plus the pose that places face coordinates on it."""

    def __init__(self, size: int, supersample: int, centre: tuple[float, float], scale: float, angle: float):
        self.size, self.supersample, self.angle = size, supersample, angle
        cos, sin = math.cos(angle), math.sin(angle)
        self.linear = scale * np.array([[cos, -sin], [sin, cos]])
        self.offset = np.asarray(centre, dtype=float)
        self.pixels_per_unit = scale
        self.image = Image.new("L", (size * supersample, size * supersample), MATERIAL_IDS["background"])
        self.draw = ImageDraw.Draw(self.image)

    def to_pixels(self, points: np.ndarray) -> np.ndarray:
        """Face coordinates -> output pixel coordinates (integers at pixel centres)."""
        return np.asarray(points, dtype=float) @ self.linear.T + self.offset

    def to_face(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Output pixel coordinates -> face coordinates (the inverse pose)."""
        dx, dy = x - self.offset[0], y - self.offset[1]
        cos, sin, s = math.cos(self.angle), math.sin(self.angle), self.pixels_per_unit
        return (cos * dx + sin * dy) / s, (-sin * dx + cos * dy) / s

    def _flat_xy(self, points: np.ndarray) -> list[float]:
        # PIL puts pixel centres at i + 0.5 while we put them at integers, hence the extra half pixel.
        return ((self.to_pixels(points) + 0.5) * self.supersample).ravel().tolist()

    def at_least(self, units: float, pixels: float) -> float:
        """A length of `units`, raised so it covers at least `pixels` output pixels (tiny images)."""
        return max(units, pixels / self.pixels_per_unit)

    def fill(self, material: str, points: np.ndarray) -> None:
        """Fill a polygon given in face coordinates."""
        self.draw.polygon(self._flat_xy(points), fill=MATERIAL_IDS[material])

    def stroke(self, material: str, points: np.ndarray, width: float, min_pixels: float = 1.0,
               closed: bool = False) -> None:
        """A polyline `width` face units wide, but never thinner than `min_pixels` output pixels."""
        points = np.asarray(points, dtype=float)
        if closed:
            points = np.vstack([points, points[:1]])
        ss_width = max(width * self.pixels_per_unit, min_pixels) * self.supersample
        self.draw.line(self._flat_xy(points), fill=MATERIAL_IDS[material], width=max(1, round(ss_width)),
                       joint="curve")

    def materials(self) -> np.ndarray:
        """The supersampled material map, [size * ss, size * ss] uint8."""
        return np.asarray(self.image)


class FaceShape:
    """The skin outline: an elliptic cranium over a jaw that tapers to the chin."""

    def __init__(self, top: float, chin: float, taper: float):
        phi = np.linspace(-np.pi / 2, np.pi / 2, 121)
        sin = np.sin(phi)
        lower = sin > 0
        x = np.cos(phi) * np.where(lower, 1.0 - taper * np.abs(sin) ** 3, 1.0)
        self.right = np.stack([x, sin * np.where(lower, chin, top)], 1)  # right half, top to chin
        self.chin = chin

    def outline(self) -> np.ndarray:
        """Closed polygon: right half top to chin, then the mirrored left half back up."""
        return np.vstack([self.right[::2], (self.right[::-2] * [-1.0, 1.0])[1:-1]])

    def half_width(self, y):
        """Half width of the face at height y (the right half is monotonic in y)."""
        return np.interp(y, self.right[:, 1], self.right[:, 0])

    def jaw_landmarks(self, level: float) -> np.ndarray:
        """iBUG 0-16: evenly spaced on the outline from the left at `level`, round the chin, to the right."""
        below = self.right[self.right[:, 1] > level]
        right = np.vstack([[self.half_width(level), level], below])  # level down to the chin
        path = np.vstack([right * [-1.0, 1.0], right[::-1][1:]])
        distance = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(path, axis=0).T))])
        targets = np.linspace(0.0, distance[-1], 17)
        return np.stack([np.interp(targets, distance, path[:, k]) for k in (0, 1)], 1)


def _lids(eye, sign: int, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upper and lower lid heights across the eye on image side `sign`, u from -1 (left corner) to 1."""
    base = eye.y - eye.tilt * u * sign  # the outer corner (image-outward end) sits higher
    width = np.maximum(1.0 - u * u, 0.0)  # rounding may put a clamped point a hair past a corner
    return base - eye.half_h * width**0.55, base + 0.8 * eye.half_h * width**0.8


def paint_eyes(c: Canvas, face) -> np.ndarray:
    """Eye whites, irises, pupils and lash lines; returns iBUG 36-47 (image-left eye first)."""
    eye, marks = face.eye, []
    u = np.linspace(-1.0, 1.0, 15)
    for sign in (-1, 1):
        side, cx = side_name(sign), sign * eye.x
        upper, lower = _lids(eye, sign, u)
        x = cx + u * eye.half_w
        c.fill(f"{side}_eye_white", np.vstack([np.stack([x, upper], 1), np.stack([x, lower], 1)[-2:0:-1]]))

        def inside_lids(points, cx=cx, sign=sign):
            # Clamping y between the lids turns a circle into circle-AND-eye, so the iris never leaks.
            px = np.clip(points[:, 0], cx - eye.half_w, cx + eye.half_w)
            top, bottom = _lids(eye, sign, (px - cx) / eye.half_w)
            return np.stack([px, np.clip(points[:, 1], top, bottom)], 1)

        gx, gy, r = cx + eye.gaze_x * eye.half_w, eye.y + eye.gaze_y * eye.half_h, eye.iris_r
        c.fill(f"{side}_iris", inside_lids(ellipse(gx, gy, r, r, 24)))
        c.fill(f"{side}_pupil", inside_lids(ellipse(gx, gy, 0.45 * r, 0.45 * r, 16)))
        glint = c.at_least(0.2 * r, 0.6)
        c.fill(f"{side}_glint", inside_lids(ellipse(gx - 0.35 * r, gy - 0.35 * r, glint, glint, 10)))
        c.stroke(f"{side}_lash", np.stack([x, upper], 1), 0.025, 0.6)
        crease = slice(3, -3)
        c.stroke("crease", np.stack([x[crease], upper[crease] - 0.9 * eye.half_h], 1), 0.014, 0.4)
        corner_u = np.array([-1.0, -1 / 3, 1 / 3, 1.0, 1 / 3, -1 / 3])
        top, bottom = _lids(eye, sign, corner_u)
        marks.append(np.stack([cx + corner_u * eye.half_w, np.r_[top[:4], bottom[4:]]], 1))
    return np.vstack(marks)


def paint_brows(c: Canvas, face) -> np.ndarray:
    """Two tapering arched brows; returns iBUG 17-26 on their upper edges, left to right."""
    brow, marks = face.brow, []
    u = np.linspace(-1.0, 1.0, 12)
    for sign in (-1, 1):
        inner = (1.0 - sign * u) / 2  # 1 at the end nearest the nose, which is the thick end
        thickness = brow.thick * (0.45 + 0.55 * inner**0.6)
        centre = brow.y - brow.arch * (1.0 - u * u) ** 0.8 + 0.4 * brow.arch * (1.0 - inner)
        x = sign * brow.x + u * brow.half_w
        upper, lower = centre - thickness / 2, centre + thickness / 2
        c.fill(f"{side_name(sign)}_brow", np.vstack([np.stack([x, upper], 1), np.stack([x, lower], 1)[::-1]]))
        # The end points sit just inside the tips, which can be thinner than a pixel.
        mark_x = sign * brow.x + np.linspace(-0.92, 0.92, 5) * brow.half_w
        marks.append(np.stack([mark_x, np.interp(mark_x, x, upper)], 1))
    return np.vstack(marks)


def paint_nose(c: Canvas, face, shadow_sign: int) -> np.ndarray:
    """Nose region with a shadowed flank and nostrils; returns iBUG 27-35."""
    nose, top = face.nose, face.eye.y + 0.03
    tip, half, bridge = nose.tip_y, nose.half_w, nose.bridge_w
    right = np.array([(bridge, top), (1.2 * bridge, tip - 0.22), (0.7 * half, tip - 0.07), (half, tip + 0.02),
                      (0.85 * half, tip + 0.09), (0.4 * half, tip + 0.11), (0.0, tip + 0.125)])
    c.fill("nose", np.vstack([right, (right * [-1.0, 1.0])[-2:0:-1]]))
    flank = np.array([(bridge, top + 0.05), (1.2 * bridge, tip - 0.22), (0.7 * half, tip - 0.07),
                      (half, tip + 0.02), (0.6 * half, tip - 0.02), (0.55 * bridge, tip - 0.22),
                      (0.45 * bridge, top + 0.09)])
    c.fill("nose_shadow", flank * [shadow_sign, 1.0])
    for sign in (-1, 1):
        c.fill("nostril", ellipse(sign * 0.45 * half, tip + 0.075, 0.25 * half, c.at_least(0.028, 0.5), 16))
    bridge_y = np.linspace(face.eye.y, tip, 4)
    base = np.array([(-0.7 * half, tip + 0.08), (-0.35 * half, tip + 0.1), (0.0, tip + 0.11),
                     (0.35 * half, tip + 0.1), (0.7 * half, tip + 0.08)])
    return np.vstack([np.stack([np.zeros(4), bridge_y], 1), base])


def paint_mouth(c: Canvas, face) -> np.ndarray:
    """Lips (and the open mouth with teeth); returns iBUG 48-67."""
    m = face.mouth
    u = np.linspace(-1.0, 1.0, 25)
    width = 1.0 - u * u
    base = m.y - m.smile * u * u
    inner_upper = base - 0.35 * m.gap * width**0.8
    inner_lower = base + 0.65 * m.gap * width**0.8
    bow = width**0.6 * (1.0 - 0.3 * np.exp(-((u / 0.15) ** 2)))  # the dip of the cupid's bow
    outer_upper, outer_lower = inner_upper - m.upper * bow, inner_lower + m.lower * width**0.6
    x = u * m.half_w

    def band(top, bottom):
        return np.vstack([np.stack([x, top], 1), np.stack([x, bottom], 1)[::-1]])

    if m.gap > 0:
        c.fill("mouth", band(inner_upper, inner_lower))
        if m.teeth:
            c.fill("teeth", band(inner_upper, np.minimum(inner_upper + 0.06 * width, inner_lower)))
    c.fill("u_lip", band(outer_upper, inner_upper))
    c.fill("l_lip", band(inner_lower, outer_lower))

    def at(curve, positions):
        positions = np.asarray(positions, dtype=float)
        return np.stack([positions * m.half_w, np.interp(positions, u, curve)], 1)

    inner_mid = (inner_upper + inner_lower) / 2
    return np.vstack([at(outer_upper, [-1, -0.6, -0.28, 0, 0.28, 0.6, 1]),
                      at(outer_lower, [0.6, 0.28, 0, -0.28, -0.6]), at(inner_mid, [-0.9]),
                      at(inner_upper, [-0.4, 0, 0.4]), at(inner_mid, [0.9]), at(inner_lower, [0.4, 0, -0.4])])


def paint_ears(c: Canvas, face, shape: FaceShape) -> dict[int, tuple[float, float]]:
    """Both ears, half tucked behind the face oval; returns the earlobe point of each image side."""
    ear, lobes = face.ear, {}
    cy, ry = (ear.top + ear.bottom) / 2, (ear.bottom - ear.top) / 2
    for sign in (-1, 1):
        side, cx = side_name(sign), sign * (float(shape.half_width(cy)) + 0.35 * ear.width)
        c.fill(f"{side}_ear", ellipse(cx, cy, ear.width, ry, 24))
        concha = ellipse(cx + sign * 0.15 * ear.width, cy - 0.1 * ry, 0.45 * ear.width, 0.55 * ry, 16)
        c.fill(f"{side}_ear_inner", concha)
        lobes[sign] = (cx + sign * 0.1 * ear.width, ear.bottom - 0.15 * ry)
    return lobes


def paint_earrings(c: Canvas, face, lobes: dict[int, tuple[float, float]]) -> None:
    """Studs, hoops or drops hanging from the earlobes."""
    kind, r = face.earrings.kind, c.at_least(face.earrings.size, 0.8)
    for lobe_x, lobe_y in lobes.values():
        if kind == "stud":
            c.fill("earring", ellipse(lobe_x, lobe_y, r, r, 12))
        elif kind == "hoop":
            c.stroke("earring", ellipse(lobe_x, lobe_y + 2 * r, 2 * r, 2.2 * r, 20), 0.025, 1.2, closed=True)
        else:
            c.stroke("earring", [(lobe_x, lobe_y), (lobe_x, lobe_y + 3 * r)], 0.02, 1.0)
            c.fill("earring", ellipse(lobe_x, lobe_y + 3.5 * r, 1.1 * r, 1.4 * r, 14))


def _hair_radii(face) -> tuple[float, float]:
    """Half width and height of the hair silhouette's ellipse."""
    return 1.0 + face.hair.vol_side, face.face.top + face.hair.vol_top


def paint_hair_back(c: Canvas, face) -> None:
    """Hair behind the head, neck and shoulders (long and curly styles) or a bun on top."""
    hair = face.hair
    rx, ry = _hair_radii(face)
    if hair.style in ("long", "bob", "bangs", "curly"):
        bottom = np.linspace(hair.length, 0.0, 6)
        left = np.stack([-(rx + hair.flare * bottom / hair.length), bottom], 1)
        mass = np.vstack([left, upper_arc(rx, ry, 0.0, 40)[1:-1], (left * [-1.0, 1.0])[::-1]])
        if hair.style == "curly":
            mass = bumpy(mass, (0.0, 0.0), hair.bumps, 26, hair.phase)
        c.fill("hair", mass)
    elif hair.style == "bun":
        c.fill("hair", ellipse(0.0, -ry - 0.55 * hair.bun_r, hair.bun_r, 0.85 * hair.bun_r, 28))


def paint_hair_front(c: Canvas, face, shape: FaceShape) -> None:
    """The hair cap down to the hairline, plus side locks and a fringe for the styles that have them."""
    hair = face.hair
    if hair.style == "bald":
        return
    rx, ry = _hair_radii(face)
    has_locks = hair.style in ("long", "bob", "bangs")
    temple_y = hair.side_bottom if has_locks else min(hair.side_bottom, hair.hairline + 0.35)
    outer = upper_arc(rx, ry, temple_y, 40)
    if hair.style == "curly":
        outer = bumpy(outer, (0.0, 0.0), hair.bumps, 26, hair.phase)
    if hair.side_bottom > temple_y:  # below the temples the hair tapers into sideburns
        sideburn_x = float(shape.half_width(hair.side_bottom)) + 0.03
        outer = np.vstack([[(-sideburn_x, hair.side_bottom)], outer, [(sideburn_x, hair.side_bottom)]])
    side_y = np.linspace(hair.side_bottom, hair.hairline, 6)
    side_x = shape.half_width(side_y) - hair.inset
    line_x = np.linspace(side_x[-1], -side_x[-1], 11)
    line_y = hair.hairline - hair.arch * (1.0 - (line_x / side_x[-1]) ** 2)
    inner = np.vstack([np.stack([side_x, side_y], 1), np.stack([line_x, line_y], 1)[1:-1],
                       np.stack([-side_x, side_y], 1)[::-1]])
    c.fill("hair", np.vstack([outer, inner]))
    if has_locks:
        lock_y = np.linspace(hair.hairline + 0.2, hair.length, 12)
        # Below the cheeks the locks fall straight instead of following the jaw in.
        inner_x = shape.half_width(np.minimum(lock_y, 0.5)) - hair.inset
        # Follow the head's silhouette above its equator, then flare out like the hair behind.
        above = np.minimum(lock_y, 0.0) / ry
        outer_x = rx * np.sqrt(1.0 - above * above) + hair.flare * np.maximum(lock_y, 0.0) / hair.length
        across = np.linspace(0.0, 1.0, 7)[1:-1]
        tip_y = hair.length - 0.15 * np.abs(2 * across - 1) ** 1.5  # a rounded end, longest mid-lock
        for sign in (-1, 1):
            tip = np.stack([sign * (inner_x[-1] + (outer_x[-1] - inner_x[-1]) * across), tip_y], 1)
            c.fill("hair", np.vstack([np.stack([sign * inner_x, lock_y], 1), tip,
                                      np.stack([sign * outer_x, lock_y], 1)[::-1]]))
    if hair.style == "bangs":
        half = float(shape.half_width(hair.fringe_y)) + 0.02
        fringe_x = np.linspace(half, -half, 17)
        # Alternate strand tips, and shorter towards the temples, so the fringe is not a ruler-straight cut.
        fringe_y = hair.fringe_y + 0.04 * (np.arange(17) % 2) - 0.08 * (fringe_x / half) ** 2
        c.fill("hair", np.vstack([[(-half, hair.hairline - 0.15), (half, hair.hairline - 0.15)],
                                  np.stack([fringe_x, fringe_y], 1)]))


def paint_body(c: Canvas, face) -> None:
    """Neck, then the clothed shoulders over its base."""
    neck, cloth = face.neck.half_w, face.cloth
    top, line = 0.2, cloth.neckline_y
    c.fill("neck", np.array([(-neck, top), (-neck, line - 0.5), (-neck - 0.1, line), (-neck - 0.2, 6.0),
                             (neck + 0.2, 6.0), (neck + 0.1, line), (neck, line - 0.5), (neck, top)]))
    half = neck + 0.18
    x = np.linspace(-half, half, 15)
    dip = 1.0 - np.abs(x) / half if cloth.style == "v" else 1.0 - (x / half) ** 2
    neckline = np.stack([x, line + cloth.depth * dip], 1)
    shoulder = np.array([(0.0, 0.0), (0.6, 0.12), (1.2, 0.35), (1.7, 0.75), (2.0, 1.5), (2.1, 5.0)])
    right = np.stack([half + shoulder[:, 0] * cloth.shoulders, line + shoulder[:, 1]], 1)
    c.fill("cloth", np.vstack([(right * [-1.0, 1.0])[::-1], neckline[1:-1], right]))
    if cloth.style == "collar":
        for sign in (-1, 1):
            flap = [(half, line - 0.05), (0.08, line + cloth.depth + 0.05), (half + 0.35, line + 0.45)]
            c.fill("cloth_trim", np.array(flap) * [sign, 1.0])
    elif cloth.trim:
        c.stroke("cloth_trim", neckline, 0.07, 1.0)


def paint_necklace(c: Canvas, face) -> None:
    """A chain across the base of the neck, optionally with a pendant."""
    half, necklace = 0.97 * face.neck.half_w, face.necklace
    top = face.cloth.neckline_y - 0.35
    x = np.linspace(-half, half, 17)
    c.stroke("necklace", np.stack([x, top + necklace.drop * (1.0 - (x / half) ** 2)], 1), 0.035, 1.3)
    if necklace.pendant:
        r = c.at_least(0.05, 1.0)
        c.fill("necklace", ellipse(0.0, top + necklace.drop + r, r, 1.3 * r, 14))


def paint_glasses(c: Canvas, face, shape: FaceShape) -> None:
    """Frames (and dark lenses for sunglasses) around the eyes, with a bridge and arms to the ears."""
    glasses, eye = face.glasses, face.eye
    cy = eye.y + glasses.drop
    for sign in (-1, 1):
        lens = ellipse(sign * eye.x, cy, glasses.half_w, glasses.half_h, 40, power=glasses.squareness)
        if glasses.kind == "sunglasses":
            c.fill("lens", lens)
        c.stroke("frame", lens, glasses.thick, 1.5, closed=True)
        arm_y = cy - 0.45 * glasses.half_h
        arm = [(eye.x + 0.97 * glasses.half_w, arm_y), (float(shape.half_width(arm_y)) + 0.05, arm_y - 0.03)]
        c.stroke("frame", np.array(arm) * [sign, 1.0], 0.8 * glasses.thick, 1.5)
    inner, bridge_y = eye.x - 0.97 * glasses.half_w, cy - 0.35 * glasses.half_h
    bridge = [(-inner, bridge_y), (0.0, bridge_y - 0.04), (inner, bridge_y)]
    c.stroke("frame", bridge, 0.8 * glasses.thick, 1.5)


def paint_hat(c: Canvas, face) -> None:
    """A beanie hugging the head, or a brimmed hat sitting on top of the hair."""
    hat = face.hat
    grow = 0.0 if face.hair.style == "bald" else 0.5
    rx, ry = 1.0 + grow * face.hair.vol_side + 0.08, face.face.top + grow * face.hair.vol_top + 0.22
    if hat.kind == "beanie":
        dome = upper_arc(rx, ry, hat.band_y, 40)
        edge_x = np.linspace(dome[-1, 0], dome[0, 0], 13)
        edge = np.stack([edge_x, hat.band_y + 0.08 * (1.0 - (edge_x / edge_x[0]) ** 2)], 1)
        c.fill("hat", np.vstack([dome, edge[1:-1]]))
        c.fill("hat_band", np.vstack([edge[::-1] - [0.0, hat.band_h], edge]))
        return
    crown_top = hat.band_y - hat.crown_h
    arc = upper_arc(0.88 * rx, 0.22, crown_top + 0.22, 16, cy=crown_top + 0.22)
    c.fill("hat", np.vstack([[(-rx, hat.band_y)], arc, [(rx, hat.band_y)]]))
    c.fill("hat_band", np.array([(-rx, hat.band_y), (-0.97 * rx, hat.band_y - hat.band_h),
                                 (0.97 * rx, hat.band_y - hat.band_h), (rx, hat.band_y)]))
    c.fill("hat", ellipse(0.0, hat.band_y, rx + hat.brim, hat.brim_h, 48))
