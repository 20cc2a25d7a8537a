"""Structure guides: HOG cells, Canny edges, none; what stage 1 predicts and stage 2 receives."""

import numpy as np
import pytest
import torch
from skimage.feature import canny

from datamodules.synthetic_faces import render_face
from facelab.io.images import to_tensor
from facelab.ops.color import rgb_to_gray
from facelab.ops.guides import EdgeGuide, HOGGuide, NoGuide, make_guide
from facelab.ops.masks import procedural_mask


def _faces(n=3, size=64):
    return torch.stack([to_tensor(render_face(size, seed=1, index=i).image) for i in range(n)])


def _masks(n=3, size=64):
    return torch.stack([torch.from_numpy(procedural_mask(size, 1, i, (0.1, 0.4)))[None] for i in range(n)])


def test_hog_guide_known_cells_do_not_see_the_hole():
    """What inference computes from the masked image equals the training target outside the hole."""
    guide, images, masks = HOGGuide(), _faces(), _masks()
    masked = images * (1 - masks) + masks  # holes whitened, as the model feeds them
    known = 1 - guide.hole_mask(masks)
    assert torch.allclose(guide.compute(images) * known, guide.compute(masked) * known, atol=1e-6)
    assert guide.hole_mask(masks).mean() > masks.mean(), "a cell touching the hole counts as hole"


def test_hog_guide_shapes_range_and_generator_reduction():
    guide, images = HOGGuide(orientations=9, pixels_per_cell=8), _faces()
    cells = guide.compute(images)
    assert cells.shape == (3, 9, 8, 8) and guide.channels == 9
    assert cells.min() >= 0 and cells.max() <= 1 and cells.max() > 0.1
    upsampled = guide.to_image_size(cells, (64, 64))
    assert upsampled.shape == (3, 9, 64, 64)
    assert torch.allclose(guide.from_generator(upsampled), cells, atol=1e-6), (
        "avg-pool undoes nearest upsampling"
    )
    assert guide.render(cells, (64, 64)).shape == (3, 1, 64, 64)


def test_edge_guide_is_skimage_canny_of_the_gray_image():
    guide, images = EdgeGuide(sigma=2.0), _faces()
    edges = guide.compute(images)
    gray = rgb_to_gray(images.add(1).mul(0.5))[:, 0].double().numpy()
    expected = np.stack([canny(g, sigma=2.0) for g in gray])
    assert edges.shape == (3, 1, 64, 64) and np.array_equal(edges[:, 0].numpy() > 0.5, expected)
    assert expected.any()


def test_no_guide_has_no_channels_and_bad_kinds_fail():
    assert NoGuide().compute(_faces()).shape == (3, 0, 64, 64)
    assert (
        isinstance(make_guide("hog", orientations=6), HOGGuide)
        and make_guide("hog", orientations=6).channels == 6
    )
    with pytest.raises(ValueError, match="model.guide.kind"):
        make_guide("sobel")


def test_gray_and_unit_range_match_skimage():
    from skimage import data
    from skimage.color import rgb2gray

    from facelab.ops.color import to_unit_range

    photo = torch.from_numpy(data.astronaut()[::8, ::8] / 255.0).permute(2, 0, 1)[None]  # [1, 3, 64, 64]
    assert np.allclose(
        rgb_to_gray(photo)[0, 0].numpy(), rgb2gray(data.astronaut()[::8, ::8] / 255.0), atol=1e-12
    )
    assert torch.equal(
        to_unit_range(torch.tensor([-1.5, -1.0, 0.0, 1.0, 1.2])), torch.tensor([0, 0, 0.5, 1, 1])
    )
