"""Stitch gridsize-1 test patches into an image aligned with the ground-truth crop.

Patch ``(i, j)`` of an object (row-major, ``n_side`` per side, stride ``st``) covers object
pixels ``[i st, i st + N)``. Its centre ``st x st`` block, rows ``i st + b ... i st + b + st - 1``
with border ``b = (N - st) / 2``, tiles the object without gaps or overlap. The mosaic is
therefore the object crop ``[b, b + n_side st)`` on both axes::

    n_side = (S - N) // st + 1        side = n_side * st        start = (N - st) // 2

N=64, S=392, st=10: n_side 33, side 330, start 27 (the reference's ``YY_ground_truth``).
"""

from __future__ import annotations

import math

import numpy as np


def stitch_border(N: int, stride: int) -> int:
    """Pixels dropped on each side of a patch: ``(N - stride) / 2`` (must be whole)."""
    if stride > N or (N - stride) % 2:
        raise ValueError(f"cannot stitch N={N} patches at stride {stride}: the stride must be "
                         f"<= N and N - stride even")
    return (N - stride) // 2


def crop_geometry(size: int, N: int, stride: int) -> tuple[int, int]:
    """``(start, side)`` of the ground-truth crop the mosaic of one object covers."""
    n_side = (size - N) // stride + 1
    return stitch_border(N, stride), n_side * stride


def stitch_patches(patches: np.ndarray, stride: int) -> np.ndarray:
    """Mosaic of the centre ``stride x stride`` of each patch.

    Parameters
    ----------
    patches : ndarray (n_side**2, N, N) or (n_side**2, 1, N, N)
        One object's patches in row-major scan order.
    stride : int
        Scan stride of these patches.

    Returns
    -------
    ndarray (n_side * stride, n_side * stride), dtype of ``patches``
    """
    patches = np.asarray(patches)
    if patches.ndim == 4:
        if patches.shape[1] != 1:
            raise ValueError(f"stitching supports gridsize 1 (C=1), got C={patches.shape[1]}")
        patches = patches[:, 0]
    if patches.ndim != 3 or patches.shape[-1] != patches.shape[-2]:
        raise ValueError(f"patches must be (n, N, N) or (n, 1, N, N), got {patches.shape}")
    n, N = patches.shape[0], patches.shape[-1]
    n_side = math.isqrt(n)
    if n_side * n_side != n:
        raise ValueError(f"{n} patches do not form a square scan of one object")
    b = stitch_border(N, stride)
    centres = patches[:, b:b + stride, b:b + stride].reshape(n_side, n_side, stride, stride)
    # (row, col, y, x) -> (row, y, col, x): tile rows of blocks into image rows.
    return centres.transpose(0, 2, 1, 3).reshape(n_side * stride, n_side * stride)


def truth_crop(obj: np.ndarray, N: int, stride: int) -> np.ndarray:
    """The part of a whole (S, S) object that :func:`stitch_patches` reproduces."""
    start, side = crop_geometry(obj.shape[-1], N, stride)
    return obj[..., start:start + side, start:start + side]
