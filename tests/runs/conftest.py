"""Fixtures: ``make_cfg(**overrides)`` builds the complete tiny composed config
(:func:`ptychostab.training.testing.tiny_config`: every field of docs/contracts.md);
``failing_checkpoint_reads`` makes the storage fail under ``load_checkpoint``."""

import errno
import io
import os

import pytest

from ptychostab.training.testing import tiny_config


@pytest.fixture
def make_cfg():
    return tiny_config


class FlakyFile(io.FileIO):
    """A file whose reads fail with ``code`` once ``after`` bytes were read: the storage
    failing in the middle of torch's own reader."""

    after = 64
    code = errno.EIO

    def _check(self):
        if self.tell() >= self.after:
            raise OSError(self.code, os.strerror(self.code))

    def read(self, size=-1):
        self._check()
        return super().read(size)

    def readinto(self, buffer):
        self._check()
        return super().readinto(buffer)


@pytest.fixture
def failing_checkpoint_reads(monkeypatch):
    """``load_checkpoint`` reads through :class:`FlakyFile` (EIO after 64 bytes; set the
    class's ``code`` for another errno); ``monkeypatch.undo()`` brings the disk back."""
    from ptychostab.runs import checkpoint

    class Flaky(FlakyFile):
        pass

    monkeypatch.setattr(checkpoint, "open", lambda path, mode="rb": Flaky(path, "r"),
                        raising=False)
    return Flaky
