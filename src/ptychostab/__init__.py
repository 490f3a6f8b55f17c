"""ptychostab: a lab bench for deep FNO/Hybrid PtychoPINN training stability."""

__version__ = "0.1.0"
