"""Synthetic run records (tests/_records.py) for these tests; fsync off (no durability needed)."""

from _records import _no_fsync, factory  # noqa: F401  (fixtures)
