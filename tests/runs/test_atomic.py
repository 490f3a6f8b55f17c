"""Atomic writes give a new file the mode a plain open() would (umask applied), not mkstemp's
0600: records, reports and the calibration cache stay readable to the rest of a team."""

import os
import stat

from ptychostab import atomic


def test_an_atomic_write_has_the_mode_of_a_plain_open(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic.atomic_write_text(tmp_path / "atomic.txt", "x")
    mode = stat.S_IMODE((tmp_path / "atomic.txt").stat().st_mode)
    assert mode == stat.S_IMODE(plain.stat().st_mode) == atomic.FILE_MODE


def test_the_mode_follows_the_umask():
    mask = os.umask(0o077)
    try:
        assert atomic._file_mode() == 0o600
    finally:
        os.umask(mask)
    assert atomic._file_mode() == 0o666 & ~mask
