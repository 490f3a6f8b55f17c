"""Gradient clipping: global norm, value, and adaptive gradient clipping (AGC).

Every function here works on the device without host synchronisation: norms stay tensors,
"clip or not" is a ``torch.where``/``clamp``, never a Python ``if`` on a tensor value.

AGC (Brock et al. 2021, "High-Performance Large-Scale Image Recognition Without
Normalization", Algorithm 2), unit-wise::

    for every unit i of a weight W with gradient G:
        w_i = max(||W_i||, eps)              (norm over all axes but the unit axis)
        if ||G_i|| > lambda * w_i:  G_i <- G_i * lambda * w_i / ||G_i||

A *unit* is one output channel. Where the output axis sits depends on the layer, so it is
looked up per parameter (:func:`unit_axis`):

==============================================  ==========================================
module                                          unit axis of its >= 2-D parameters
==============================================  ==========================================
``Linear``, ``Conv1d/2d/3d``, ``Bilinear``,     0   (weight is ``(out, in, ...)``)
``Embedding``
``ConvTranspose1d/2d/3d``                       1   (weight is ``(in, out, ...)``)
``ptychostab.models.SpectralConv2d``            1   (weight is ``(in, out, [2,] mh, mw)``)
module with an ``agc_unit_axis`` attribute      that int, or ``{param_name: axis}``
anything else                                   0   (the documented default rule; the
                                                    clipper reports which parameters used it)
==============================================  ==========================================

Vectors and scalars (biases, norm affines, LayerScale gains) are one unit each. Complex
tensors are normed by modulus (``|z|^2 = re^2 + im^2``). ``unitwise=False`` treats every tensor
as a single unit: the reference implementation's (tensor-wise) behaviour, for reproduction.

Implementation: all selected tensors are flattened into one vector of squared entries and
summed per unit with one ``index_add_`` (weights and gradients each); per-unit scales are
gathered back and applied with one ``_foreach_mul_``. A dozen kernels per step, whatever the
number of parameters.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "CLIP_ALGORITHMS",
    "AGC_DEFAULT_AXIS",
    "GradientClipper",
    "adaptive_gradient_clip_",
    "clip_grad_value_complex_",
    "global_grad_norm",
    "register_unit_axis",
    "unit_axis",
]

CLIP_ALGORITHMS = ("none", "norm", "value", "agc")
AGC_DEFAULT_AXIS = 0  # unknown >= 2-D parameter types: output channel assumed first

_UNIT_AXIS_BY_TYPE: dict[type, int] = {
    nn.Linear: 0,
    nn.Bilinear: 0,
    nn.Embedding: 0,
    nn.Conv1d: 0,
    nn.Conv2d: 0,
    nn.Conv3d: 0,
    nn.ConvTranspose1d: 1,
    nn.ConvTranspose2d: 1,
    nn.ConvTranspose3d: 1,
}
_spectral_registered = False


def register_unit_axis(module_type: type, axis: int) -> None:
    """Declare the output-channel axis of ``module_type``'s >= 2-D parameters."""
    _UNIT_AXIS_BY_TYPE[module_type] = int(axis)


def _register_spectral() -> None:
    # Lazy: models may not import (while it is being built) and clipping must still work.
    global _spectral_registered
    if _spectral_registered:
        return
    _spectral_registered = True
    try:
        from ptychostab.models.layers.spectral import SpectralConv2d
    except ImportError:
        return
    _UNIT_AXIS_BY_TYPE.setdefault(SpectralConv2d, 1)  # weight (in, out, [2,] mh, mw)


def unit_axis(module: nn.Module, param_name: str, param: Tensor) -> tuple[int | None, bool]:
    """Output-channel axis of ``module``'s parameter ``param_name``.

    Returns
    -------
    axis : int or None
        None for vectors and scalars (the whole tensor is one unit).
    defaulted : bool
        True when no rule knew the module and :data:`AGC_DEFAULT_AXIS` was used.
    """
    if param.dim() < 2:
        return None, False
    declared = getattr(module, "agc_unit_axis", None)
    if isinstance(declared, dict) and param_name in declared:
        return int(declared[param_name]) % param.dim(), False
    if isinstance(declared, int):
        return declared % param.dim(), False
    _register_spectral()
    for cls in type(module).__mro__:
        if cls in _UNIT_AXIS_BY_TYPE:
            return _UNIT_AXIS_BY_TYPE[cls], False
    return AGC_DEFAULT_AXIS, True


# --- norms -----------------------------------------------------------------------------------
def _grads(params: Iterable[Tensor]) -> list[Tensor]:
    return [p.grad for p in params if p.grad is not None]


def global_grad_norm(params: Iterable[Tensor]) -> Tensor:
    """L2 norm of all gradients together (complex by modulus), as a 0-d tensor on the device.

    Same number as ``torch.nn.utils.clip_grad_norm_`` computes; a NaN/Inf gradient gives a
    NaN/Inf norm (never an exception), so the failure monitor can see it.
    """
    grads = _grads(params)
    if not grads:
        return torch.zeros(())
    return torch.nn.utils.get_total_norm(grads, norm_type=2.0)


def clip_grad_value_complex_(params: Iterable[Tensor], clip_value: float) -> None:
    """Clamp every gradient entry into ``[-clip_value, clip_value]``.

    Complex gradients: the real and imaginary parts are clamped separately (``clamp`` has no
    complex meaning; this is the value clip of the real view, which is what an optimizer sees).
    """
    views = [torch.view_as_real(g) if g.is_complex() else g for g in _grads(params)]
    if views:
        torch._foreach_clamp_min_(views, -clip_value)
        torch._foreach_clamp_max_(views, clip_value)


# --- AGC -------------------------------------------------------------------------------------
@dataclass
class _Unit:
    name: str
    param: nn.Parameter
    axis: int | None  # None: the whole tensor is one unit
    defaulted: bool

    @property
    def n_units(self) -> int:
        return 1 if self.axis is None else self.param.shape[self.axis]


def _excluded_prefixes(module: nn.Module, exclude: Sequence[str]) -> tuple[str, ...]:
    names = {name for name, _ in module.named_modules()}
    missing = [e for e in exclude if e not in names]
    if missing:
        # A typo in agc_exclude would silently clip the head: refuse instead.
        raise ValueError(f"agc exclude {missing} names no submodule of {type(module).__name__}; "
                         f"top-level submodules: {[n for n, _ in module.named_children()]}")
    return tuple(f"{e}." for e in exclude)


def agc_units(module: nn.Module, exclude: Sequence[str] = (), unitwise: bool = True
              ) -> list[_Unit]:
    """The parameters AGC clips, each with its unit axis (excluded submodules left out)."""
    skip = _excluded_prefixes(module, exclude)
    units = []
    for mod_name, mod in module.named_modules():
        for p_name, p in mod.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if not p.requires_grad or full.startswith(skip):
                continue
            axis, defaulted = unit_axis(mod, p_name, p) if unitwise else (None, False)
            units.append(_Unit(full, p, axis, defaulted))
    return units


def _real_flat(t: Tensor) -> Tensor:
    """Flat real view (complex -> interleaved re/im); a view when ``t`` is contiguous."""
    r = torch.view_as_real(t) if t.is_complex() else t
    return r.reshape(-1)


class _AgcPlan:
    """Per-element unit index for a fixed set of parameters, built once and reused.

    Memory: one int32 index per real entry (int64 beyond 2**31 units), plus transient
    squares and per-entry scales during a call.
    """

    def __init__(self, units: list[_Unit]):
        self.units = units
        self.n_units = sum(u.n_units for u in units)
        dtype = torch.int32 if self.n_units < 2**31 else torch.long
        ids, offset = [], 0
        for u in units:
            p = u.param
            if u.axis is None:
                idx = torch.full(p.shape, offset, dtype=dtype, device=p.device)
            else:
                shape = [1] * p.dim()
                shape[u.axis] = p.shape[u.axis]
                idx = (offset + torch.arange(p.shape[u.axis], dtype=dtype, device=p.device))
                idx = idx.view(shape).expand(p.shape)
            if p.is_complex():  # re and im of one entry belong to the same unit
                idx = idx.unsqueeze(-1).expand(*p.shape, 2)
            ids.append(idx.reshape(-1))
            offset += u.n_units
        self.index = torch.cat(ids) if ids else torch.zeros(0, dtype=dtype)
        self.sizes = [i.numel() for i in ids]

    def _unit_norms(self, tensors: list[Tensor]) -> Tensor:
        squares = torch.cat(torch._foreach_mul(tensors, tensors))
        sums = torch.zeros(self.n_units, dtype=squares.dtype, device=squares.device)
        return sums.index_add_(0, self.index, squares).sqrt()

    def clip_(self, clip_factor: float, eps: float) -> None:
        if not self.units:
            return
        w_norm = self._unit_norms([_real_flat(u.param.detach()) for u in self.units])
        g_norm = self._unit_norms([_real_flat(u.param.grad) for u in self.units])
        max_norm = clip_factor * w_norm.clamp_min(eps)
        # g_norm > max_norm > 0 in the taken branch; NaN norms compare False and stay NaN.
        scale = torch.where(g_norm > max_norm, max_norm / g_norm, torch.ones_like(g_norm))
        per_entry = scale[self.index].split(self.sizes)
        targets = [_real_flat(u.param.grad) for u in self.units]
        in_place = all(t.data_ptr() == _real_data_ptr(u.param.grad)
                       for t, u in zip(targets, self.units, strict=True))
        if in_place:
            torch._foreach_mul_(targets, list(per_entry))
        else:  # a non-contiguous grad: reshape copied, so write back explicitly
            for u, s in zip(self.units, per_entry, strict=True):
                g = u.param.grad
                rv = torch.view_as_real(g) if g.is_complex() else g
                rv.mul_(s.view(rv.shape))


def _real_data_ptr(g: Tensor) -> int:
    return (torch.view_as_real(g) if g.is_complex() else g).data_ptr()


def _plan_key(units: list[_Unit]) -> tuple:
    return tuple((id(u.param), u.param.shape, u.param.dtype, u.param.device) for u in units)


def adaptive_gradient_clip_(module: nn.Module, clip_factor: float, eps: float = 1e-3,
                            exclude: Sequence[str] = (), unitwise: bool = True) -> None:
    """Unit-wise adaptive gradient clipping of ``module``'s gradients, in place.

    Parameters
    ----------
    module : nn.Module
        Its parameters' ``.grad`` are clipped; parameters without a gradient are skipped.
    clip_factor : float
        lambda: a unit's gradient norm may be at most ``lambda * max(||W_unit||, eps)``.
    eps : float
        Floor of the weight norm (zero-initialised units can still move).
    exclude : sequence of str
        Qualified names of submodules left unclipped (e.g. ``("head",)``); a name that is no
        submodule raises ``ValueError``.
    unitwise : bool
        False: one unit per tensor (the reference's tensor-wise AGC).
    """
    if not clip_factor > 0:
        raise ValueError(f"AGC clip_factor must be > 0, got {clip_factor!r}")
    units = [u for u in agc_units(module, exclude, unitwise) if u.param.grad is not None]
    _AgcPlan(units).clip_(float(clip_factor), float(eps))


# --- dispatch --------------------------------------------------------------------------------
class GradientClipper:
    """``none | norm | value | agc`` behind one call that returns the pre/post-clip norms.

    Parameters
    ----------
    algorithm : {"none", "norm", "value", "agc"}
    value : float or None
        Threshold for ``norm`` (max global L2 norm) and ``value`` (max |entry|); lambda for
        ``agc``. Required (> 0) unless ``algorithm == "none"``.
    agc_eps, agc_exclude, agc_unitwise
        See :func:`adaptive_gradient_clip_`.
    """

    def __init__(self, algorithm: str = "none", value: float | None = None, *,
                 agc_eps: float = 1e-3, agc_exclude: Sequence[str] = ("head",),
                 agc_unitwise: bool = True):
        if algorithm not in CLIP_ALGORITHMS:
            raise ValueError(f"clip.algorithm={algorithm!r}; allowed: {CLIP_ALGORITHMS}")
        if algorithm != "none" and (value is None or not float(value) > 0):
            raise ValueError(f"clip.value must be > 0 for clip.algorithm={algorithm!r}, "
                             f"got {value!r}")
        self.algorithm = algorithm
        self.value = None if value is None else float(value)
        self.agc_eps = float(agc_eps)
        self.agc_exclude = tuple(agc_exclude)
        self.agc_unitwise = bool(agc_unitwise)
        self._plan: _AgcPlan | None = None
        self._plan_key: tuple | None = None
        self._units_cache: tuple[int, list[_Unit]] | None = None

    @classmethod
    def from_config(cls, clip_cfg) -> GradientClipper:
        """From the ``clip`` config node; an unknown key raises ``TypeError`` (no knob dropped)."""
        c = dict(clip_cfg)
        return cls(c.pop("algorithm"), c.pop("value"), **c)

    def __call__(self, module: nn.Module) -> tuple[Tensor, Tensor]:
        """Clip ``module``'s gradients in place; return ``(pre, post)`` global grad norms."""
        params = [p for p in module.parameters() if p.grad is not None]
        pre = global_grad_norm(params)
        if self.algorithm == "none":
            return pre, pre
        if self.algorithm == "norm":
            torch.nn.utils.clip_grads_with_norm_(params, self.value, pre)
        elif self.algorithm == "value":
            clip_grad_value_complex_(params, self.value)
        else:
            self._agc_plan(module).clip_(self.value, self.agc_eps)
        return pre, global_grad_norm(params)

    def _agc_plan(self, module: nn.Module) -> _AgcPlan:
        # The module tree is fixed during training: walk it once, then only filter by grads.
        if self._units_cache is None or self._units_cache[0] != id(module):
            self._units_cache = (id(module),
                                 agc_units(module, self.agc_exclude, self.agc_unitwise))
        units = [u for u in self._units_cache[1] if u.param.grad is not None]
        key = _plan_key(units)
        if key != self._plan_key:
            self._plan, self._plan_key = _AgcPlan(units), key
        return self._plan

    def describe(self, module: nn.Module | None = None) -> dict:
        """Settings as this object holds them (plus AGC units when ``module`` is given)."""
        out = {"algorithm": self.algorithm, "value": self.value}
        if self.algorithm == "none" and self.value is not None:
            out["value_unused"] = True  # a sweep may set clip.value for all arms
        if self.algorithm == "agc":
            out.update(eps=self.agc_eps, exclude=list(self.agc_exclude),
                       unitwise=self.agc_unitwise)
            if module is not None:
                units = agc_units(module, self.agc_exclude, self.agc_unitwise)
                out["clipped_params"] = len(units)
                out["units"] = sum(u.n_units for u in units)
                out["default_axis_params"] = [u.name for u in units if u.defaulted]
                clipped = {id(u.param) for u in units}
                out["excluded_params"] = [n for n, p in module.named_parameters()
                                          if id(p) not in clipped]
        return out
