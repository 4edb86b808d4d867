"""Voice families: the kinds of voice model the engine can speak with.

Each family is one module with a ``FAMILY`` object (see ``family.VoiceFamily``). Adding a
family means adding its module and naming it in ``FAMILIES``; the catalog asks each one,
in this order, for the voices in the voices folder. Piper comes first: it is the default.
"""

from __future__ import annotations

import importlib
from typing import Final

from .family import VoiceFamily

__all__ = ["FAMILIES", "families"]

FAMILIES: Final = ("dialogue_tts.voices.piper", "dialogue_tts.voices.kokoro")
"""Modules of the registered families, each with a ``FAMILY`` object."""


def families(modules: tuple[str, ...] = FAMILIES) -> dict[str, VoiceFamily]:
    """The registered families by name (``modules`` defaults to ``FAMILIES``)."""
    found: dict[str, VoiceFamily] = {}
    for module in modules:
        family: VoiceFamily = importlib.import_module(module).FAMILY
        found[family.name] = family
    return found
