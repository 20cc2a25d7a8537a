"""The image inputs of a latent-fit job, checked (and, for raw photos, aligned) before any fitting starts.

Barbershop and DragGAN work on aligned crops at the generator's resolution. `InputPreparation` opens every
image of the job's items once: an unreadable file, or with `exact_size` an image that is not an
`image_size` square crop, is an error naming the manifest row and the file. With `align` raw photos are
aligned first (dlib's detector and 68 landmarks, the FFHQ crop, facelab/ops/align.py): the crop goes to
`<aligned_dir>/<content hash>.png` with its paste-back sidecar `.json`, and the item reads the crop. A photo
with no face is an error naming the row and the file; of several faces the largest is taken.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from facelab.fit.cache import file_digest
from facelab.fit.manifest import FitItem, ManifestError
from facelab.io.files import atomic_write_bytes
from facelab.io.images import IMAGE_EXTENSIONS, read_rgb, save_image


def paste_into_photo(values: dict, column: str, result_path: Path, out_path: Path) -> list[Path]:
    """If the item's `column` was aligned from a raw photo by the job, warp `result_path` (an edited crop)
    back into that photo as `out_path` (facelab/ops/align.py paste_back); returns the files written."""
    from facelab.ops.align import AlignedFace, paste_back

    source = (values.get("photo_sources") or {}).get(column)
    if source is None:
        return []
    sidecar = json.loads(Path(values[column]).with_suffix(".json").read_text())
    pasted = paste_back(read_rgb(source), read_rgb(result_path), AlignedFace.from_json(sidecar))
    save_image(pasted, out_path)
    return [out_path]


def is_image(value) -> bool:
    return str(value).lower().endswith(IMAGE_EXTENSIONS)


class InputPreparation:
    """Checks (and aligns) the image columns of items; `prepare(items)` returns the items to fit."""

    def __init__(
        self,
        image_size: int,
        exact_size: bool = False,
        align: bool = False,
        aligned_dir: str | None = None,
        image_columns: tuple[str, ...] = (),
    ):
        if align and not aligned_dir:
            raise ValueError(
                "fit.align=true needs an aligned_dir for the crops (default: <output_dir>/aligned)."
            )
        self.image_size, self.exact_size, self.align = image_size, exact_size, align
        self.aligned_dir = Path(aligned_dir) if aligned_dir else None
        self.image_columns = image_columns

    def prepare(self, items: list[FitItem]) -> list[FitItem]:
        checked: dict[str, str] = {}  # path -> the path to read (itself, or its aligned crop)
        prepared = []
        for item in items:
            values = dict(item.values)
            for column in self.image_columns or tuple(values):
                path = values.get(column)
                if path is None or not is_image(path):
                    continue
                if path not in checked:
                    checked[path] = self._prepare_image(path, f"{item.source}: {column}")
                values[column] = checked[path]
                if checked[path] != path:
                    values.setdefault("photo_sources", {})[column] = path
            prepared.append(dataclasses.replace(item, values=values))
        return prepared

    def _prepare_image(self, path: str, where: str) -> str:
        try:
            image = read_rgb(path)
        except Exception as error:
            raise ManifestError(f"{where}: {error}") from error
        height, width = image.shape[:2]
        aligned_size = height == width == self.image_size
        if self.align and not aligned_size:
            return self._aligned(path, where)
        if self.exact_size and not aligned_size:
            raise ManifestError(
                f"{where}: {path} is {width}x{height}, not an aligned {self.image_size}x{self.image_size} "
                "crop. Align raw photos with fit.align=true (or facelab-align), or give crops of the "
                "generator's size."
            )
        return path

    def _aligned(self, path: str, where: str) -> str:
        from facelab.ops.align import NoFaceFoundError, align_photo  # dlib is loaded only when aligning

        crop_path = self.aligned_dir / f"{file_digest(path)[:24]}-{self.image_size}.png"
        if crop_path.is_file() and crop_path.with_suffix(".json").is_file():
            return str(crop_path)
        try:
            faces = align_photo(path, output_size=self.image_size)
        except NoFaceFoundError as error:
            raise ManifestError(f"{where}: {error}") from error
        face = max(faces, key=lambda f: float(np.ptp(f.quad[:, 0])))  # the largest face
        face.meta = {"source": str(path)}
        save_image(face.image, crop_path)
        atomic_write_bytes(crop_path.with_suffix(".json"), json.dumps(face.to_json(), indent=1).encode())
        return str(crop_path)
