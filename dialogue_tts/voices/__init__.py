"""Voice families: the kinds of voice model the engine can speak with.

Each family is one module with a ``FAMILY`` object (see ``family.VoiceFamily``). Adding a
family means adding its module and naming its ``FAMILY`` in ``FAMILIES``; the catalog asks
each one, in this order, for the voices in the voices folder. Piper comes first: it is the
default. (Plain imports, so that a freezer such as PyInstaller sees every family.)
"""

from __future__ import annotations

from typing import Final

from . import kokoro, piper
from .family import VoiceFamily

__all__ = ["FAMILIES", "VoiceFamily"]

FAMILIES: Final[tuple[VoiceFamily, ...]] = (piper.FAMILY, kokoro.FAMILY)
"""The registered families, in the order the catalog asks them."""
