"""What shapes a simulated dataset: :class:`DataConfig` and :class:`ProbeConfig`.

These dataclasses mirror the ``data`` config group (docs/contracts.md). Every field except
``name`` changes the simulated bytes, so every field except ``name`` enters the cache key
(:func:`ptychostab.data.cache.cache_key`).

:meth:`DataConfig.validate` is called before any compute. It raises :class:`ValueError` whose
message names the field, the value received and what is allowed, so a bad YAML or command-line
override fails in a second instead of after a half-built dataset.

This module is pure Python + numpy (no torch, no Hydra): the config schema may import it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

PROBE_KINDS = ("defocused_disk", "ideal_disk", "npz")
SUPPORTED_GRIDSIZES = (1,)
MIN_N = 8  # the normalisation disk has radius N//4; below 8 px it is a handful of pixels


@dataclass
class ProbeConfig:
    """Illumination used to simulate the data (and, unchanged, inside the training loss).

    Attributes
    ----------
    kind : {"defocused_disk", "ideal_disk", "npz"}
        ``defocused_disk``: soft-edged circular aperture with a quadratic (defocus) phase.
        ``ideal_disk``: the reference's real, Gaussian-smoothed disk.
        ``npz``: ``probeGuess`` loaded from ``path``.
    path : str or None
        NPZ file holding a complex ``probeGuess`` of shape (N, N); required for ``kind="npz"``.
    radius : float
        Aperture radius as a fraction of N (``defocused_disk``), in (0, 0.5].
    edge_width : float
        Width in px of the soft aperture edge (``defocused_disk``); 0 gives a hard edge.
    defocus_phase : float
        Phase in rad of the quadratic phase at the aperture edge (``defocused_disk``).
    smoothing_sigma : float
        Gaussian sigma in px applied separately to |P| and the unwrapped phase (``npz``),
        as the reference's ``smooth_complex``; 0 disables smoothing.
    probe_scale : float
        Simulation normalisation ``P_sim = P / (probe_scale * mean|D * P|)``, D the centred disk
        of radius N//4.
    """

    kind: str = "defocused_disk"
    path: Optional[str] = None
    radius: float = 0.25
    edge_width: float = 1.5
    defocus_phase: float = 2.0
    smoothing_sigma: float = 0.5
    probe_scale: float = 4.0


@dataclass
class DataConfig:
    """Grid-lines dataset specification (gridsize 1).

    Attributes
    ----------
    name : str
        Label only (preset name); it does not enter the cache key.
    N : int
        Patch side in px, a power of two >= 8.
    gridsize : int
        Patches per side of a group; only 1 is supported.
    size : int
        Object side S in px (the lines are drawn on a 2S canvas, the centre S x S is kept).
    n_lines : int
        Number of random one-pixel lines on the 2S canvas.
    nimgs_train, nimgs_test : int
        Independent random objects per split.
    outer_offset_train, outer_offset_test : int
        Twice the scan stride: the stride is ``outer_offset // 2`` px.
    nphotons : float
        Mean photons per diffraction pattern (sets the intensity scale s on the train split).
    set_phi : bool
        Phase ``pi * tanh((A - max A / 2) / (3 mean A))`` when true, zero phase otherwise.
    seed_train, seed_test : int
        Seeds of the numpy Generators that draw the train / test objects.
    noise_seed : int
        Seed of the numpy Generators that draw the Poisson noise.
    probe : ProbeConfig
    """

    name: str = "custom"
    N: int = 64
    gridsize: int = 1
    size: int = 392
    n_lines: int = 400
    nimgs_train: int = 2
    nimgs_test: int = 2
    outer_offset_train: int = 8
    outer_offset_test: int = 20
    nphotons: float = 1e9
    set_phi: bool = True
    seed_train: int = 1
    seed_test: int = 2
    noise_seed: int = 3
    probe: ProbeConfig = field(default_factory=ProbeConfig)

    # --- derived geometry -------------------------------------------------------------------
    @property
    def stride_train(self) -> int:
        return self.outer_offset_train // 2

    @property
    def stride_test(self) -> int:
        return self.outer_offset_test // 2

    @property
    def n_side_train(self) -> int:
        """Patches per object side in the train split (valid windows, row-major)."""
        return n_side(self.size, self.N, self.stride_train)

    @property
    def n_side_test(self) -> int:
        return n_side(self.size, self.N, self.stride_test)

    @property
    def n_train(self) -> int:
        """Total train patterns: ``nimgs_train * n_side_train**2``."""
        return self.nimgs_train * self.n_side_train**2

    @property
    def n_test(self) -> int:
        return self.nimgs_test * self.n_side_test**2

    @property
    def channels(self) -> int:
        """C = gridsize**2 patches per sample."""
        return self.gridsize**2

    # --- conversion -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain nested dict (JSON-ready)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_any(cls, spec: Any) -> DataConfig:
        """Accept a :class:`DataConfig`, any dataclass with the same fields, or a mapping
        (plain dict, OmegaConf ``DictConfig``). Unknown keys raise ``ValueError``; ints given
        for float fields are converted so that ``nphotons: 1000000000`` and ``1e9`` agree.
        """
        if isinstance(spec, cls):
            return spec
        if dataclasses.is_dataclass(spec) and not isinstance(spec, type):
            spec = dataclasses.asdict(spec)
        if not isinstance(spec, Mapping):
            raise TypeError(f"data spec must be a DataConfig or a mapping, "
                            f"got {type(spec).__name__}")
        values = dict(spec)
        probe = values.pop("probe", None)
        if probe is None:
            probe_cfg = ProbeConfig()
        elif isinstance(probe, ProbeConfig):
            probe_cfg = probe
        else:
            if dataclasses.is_dataclass(probe) and not isinstance(probe, type):
                probe = dataclasses.asdict(probe)
            if not isinstance(probe, Mapping):
                raise ValueError(f"data.probe must be a mapping, got {type(probe).__name__}")
            probe_cfg = ProbeConfig(**_known(ProbeConfig, dict(probe), "data.probe"))
        out = cls(**_known(cls, values, "data"), probe=probe_cfg)
        _floats_to_float(out)
        _floats_to_float(out.probe)
        return out

    # --- validation -------------------------------------------------------------------------
    def validate(self) -> DataConfig:
        """Check every field before any work; return ``self``.

        Raises
        ------
        ValueError
            Naming the field (``data.<field>``), the value received and what is allowed.
        """
        _int_field(self, "N", low=MIN_N)
        if self.N & (self.N - 1):
            raise ValueError(f"data.N must be a power of two >= {MIN_N} (e.g. 32, 64, 128), "
                             f"got {self.N}")
        _int_field(self, "gridsize", low=1)
        if self.gridsize not in SUPPORTED_GRIDSIZES:
            raise ValueError(f"data.gridsize={self.gridsize} is not supported yet; allowed: "
                             f"{list(SUPPORTED_GRIDSIZES)}")
        _int_field(self, "size", low=1)
        if self.size < self.N:
            raise ValueError(f"data.size={self.size} is smaller than data.N={self.N}: no N x N "
                             f"patch fits in the object; size must be >= N")
        _int_field(self, "n_lines", low=1)
        _int_field(self, "nimgs_train", low=1)
        _int_field(self, "nimgs_test", low=1)
        _int_field(self, "outer_offset_train", low=2)
        _int_field(self, "outer_offset_test", low=2)
        st = self.stride_test
        # The stitcher keeps the centre (stride x stride) of each test patch, which needs a
        # whole-pixel border (N - stride) / 2 on both sides.
        if st > self.N or (self.N - st) % 2:
            raise ValueError(
                f"data.outer_offset_test={self.outer_offset_test} gives test stride {st}; the "
                f"test stride (outer_offset_test // 2) must be even and <= N={self.N} so that "
                f"the centre stride x stride of each patch tiles the object (e.g. 20 -> 10)")
        _real_field(self, "nphotons", positive=True)
        if not isinstance(self.set_phi, bool):
            raise ValueError(f"data.set_phi must be true or false, got {self.set_phi!r}")
        for name in ("seed_train", "seed_test", "noise_seed"):
            _int_field(self, name, low=0)
        if not isinstance(self.name, str):
            raise ValueError(f"data.name must be a string, got {self.name!r}")
        _validate_probe(self.probe, self.N)
        return self


def n_side(size: int, N: int, stride: int) -> int:
    """Valid N x N windows per side of a ``size`` object at ``stride``: (size-N)//stride + 1."""
    return (size - N) // stride + 1 if size >= N else 0


# --- helpers ---------------------------------------------------------------------------------
def _known(cls: type, values: dict, where: str) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {where} field(s) {unknown}; allowed: {sorted(names)}")
    return values


def _floats_to_float(obj: Any) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.type in ("float", float) and isinstance(value, int) and not isinstance(value, bool):
            setattr(obj, f.name, float(value))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_field(obj: Any, name: str, *, low: int, where: str = "data") -> None:
    value = getattr(obj, name)
    if not _is_int(value) or value < low:
        raise ValueError(f"{where}.{name} must be an integer >= {low}, got {value!r}")


def _real_field(obj: Any, name: str, *, positive: bool = False, nonneg: bool = False,
                where: str = "data", high: float | None = None) -> None:
    value = getattr(obj, name)
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))
    if ok and positive:
        ok = value > 0
    if ok and nonneg:
        ok = value >= 0
    if ok and high is not None:
        ok = value <= high
    if not ok:
        need = "a finite number"
        if positive:
            need += " > 0"
        elif nonneg:
            need += " >= 0"
        if high is not None:
            need += f" and <= {high}"
        raise ValueError(f"{where}.{name} must be {need}, got {value!r}")


def _validate_probe(probe: ProbeConfig, N: int) -> None:
    if not isinstance(probe, ProbeConfig):
        raise ValueError(f"data.probe must be a ProbeConfig, got {type(probe).__name__}")
    if probe.kind not in PROBE_KINDS:
        raise ValueError(f"data.probe.kind={probe.kind!r} is unknown; "
                         f"allowed: {list(PROBE_KINDS)}")
    w = "data.probe"
    _real_field(probe, "radius", positive=True, high=0.5, where=w)
    _real_field(probe, "edge_width", nonneg=True, where=w)
    _real_field(probe, "defocus_phase", where=w)
    _real_field(probe, "smoothing_sigma", nonneg=True, where=w)
    _real_field(probe, "probe_scale", positive=True, where=w)
    if probe.kind == "npz":
        if not probe.path:
            raise ValueError("data.probe.path is required when data.probe.kind='npz' "
                             "(an NPZ file holding a complex `probeGuess` of shape (N, N))")
        if not os.path.isfile(os.path.expanduser(str(probe.path))):
            raise ValueError(f"data.probe.path={probe.path!r}: file not found "
                             f"(data.probe.kind='npz' needs an existing NPZ with `probeGuess`)")
        # Loading the probe is cheap; doing it here reports a bad key or shape before any work.
        from ptychostab.physics.probe import load_probe_guess

        load_probe_guess(probe.path, N)
