"""Deprecated alias (one release): see :data:`ptychostab.sweep.MOVED`."""

from ptychostab.sweep._alias import alias

alias(__name__)
