"""Simulation: counts, agreement with a direct numpy computation, consistency with the loss,
Poisson statistics, seeded determinism."""

import numpy as np
import pytest
import torch

from ptychostab.data.simulate import diffract, simulate
from ptychostab.physics.forward import predict_amplitude
from ptychostab.physics.losses import LOSSES
from ptychostab.physics.objects import grid_lines_objects
from ptychostab.physics.probe import make_probe


def _direct_numpy(spec):
    """The recipe written out with loops and numpy FFTs, independent of simulate()."""
    N = spec.N
    probe = make_probe(spec.probe, N).astype(np.complex128)
    out = {}
    for split, nimgs, seed, stride in (("train", spec.nimgs_train, spec.seed_train, 4),
                                       ("test", spec.nimgs_test, spec.seed_test, 10)):
        obj = grid_lines_objects(np.random.default_rng(seed), nimgs, spec.size, spec.n_lines,
                                 spec.set_phi)
        patches = [obj[k, r:r + N, c:c + N] for k in range(nimgs)
                   for r in range(0, spec.size - N + 1, stride)
                   for c in range(0, spec.size - N + 1, stride)]
        norm = np.mean([np.abs(p).max() for p in patches])
        out[split] = np.stack(patches) / norm
    s = np.sqrt(spec.nphotons / np.mean([np.sum(np.abs(p * probe) ** 2) for p in out["train"]]))
    amps = {}
    for split, patches in out.items():
        psi = s * patches * probe
        amp = np.sqrt(np.fft.fftshift(np.abs(np.fft.fft2(psi)) ** 2, axes=(-2, -1)) / N**2)
        amps[split] = amp / s
    return amps, s, out


def test_counts_shapes_and_dtypes(micro):
    spec = micro(nimgs_train=2, nimgs_test=2)
    d = simulate(spec)
    n_train, n_test = 2 * ((40 - 16) // 4 + 1) ** 2, 2 * ((40 - 16) // 10 + 1) ** 2
    assert d.train_amp.shape == (n_train, 1, 16, 16) and d.train_amp.dtype == np.float32
    assert d.test_amp.shape == (n_test, 1, 16, 16) and d.test_amp.dtype == np.float32
    assert d.test_truth.shape == (n_test, 1, 16, 16) and d.test_truth.dtype == np.complex64
    assert d.test_object.shape == (2, 40, 40) and d.test_object.dtype == np.complex64
    assert d.probe.shape == (16, 16) and d.probe.dtype == np.complex64
    assert (d.meta["n_train"], d.meta["n_test"]) == (n_train, n_test)
    assert d.meta["key"] and d.meta["simulator_version"] and d.meta["spec"]["N"] == 16


def test_noise_free_simulation_equals_direct_numpy_computation(micro):
    spec = micro(nimgs_train=2, nimgs_test=1)
    d = simulate(spec, noise=False)
    amps, s, patches = _direct_numpy(spec)
    assert d.meta["intensity_scale"] == pytest.approx(s, rel=1e-5)
    np.testing.assert_allclose(d.train_amp[:, 0], amps["train"], rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(d.test_amp[:, 0], amps["test"], rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(d.test_truth[:, 0], patches["test"], rtol=1e-6, atol=1e-7)


def test_perfect_reconstruction_of_the_stored_patches_gives_zero_loss(micro):
    # The loss calls predict_amplitude(pred, data.probe): the ground truth must fit exactly.
    d = simulate(micro(), noise=False)
    pred = predict_amplitude(torch.from_numpy(d.test_truth), torch.from_numpy(d.probe))
    obs = torch.from_numpy(d.test_amp)
    torch.testing.assert_close(pred, obs, rtol=1e-6, atol=1e-7)
    assert float(LOSSES["mae"](pred, obs)) < 1e-7


def test_mean_photons_per_pattern_is_nphotons(micro):
    d = simulate(micro(nphotons=1e4))
    s = d.meta["intensity_scale"]
    counts = (d.train_amp.astype(np.float64) * s) ** 2
    np.testing.assert_allclose(counts, np.rint(counts), atol=1e-2)  # integer counts, / s
    total = counts.sum(axis=(1, 2, 3))
    # mean of Poisson totals: standard error sqrt(1e4 / n) ~ 14 counts
    assert total.mean() == pytest.approx(1e4, abs=5 * np.sqrt(1e4 / len(total)))


def test_poisson_mean_and_variance_at_low_counts():
    rng = np.random.default_rng(0)
    N, n_side = 8, 60  # 3600 draws of one pattern
    obj = (rng.uniform(0.2, 1.0, (N, N)) * np.exp(1j * rng.uniform(-1, 1, (N, N))))
    patches = np.broadcast_to(obj.astype(np.complex64), (1, n_side, n_side, N, N))
    probe = np.ones((N, N), np.complex64)
    clean = diffract(patches, probe, 1.0, None)[0, 0].astype(np.float64)
    scale = np.sqrt(3.0 / np.mean(clean**2))  # ~3 counts per pixel on average
    noisy = diffract(patches, probe, scale, np.random.default_rng(1))[:, 0].astype(np.float64)
    counts = (noisy * scale) ** 2
    lam = (clean * scale) ** 2
    n = counts.shape[0]
    mean, var = counts.mean(axis=0), counts.var(axis=0, ddof=1)
    z_mean = (mean - lam) / np.sqrt(lam / n)
    assert np.abs(z_mean).max() < 5
    ok = lam > 0.5
    assert np.mean(var[ok] / lam[ok]) == pytest.approx(1.0, abs=0.05)  # Poisson: var == mean
    assert not np.allclose(var[ok], 0)


def test_same_seeds_same_bytes_other_seeds_other_bytes(micro):
    base = simulate(micro())
    again = simulate(micro())
    for name in ("train_amp", "test_amp", "probe", "test_truth", "test_object"):
        assert getattr(base, name).tobytes() == getattr(again, name).tobytes(), name

    noise = simulate(micro(noise_seed=4))
    assert not np.array_equal(noise.train_amp, base.train_amp)
    assert not np.array_equal(noise.test_amp, base.test_amp)
    assert np.array_equal(noise.test_object, base.test_object)  # objects do not move

    train = simulate(micro(seed_train=11))
    assert not np.array_equal(train.train_amp, base.train_amp)
    assert np.array_equal(train.test_object, base.test_object)

    test = simulate(micro(seed_test=12))
    assert not np.array_equal(test.test_object, base.test_object)


def test_global_rng_state_does_not_matter(micro):
    np.random.seed(1)
    torch.manual_seed(1)
    a = simulate(micro())
    np.random.seed(2)
    torch.manual_seed(2)
    b = simulate(micro())
    assert a.train_amp.tobytes() == b.train_amp.tobytes()


def test_set_phi_false_gives_zero_phase_and_true_a_real_phase(micro):
    flat = simulate(micro(set_phi=False), noise=False)
    assert np.all(np.angle(flat.test_object) == 0)
    phased = simulate(micro(set_phi=True), noise=False)
    assert np.ptp(np.angle(phased.test_object)) > 0.5


def test_bad_spec_fails_before_work(micro):
    with pytest.raises(ValueError, match="data.gridsize"):
        simulate(micro(gridsize=2))
