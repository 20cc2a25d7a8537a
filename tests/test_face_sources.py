"""Face sources (CelebA layout, folders) and the datamodule: splits, preprocessing and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from datamodules.faces import CelebASource, FolderSource, SyntheticFaceSource
from datamodules.inpainting import InpaintingDataModule, ProceduralMaskSource
from facelab.io.images import CorruptImageError


def _fake_celeba(root, n=6, corrupt=()):
    (root / "img_align_celeba").mkdir(parents=True)
    lines = []
    for i in range(1, n + 1):
        name = f"{i:06d}.jpg"
        if i in corrupt:
            (root / "img_align_celeba" / name).write_bytes(b"\xff\xd8 truncated")
        else:
            image = np.full((218, 178, 3), i * 20, np.uint8)
            image[20:198, :, 0] = 255  # the central 178x178 square is red: proves the crop
            Image.fromarray(image).save(root / "img_align_celeba" / name)
        lines.append(f"{name} {(i - 1) % 3}")
    (root / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")


def test_celeba_official_layout_splits_and_crop(tmp_path):
    _fake_celeba(tmp_path)
    source = CelebASource(str(tmp_path), size=32)
    train, val, test = (source.dataset(s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (2, 2, 2)
    item = train[0]
    assert item["image"].shape == (3, 32, 32) and item["meta"]["name"] == "000001.jpg"
    # The central 178x178 square is red (JPEG bleeds a little at its border); without the crop the
    # dark top and bottom bands (red = 20 -> -0.84) would reach the resized image.
    assert item["image"][0].min() > 0.8, "the central 178x178 crop is all red"


@pytest.mark.parametrize("remove", ["img_align_celeba", "list_eval_partition.txt", ""])
def test_celeba_missing_pieces_name_the_path_and_layout(tmp_path, remove):
    root = tmp_path / "celeba"
    if remove:
        _fake_celeba(root)
        target = root / remove
        if target.is_dir():
            for f in target.iterdir():
                f.unlink()
            target.rmdir()
        else:
            target.unlink()
    with pytest.raises(FileNotFoundError, match="list_eval_partition.txt") as error:
        CelebASource(str(root)).dataset("train")
    assert str(root / remove) in str(error.value)


def test_celeba_bad_partition_line(tmp_path):
    _fake_celeba(tmp_path)
    (tmp_path / "list_eval_partition.txt").write_text("000001.jpg 7\n")
    with pytest.raises(ValueError, match="list_eval_partition.txt:1"):
        CelebASource(str(tmp_path)).dataset("train")


def test_corrupt_images_error_or_skip_by_config(tmp_path):
    _fake_celeba(tmp_path, corrupt=(1,))
    with pytest.raises(CorruptImageError, match="000001.jpg"):
        CelebASource(str(tmp_path), size=16).dataset("train")[0]
    skipping = CelebASource(str(tmp_path), size=16, on_corrupt="skip").dataset("train")
    with pytest.warns(UserWarning, match="000001.jpg"):
        item = skipping[0]
    assert item["meta"]["name"] == "000004.jpg", "the next readable image replaces the corrupt one"
    with pytest.raises(ValueError, match="on_corrupt"):
        CelebASource(str(tmp_path), on_corrupt="ignore").dataset("train")


def test_folder_source_seeded_disjoint_split(tmp_path):
    for i in range(20):
        Image.fromarray(skdata.astronaut()[::8, ::8]).save(tmp_path / f"{i:02d}.png")
    source = FolderSource(str(tmp_path), size=16, val_fraction=0.1, test_fraction=0.2, seed=3)
    names = {
        s: [source.dataset(s)[i]["meta"]["name"] for i in range(len(source.dataset(s)))]
        for s in ("train", "val", "test")
    }
    assert [len(names[s]) for s in ("train", "val", "test")] == [14, 2, 4]
    assert len(set(sum(names.values(), []))) == 20, "splits are disjoint and cover every file"
    again = FolderSource(str(tmp_path), size=16, val_fraction=0.1, test_fraction=0.2, seed=3)
    assert [again.dataset("val")[i]["meta"]["name"] for i in range(2)] == names["val"]
    other = FolderSource(str(tmp_path), size=16, val_fraction=0.1, test_fraction=0.2, seed=4)
    assert [other.dataset("test")[i]["meta"]["name"] for i in range(4)] != names["test"]


def test_folder_source_missing_or_empty(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        FolderSource(str(tmp_path / "nowhere")).dataset("train")
    with pytest.raises(FileNotFoundError, match="No images"):
        FolderSource(str(tmp_path)).dataset("train")


def test_datamodule_pairs_faces_with_fixed_eval_masks():
    faces = SyntheticFaceSource(size=32, train_length=8, val_length=4, test_length=4)
    module = InpaintingDataModule(faces, ProceduralMaskSource(size=32), batch_size=4)
    module.setup("fit")
    batch = next(iter(module.val_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["mask"].shape == (4, 1, 32, 32)
    assert set(batch["mask"].unique().tolist()) <= {0.0, 1.0}
    again = InpaintingDataModule(faces, ProceduralMaskSource(size=32), batch_size=4)
    again.setup("fit")
    assert torch.equal(next(iter(again.val_dataloader()))["mask"], batch["mask"]), "val masks fixed by index"


def test_datamodule_wrong_mask_size_names_the_keys():
    faces = SyntheticFaceSource(size=32)
    with pytest.raises(ValueError, match="data.masks.size"):
        InpaintingDataModule(faces, ProceduralMaskSource(size=64))
