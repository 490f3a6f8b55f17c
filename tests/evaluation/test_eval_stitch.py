"""Stitching: geometry, exact reproduction of the truth crop, row-major order."""

import numpy as np
import pytest

from ptychostab.data.simulate import extract_patches
from ptychostab.evaluation.reconstruction import stitch_test_image, truth_image
from ptychostab.evaluation.stitch import crop_geometry, stitch_patches, truth_crop


@pytest.mark.parametrize("size, N, stride, start, side", [
    (392, 64, 10, 27, 330),   # the reference's YY_ground_truth
    (392, 128, 10, 59, 270),
    (96, 32, 10, 11, 70),
])
def test_crop_geometry(size, N, stride, start, side):
    assert crop_geometry(size, N, stride) == (start, side)


def test_stitching_ground_truth_patches_reproduces_the_crop_exactly(tiny_data):
    for image in range(2):
        stitched = stitch_test_image(tiny_data.test_truth, tiny_data, image)
        truth = truth_image(tiny_data, image)
        assert stitched.shape == truth.shape == (70, 70)
        assert stitched.dtype == np.complex64
        assert np.array_equal(stitched, truth)
    assert not np.array_equal(truth_image(tiny_data, 0), truth_image(tiny_data, 1))


@pytest.mark.parametrize("size, N, stride", [(40, 16, 4), (57, 16, 6), (80, 8, 2)])
def test_stitch_inverts_patch_extraction_for_any_geometry(size, N, stride):
    rng = np.random.default_rng(0)
    obj = rng.normal(size=(1, size, size)) + 1j * rng.normal(size=(1, size, size))
    patches = extract_patches(obj, N, stride)
    assert np.array_equal(stitch_patches(patches, stride), truth_crop(obj[0], N, stride))
    assert np.array_equal(stitch_patches(patches[:, None], stride), truth_crop(obj[0], N, stride))


def test_patches_are_tiled_row_major():
    n_side, N, stride = 3, 6, 2
    patches = np.repeat(np.arange(n_side * n_side, dtype=float), N * N).reshape(-1, N, N)
    mosaic = stitch_patches(patches, stride)
    blocks = mosaic[::stride, ::stride]
    np.testing.assert_array_equal(blocks, np.arange(9).reshape(3, 3))


def test_bad_patch_sets_are_refused():
    with pytest.raises(ValueError, match="square scan"):
        stitch_patches(np.zeros((8, 16, 16)), 10)
    with pytest.raises(ValueError, match="gridsize 1"):
        stitch_patches(np.zeros((9, 4, 16, 16)), 10)
    with pytest.raises(ValueError, match="N - stride even"):
        stitch_patches(np.zeros((9, 16, 16)), 5)
