"""Probes: normalisation, shape of the synthetic probes, NPZ loading and its errors."""

import numpy as np
import pytest

from ptychostab.data.spec import DataConfig, ProbeConfig
from ptychostab.physics.probe import (
    defocused_disk,
    ideal_disk,
    load_probe_guess,
    make_probe,
    normalisation_disk,
    simulation_probe,
    smooth_complex,
)


def test_normalisation_disk_matches_reference_radius():
    disk = normalisation_disk(64)
    assert disk.sum() == pytest.approx(np.pi * 16**2, rel=0.03)
    assert disk[32, 32] and disk[31, 31] and not disk[0, 0]
    np.testing.assert_array_equal(disk, disk[::-1, ::-1])  # centred at (N-1)/2


@pytest.mark.parametrize("kind", ["defocused_disk", "ideal_disk"])
@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_simulation_normalisation(kind, scale):
    p = make_probe(ProbeConfig(kind=kind, probe_scale=scale), 32)
    assert p.dtype == np.complex64 and p.shape == (32, 32)
    assert np.mean(np.abs(p * normalisation_disk(32))) == pytest.approx(1 / scale, rel=1e-5)


def test_defocused_disk_is_a_centred_soft_aperture_with_quadratic_phase():
    N, radius, phase_edge = 64, 0.25, 2.0
    p = defocused_disk(N, radius=radius, edge_width=1.5, defocus_phase=phase_edge)
    amp = np.abs(p)
    np.testing.assert_allclose(p, p[::-1, ::-1], atol=1e-12)  # symmetric about (N-1)/2
    assert amp[N // 2, N // 2] == pytest.approx(1.0, abs=1e-6)
    assert amp[0, 0] < 1e-6
    c = (N - 1) / 2
    y, x = np.mgrid[0:N, 0:N]
    r = np.hypot(y - c, x - c)
    inside = r < radius * N - 3
    np.testing.assert_allclose(np.angle(p)[inside], phase_edge * (r[inside] / (radius * N)) ** 2,
                               atol=1e-9)
    hard = defocused_disk(N, radius=radius, edge_width=0.0)
    assert set(np.unique(np.abs(hard).round(12))) == {0.0, 1.0}


def test_ideal_disk_is_real_with_reference_radius():
    p = ideal_disk(64)
    assert np.all(p.imag == 0)
    area = np.sum(np.abs(p) > 0.5)
    assert np.sqrt(area / np.pi) == pytest.approx(10.9, rel=0.1)


def test_smooth_complex_keeps_a_wrapped_phase_ramp():
    # Smoothing re/im would blur across the 2 pi jumps and dent the amplitude; unwrapping won't.
    y, x = np.mgrid[0:32, 0:32]
    p = np.exp(1j * 0.9 * x)
    s = smooth_complex(p, 1.0)
    interior = (slice(4, -4), slice(4, -4))
    np.testing.assert_allclose(np.abs(s)[interior], 1.0, atol=1e-6)
    np.testing.assert_allclose(np.exp(1j * np.angle(s))[interior], p[interior], atol=1e-6)
    np.testing.assert_array_equal(smooth_complex(p, 0.0), p)


def test_simulation_probe_refuses_a_probe_dark_in_the_disk():
    p = np.zeros((16, 16), complex)
    p[0, 0] = 1
    with pytest.raises(ValueError, match="normalisation disk"):
        simulation_probe(p, 4.0)


def _save(tmp_path, **arrays):
    path = tmp_path / "probe.npz"
    np.savez(path, **arrays)
    return str(path)


def test_npz_probe_is_loaded_smoothed_and_normalised(tmp_path):
    guess = defocused_disk(16, 0.3, 1.0, 1.0)
    path = _save(tmp_path, probeGuess=guess, objectGuess=np.ones((5, 5)))
    np.testing.assert_allclose(load_probe_guess(path, 16), guess)
    got = make_probe(ProbeConfig(kind="npz", path=path, smoothing_sigma=0.0), 16)
    np.testing.assert_allclose(got, simulation_probe(guess, 4.0), rtol=1e-6)
    smoothed = make_probe(ProbeConfig(kind="npz", path=path, smoothing_sigma=0.5), 16)
    assert not np.allclose(smoothed, got)


@pytest.mark.parametrize("arrays, message", [
    ({"objectGuess": np.ones((16, 16))}, "no key 'probeGuess'"),
    ({"probeGuess": np.ones((8, 8), complex)}, r"shape \(8, 8\); need \(16, 16\)"),
    ({"probeGuess": np.ones((2, 16, 16), complex)}, "shape"),
    ({"probeGuess": np.array(["a"] * 4)}, "cannot be read as a complex probe"),
    ({"probeGuess": np.full((16, 16), np.nan)}, "NaN"),
    ({"probeGuess": np.zeros((16, 16))}, "all zeros"),
])
def test_npz_probe_errors_name_the_field(tmp_path, arrays, message):
    path = _save(tmp_path, **arrays)
    with pytest.raises(ValueError, match=message) as err:
        load_probe_guess(path, 16)
    assert "data.probe.path" in str(err.value)
    # ... and DataConfig.validate() reports it before any work
    spec = DataConfig(N=16, size=32, probe=ProbeConfig(kind="npz", path=path))
    with pytest.raises(ValueError, match="data.probe.path"):
        spec.validate()


def test_npz_probe_missing_file_and_not_an_npz(tmp_path):
    with pytest.raises(ValueError, match="file not found"):
        load_probe_guess(tmp_path / "absent.npz", 16)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not an NPZ file") as err:
        load_probe_guess(junk, 16)
    assert "data.probe.path" in str(err.value) and "numpy.savez" in str(err.value)
    text = tmp_path / "probe.txt"  # np.load would try to unpickle it ("pickled data")
    text.write_text("probeGuess = [[1, 0], [0, 1]]\n")
    with pytest.raises(ValueError, match="not an NPZ file") as err:
        load_probe_guess(text, 16)
    assert "pickle" not in str(err.value)
    npy = tmp_path / "probe.npy"
    np.save(npy, np.ones((16, 16), complex))
    with pytest.raises(ValueError, match=r"is a \.npy array, not an NPZ file"):
        load_probe_guess(npy, 16)
    damaged = tmp_path / "damaged.npz"  # a zip, but not numpy's
    import zipfile

    with zipfile.ZipFile(damaged, "w") as zf:
        zf.writestr("probeGuess.npy", b"garbage")
    with pytest.raises(ValueError, match="not a readable NPZ"):
        load_probe_guess(damaged, 16)
