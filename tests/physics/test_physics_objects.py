"""Grid-lines objects: seeded randomness, blur weights, set_phi range and sign."""

import numpy as np
import pytest

from ptychostab.physics.objects import (
    centre_crop,
    dummy_phase,
    grid_lines_amplitudes,
    grid_lines_objects,
    line_map,
    lines_amplitude,
)


def test_same_seed_same_object_other_seed_other_object():
    a = grid_lines_objects(np.random.default_rng(7), 2, 48, 20, set_phi=True)
    b = grid_lines_objects(np.random.default_rng(7), 2, 48, 20, set_phi=True)
    c = grid_lines_objects(np.random.default_rng(8), 2, 48, 20, set_phi=True)
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, c)
    assert not np.array_equal(a[0], a[1])  # images of a split are independent draws


def test_global_numpy_rng_is_not_used():
    np.random.seed(0)
    a = grid_lines_amplitudes(np.random.default_rng(3), 1, 32, 10)
    np.random.seed(12345)
    b = grid_lines_amplitudes(np.random.default_rng(3), 1, 32, 10)
    assert np.array_equal(a, b)


def test_line_map_is_binary_with_lines_of_the_requested_count():
    lines = line_map(np.random.default_rng(0), 64, 5)
    assert set(np.unique(lines)) <= {0.0, 1.0}
    assert 5 <= lines.sum() <= 5 * 64 * 2


def test_blur_weights_sum_to_eight():
    # G1 + 2 G5 + 5 G10 of an isolated pixel far from the edges carries 1 + 2 + 5 = 8.
    delta = np.zeros((161, 161))
    delta[80, 80] = 1.0
    amp = lines_amplitude(delta)
    assert amp.sum() == pytest.approx(8.0, rel=1e-6)
    assert np.unravel_index(np.argmax(amp), amp.shape) == (80, 80)


def test_centre_crop_takes_the_middle():
    image = np.arange(100).reshape(10, 10)
    np.testing.assert_array_equal(centre_crop(image, 4), image[3:7, 3:7])


def test_shapes_and_nonnegative_amplitude():
    obj = grid_lines_objects(np.random.default_rng(1), 3, 40, 15, set_phi=False)
    assert obj.shape == (3, 40, 40) and obj.dtype == np.complex128
    assert np.all(np.abs(obj) >= 0) and np.abs(obj).max() > 0
    assert np.all(np.angle(obj) == 0)  # set_phi false: zero phase


def test_set_phi_range_and_sign():
    amp = grid_lines_amplitudes(np.random.default_rng(2), 2, 64, 30)
    phi = dummy_phase(amp)
    assert np.all(phi > -np.pi) and np.all(phi < np.pi)
    half_max = amp.max() / 2  # over the whole split stack, not per image
    np.testing.assert_array_equal(phi > 0, amp > half_max)
    assert phi.min() < -0.5 and phi.max() > 0  # a real phase signal, both signs present
    obj = grid_lines_objects(np.random.default_rng(2), 2, 64, 30, set_phi=True)
    np.testing.assert_allclose(np.angle(obj), phi, atol=1e-12)
    np.testing.assert_allclose(np.abs(obj), amp, rtol=1e-12)
