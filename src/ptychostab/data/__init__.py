"""Dataset specification, simulation and cache.

``ptychostab.data.spec`` is pure Python + numpy so that config schemas can import it without
torch; the simulator (torch) is imported lazily on first use of its names.
"""

from ptychostab.data.spec import DataConfig, ProbeConfig

# The function ``simulate`` lives in the submodule of the same name: import it from
# ``ptychostab.data.simulate``.
__all__ = ["DataConfig", "ProbeConfig", "SimulatedData", "load_or_build", "SIMULATOR_VERSION"]


def __getattr__(name: str):
    if name in ("SimulatedData", "load_or_build", "SIMULATOR_VERSION"):
        from ptychostab.data import simulate as _simulate

        return getattr(_simulate, name)
    raise AttributeError(f"module 'ptychostab.data' has no attribute {name!r}")
