"""FFHQ-style face alignment of raw photos (dlib 68 landmarks) and paste-back of edited crops.

The crop follows the FFHQ dataset procedure (Karras et al. 2019, `recreate_aligned_images`): an oriented
square quad built from the eye and mouth landmarks, then shrink, crop, reflect-pad with a blurred border,
and a supersampled quad transform. Coordinates are pixel-index coordinates (pixel centres at integers,
x = column, y = row), as dlib returns them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

# Minimum dlib detection score. At upsample 1 the detector also reports face-like textures with low scores:
# on skimage's astronaut the face scores 1.16 and the mission patch 0.12.
MIN_SCORE = 0.3


class NoFaceFoundError(ValueError):
    """The face detector found no face in a photo."""


@dataclass
class AlignedFace:
    """One aligned face: the crop, its quad in the photo, and what paste-back needs."""

    image: np.ndarray  # [S, S, 3] uint8, the aligned crop
    quad: np.ndarray  # [4, 2] float, photo (x, y) of the crop's corners (see ffhq_quad)
    landmarks: np.ndarray  # [68, 2] float, dlib landmarks in photo coordinates
    photo_size: tuple[int, int]  # (H, W) of the source photo
    index: int = 0  # position among the photo's faces, left to right
    name: str = "face_0"  # `<stem>_<index>`
    meta: dict = field(default_factory=dict)

    @property
    def crop_to_photo(self) -> np.ndarray:
        """`[2, 3]` affine map from crop (x, y, 1) to photo (x, y)."""
        return crop_to_photo_matrix(self.quad, self.image.shape[0])

    def to_json(self) -> dict:
        """The sidecar content: everything paste-back needs, without the pixels."""
        return {
            "name": self.name,
            "index": self.index,
            "output_size": int(self.image.shape[0]),
            "photo_size": [int(v) for v in self.photo_size],
            "quad": self.quad.tolist(),
            "landmarks": self.landmarks.tolist(),
            "crop_to_photo": self.crop_to_photo.tolist(),
            **self.meta,
        }

    @classmethod
    def from_json(cls, meta: dict, image: np.ndarray | None = None) -> AlignedFace:
        """Rebuild from a sidecar; `image` ([S, S, 3]) defaults to a black crop of the recorded size."""
        size = int(meta["output_size"])
        extra = {k: v for k, v in meta.items() if k not in _JSON_KEYS}
        return cls(
            image=np.zeros((size, size, 3), np.uint8) if image is None else image,
            quad=np.asarray(meta["quad"], dtype=np.float64),
            landmarks=np.asarray(meta["landmarks"], dtype=np.float64),
            photo_size=tuple(meta["photo_size"]),
            index=int(meta["index"]),
            name=str(meta["name"]),
            meta=extra,
        )


_JSON_KEYS = {"name", "index", "output_size", "photo_size", "quad", "landmarks", "crop_to_photo"}


@functools.lru_cache(maxsize=1)
def _dlib_models():
    """dlib's frontal face detector and 68-landmark predictor, loaded once per process."""
    import dlib
    import face_recognition_models

    path = Path(face_recognition_models.pose_predictor_model_location())
    if not path.is_file():
        raise FileNotFoundError(
            f"dlib's 68-landmark model {path} is missing; reinstall the `face_recognition_models` package "
            "(it ships shape_predictor_68_face_landmarks.dat)."
        )
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(path))


def detect_faces(image: np.ndarray, upsample: int = 1, min_score: float = MIN_SCORE) -> list[np.ndarray]:
    """68 dlib landmarks `[68, 2]` (x, y) per face of an `[H, W, 3]` uint8 photo, in detector order.

    `upsample` enlarges the photo that many times (x2 each) so smaller faces are found; detections with a
    dlib score below `min_score` are dropped (0 keeps everything dlib's detector reports by default).
    """
    detector, predictor = _dlib_models()
    image = np.ascontiguousarray(image, dtype=np.uint8)
    rects, scores, _ = detector.run(image, upsample, min(min_score, 0.0))
    faces = []
    for rect, score in zip(rects, scores, strict=True):
        if score >= min_score:
            shape = predictor(image, rect)
            faces.append(np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64))
    return faces


def ffhq_quad(landmarks: np.ndarray) -> np.ndarray:
    """FFHQ crop quad `[4, 2]` (top-left, bottom-left, bottom-right, top-right) from `[68, 2]` landmarks."""
    lm = np.asarray(landmarks, dtype=np.float64)
    eye_left, eye_right = lm[36:42].mean(axis=0), lm[42:48].mean(axis=0)
    eye_avg = (eye_left + eye_right) / 2
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[48] + lm[54]) / 2  # outer mouth corners
    eye_to_mouth = mouth_avg - eye_avg
    # x axis: eye-to-eye blended with eye-to-mouth turned by -90 degrees; y axis: x turned by +90 degrees
    x = eye_to_eye - np.array([-eye_to_mouth[1], eye_to_mouth[0]])
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8) / np.hypot(*x)
    y = np.array([-x[1], x[0]])
    center = eye_avg + eye_to_mouth * 0.1
    return np.stack([center - x - y, center - x + y, center + x + y, center + x - y])


def crop_to_photo_matrix(quad: np.ndarray, size: int) -> np.ndarray:
    """`[2, 3]` affine map from pixel (x, y) of a `size` crop of `quad` ([4, 2]) to photo (x, y)."""
    quad = np.asarray(quad, dtype=np.float64)
    origin, right, down = quad[0], (quad[3] - quad[0]) / size, (quad[1] - quad[0]) / size
    # crop pixel centre j sits at (j + 0.5) / size along the quad's sides
    return np.stack([right, down, origin + 0.5 * (right + down)], axis=1)


def align_face(
    image: np.ndarray,
    landmarks: np.ndarray,
    output_size: int = 1024,
    transform_size: int | None = None,
    enable_padding: bool = True,
) -> AlignedFace:
    """FFHQ-align one face of an `[H, W, 3]` uint8 photo given its `[68, 2]` landmarks.

    `transform_size` (default 4 x output_size, FFHQ's 4096 for 1024) is the supersampled size of the quad
    transform before the final antialiased resize.
    """
    transform_size = transform_size or 4 * output_size
    photo_quad = ffhq_quad(landmarks)
    quad = photo_quad.copy()
    qsize = np.hypot(*(quad[3] - quad[0]))
    img = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))

    shrink = int(np.floor(qsize / output_size * 0.5))
    if shrink > 1:
        size = (int(np.rint(img.size[0] / shrink)), int(np.rint(img.size[1] / shrink)))
        img = img.resize(size, Image.LANCZOS)
        quad /= shrink
        qsize /= shrink

    border = max(int(np.rint(qsize * 0.1)), 3)
    lo, hi = np.floor(quad.min(axis=0)).astype(int), np.ceil(quad.max(axis=0)).astype(int)
    crop = (max(lo[0] - border, 0), max(lo[1] - border, 0))
    crop += (min(hi[0] + border, img.size[0]), min(hi[1] + border, img.size[1]))
    if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
        img = img.crop(crop)
        quad -= crop[0:2]

    lo, hi = np.floor(quad.min(axis=0)).astype(int), np.ceil(quad.max(axis=0)).astype(int)
    pad = [max(-lo[0] + border, 0), max(-lo[1] + border, 0)]
    pad += [max(hi[0] - img.size[0] + border, 0), max(hi[1] - img.size[1] + border, 0)]
    if enable_padding and max(pad) > border - 4:
        pad = np.maximum(pad, int(np.rint(qsize * 0.3)))
        img = _reflect_pad_blurred(np.asarray(img, dtype=np.float32), pad, qsize)
        quad += pad[:2]

    data = (quad + 0.5).flatten()  # index coordinates -> PIL's continuous coordinates
    img = img.transform((transform_size, transform_size), Image.QUAD, tuple(data), Image.BILINEAR)
    if output_size < transform_size:
        img = img.resize((output_size, output_size), Image.LANCZOS)
    return AlignedFace(
        image=np.asarray(img),
        quad=photo_quad,
        landmarks=np.asarray(landmarks, dtype=np.float64),
        photo_size=(int(image.shape[0]), int(image.shape[1])),
    )


def _reflect_pad_blurred(img: np.ndarray, pad, qsize: float) -> Image.Image:
    """Reflect-pad `[H, W, 3]` float by (left, top, right, bottom), blurring and greying toward the edges."""
    left, top, right, bottom = (int(p) for p in pad)
    img = np.pad(img, ((top, bottom), (left, right), (0, 0)), "reflect")
    height, width = img.shape[:2]
    ys, xs = np.ogrid[:height, :width]
    with np.errstate(divide="ignore", invalid="ignore"):
        near_x = np.minimum(np.float32(xs) / left, np.float32(width - 1 - xs) / right)
        near_y = np.minimum(np.float32(ys) / top, np.float32(height - 1 - ys) / bottom)
    mask = np.maximum(1.0 - near_x, 1.0 - near_y)[..., None]  # [H, W, 1], >= 0 in the padding
    mask = np.nan_to_num(mask, nan=-np.inf)
    blur = qsize * 0.02
    img += (ndimage.gaussian_filter(img, [blur, blur, 0]) - img) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
    img += (np.median(img, axis=(0, 1)) - img) * np.clip(mask, 0.0, 1.0)
    return Image.fromarray(np.uint8(np.clip(np.rint(img), 0, 255)), "RGB")


def align_photo(
    path_or_array: str | Path | np.ndarray,
    output_size: int = 1024,
    name: str | None = None,
    upsample: int = 1,
    min_score: float = MIN_SCORE,
    transform_size: int | None = None,
) -> list[AlignedFace]:
    """Align every face of a photo (file or `[H, W, 3]` uint8), ordered left to right, named `<name>_<k>`."""
    from facelab.io.images import read_rgb

    if isinstance(path_or_array, (str, Path)):
        source = str(path_or_array)
        image = read_rgb(path_or_array)
        name = name or Path(path_or_array).stem
    else:
        image = np.asarray(path_or_array)
        name = name or "image"
        source = name
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{source}: expected an [H, W, 3] uint8 RGB image, got {image.shape} {image.dtype}.")
    faces = detect_faces(image, upsample=upsample, min_score=min_score)
    if not faces:
        raise NoFaceFoundError(
            f"No face found in {source} ({image.shape[1]}x{image.shape[0]} px, dlib upsample={upsample}, "
            f"min_score={min_score}). Try a higher upsample (--upsample {upsample + 1}) for small faces, "
            "a lower --min-score, a larger or sharper photo, or a photo with a frontal, unoccluded face."
        )
    faces.sort(key=lambda lm: float(lm[:, 0].mean()))
    aligned = []
    for k, landmarks in enumerate(faces):
        face = align_face(image, landmarks, output_size=output_size, transform_size=transform_size)
        face.index, face.name, face.meta = k, f"{name}_{k}", {"source": source}
        aligned.append(face)
    return aligned


def paste_back(
    photo: np.ndarray, edited_crop: np.ndarray, aligned: AlignedFace, feather: float = 0.1
) -> np.ndarray:
    """Warp an edited `[S, S, 3]` uint8 crop back into its `[H, W, 3]` uint8 photo.

    The crop is blended with a mask that is 1 inside the quad and falls to 0 at its edge over `feather`
    (a fraction of the crop side); photo pixels outside the quad are returned unchanged. The crop may have
    any size: the quad fixes where it goes.
    """
    photo = np.asarray(photo)
    if photo.shape[:2] != tuple(aligned.photo_size):
        raise ValueError(
            f"Photo is {photo.shape[:2]} (H, W) but face {aligned.name} was aligned on a "
            f"{tuple(aligned.photo_size)} photo."
        )
    size = edited_crop.shape[0]
    forward = np.vstack([crop_to_photo_matrix(aligned.quad, size), [0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(forward)[:2]  # [2, 3] photo (x, y, 1) -> crop (x, y)

    height, width = photo.shape[:2]
    lo = np.clip(np.floor(aligned.quad.min(axis=0)).astype(int) - 1, 0, [width, height])
    hi = np.clip(np.ceil(aligned.quad.max(axis=0)).astype(int) + 2, 0, [width, height])
    ys, xs = np.mgrid[lo[1] : hi[1], lo[0] : hi[0]].astype(np.float64)
    cx = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]  # [h, w] crop x
    cy = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]

    edge = np.minimum.reduce([cx + 0.5, size - 0.5 - cx, cy + 0.5, size - 0.5 - cy])  # crop px to the edge
    if feather > 0:
        mask = np.clip(edge / (feather * size), 0.0, 1.0)
    else:
        mask = (edge >= 0).astype(np.float64)
    crop = np.asarray(edited_crop, dtype=np.float64)
    warped = np.stack(
        [ndimage.map_coordinates(crop[..., c], [cy, cx], order=1, mode="nearest") for c in range(3)], axis=-1
    )
    out = photo.copy()
    region = out[lo[1] : hi[1], lo[0] : hi[0]]
    blended = np.rint(region * (1.0 - mask[..., None]) + warped * mask[..., None])
    inside = mask > 0
    region[inside] = np.clip(blended[inside], 0, 255).astype(np.uint8)
    return out
