"""A content-keyed cache of per-image stage outputs (e.g. Barbershop's W+ and FS embeddings).

An entry is keyed on the image file's bytes and an `identity` string that names everything else the
result depends on (the generator file's hash, the stage's settings, the earlier stages' settings), so a
transfer that reuses an image, in the same job or a later one, finds its embedding instead of fitting it
again, and a changed setting never returns a stale result.

Layout: `<root>/<key[:2]>/<key>/<stage>/<name>.pt`, `curves.csv`, and `entry.json` written last with the
SHA-256 of every file. An entry whose index is missing, unreadable or does not match its files (a kill
mid-write, a disk error, a hand edit) is reported with a warning and recomputed, never trusted.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path

import torch

from facelab.io.files import atomic_write_bytes

log = logging.getLogger("facelab")
INDEX = "entry.json"


def file_digest(path: str | Path, chunk_bytes: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes, read in chunks (a 300 MB generator is hashed in about a second)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


class StageCache:
    """Per-image stage outputs under `root`, keyed on content (`key`) and read back verified (`read`)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        self._digests: dict[tuple, str] = {}  # (path, size, mtime) -> SHA-256: each image is read once

    def key(self, image_path: str | Path, identity: str) -> str:
        info = Path(image_path).stat()
        signature = (str(image_path), info.st_size, info.st_mtime_ns)
        if signature not in self._digests:
            self._digests[signature] = file_digest(image_path)
        return hashlib.sha256(f"{self._digests[signature]}\n{identity}".encode()).hexdigest()[:40]

    def entry_dir(self, key: str, stage: str) -> Path:
        return self.root / key[:2] / key / stage

    def read(self, key: str, stage: str) -> dict[str, torch.Tensor] | None:
        """The entry's tensors, or None if absent; a damaged entry is logged and treated as absent."""
        folder = self.entry_dir(key, stage)
        index_path = folder / INDEX
        if not index_path.is_file():
            return None
        try:
            index = json.loads(index_path.read_text())
            tensors = {}
            for name, expected in index["files"].items():
                data = (folder / name).read_bytes()
                if hashlib.sha256(data).hexdigest() != expected:
                    raise ValueError(f"{name} does not match its recorded SHA-256")
                if name.endswith(".pt"):
                    tensors[name[:-3]] = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            return tensors
        except Exception as error:  # anything wrong with an entry means: fit it again
            log.warning("Cache entry %s is damaged (%s); it is recomputed.", folder, error)
            return None

    def read_curves(self, key: str, stage: str) -> bytes | None:
        path = self.entry_dir(key, stage) / "curves.csv"
        return path.read_bytes() if path.is_file() else None

    def write(self, key: str, stage: str, tensors: dict[str, torch.Tensor], curves_csv: bytes = b"") -> None:
        """Every file atomically, then the index naming their hashes (so a half-written entry has none)."""
        folder, hashes = self.entry_dir(key, stage), {}
        for name, tensor in tensors.items():
            buffer = io.BytesIO()
            torch.save(tensor.detach().cpu().clone(), buffer)
            atomic_write_bytes(folder / f"{name}.pt", buffer.getvalue())
            hashes[f"{name}.pt"] = hashlib.sha256(buffer.getvalue()).hexdigest()
        if curves_csv:
            atomic_write_bytes(folder / "curves.csv", curves_csv)
            hashes["curves.csv"] = hashlib.sha256(curves_csv).hexdigest()
        atomic_write_bytes(folder / INDEX, json.dumps({"files": hashes}, indent=1).encode())
