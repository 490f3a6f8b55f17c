"""Score predicted test patches of a :class:`~ptychostab.data.simulate.SimulatedData`.

The test split holds ``nimgs_test`` objects of ``n_side_test**2`` patches each, row-major,
concatenated. Image ``k`` is stitched from its own patches and compared with the crop of
``data.test_object[k]`` that the mosaic covers (both in the dataset's normalised units; the
amplitude scale is re-fitted by :func:`~ptychostab.evaluation.metrics.evaluate` anyway).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ptychostab.evaluation.metrics import DEFAULT_TRIM, evaluate, to_numpy
from ptychostab.evaluation.stitch import stitch_patches, truth_crop


def _geometry(data: Any) -> tuple[int, int, int, int]:
    meta = data.meta
    return meta["N"], meta["stride_test"], meta["n_side_test"] ** 2, meta["nimgs_test"]


def stitch_test_image(pred_patches: Any, data: Any, image: int = 0) -> np.ndarray:
    """Mosaic of test image ``image`` from all predicted test patches.

    Parameters
    ----------
    pred_patches : complex (n_test, C, N, N) or (n_test, N, N), numpy or torch
    data : SimulatedData
    image : int
        Index of the test object, 0 <= image < nimgs_test.

    Returns
    -------
    ndarray (side, side), side = n_side_test * stride_test (330 at N=64, S=392)
    """
    N, stride, per_image, nimgs = _geometry(data)
    patches = to_numpy(pred_patches)
    n_test = data.test_truth.shape[0]
    if patches.shape[0] != n_test or patches.shape[-2:] != (N, N):
        raise ValueError(f"pred_patches has shape {patches.shape}; expected ({n_test}, 1, {N}, "
                         f"{N}) (all test patches, scan order)")
    if not 0 <= image < nimgs:
        raise ValueError(f"image={image} out of range: the test split has {nimgs} objects")
    return stitch_patches(patches[image * per_image:(image + 1) * per_image], stride)


def truth_image(data: Any, image: int = 0) -> np.ndarray:
    """Ground-truth crop of test object ``image`` matching :func:`stitch_test_image`."""
    N, stride, _, _ = _geometry(data)
    return truth_crop(data.test_object[image], N, stride)


def evaluate_patches(pred_patches: Any, data: Any, image: int = 0,
                     trim: int = DEFAULT_TRIM) -> dict[str, float]:
    """Stitch test image ``image`` from ``pred_patches`` and :func:`evaluate` it."""
    stitched = stitch_test_image(pred_patches, data, image)
    return evaluate(stitched, truth_image(data, image), trim=trim)
