"""espeak-ng, through the copy bundled with ``piper-tts``: a word's phonemes, and whether
the voice's dictionary knows it.

Piper keeps one espeak-ng for the whole process behind a module lock (espeak's state is
global: the voice set, the clause being translated); every call here takes that same lock,
so a lookup never interleaves with a line being phonemized on an inference thread.

Whether espeak knows a word is not in its Python bridge. The library behind it can trace
its translation (``espeak_SetPhonemeTrace``, what ``espeak-ng -X`` prints): a word found in
the dictionary shows as ``Found: 'word'``, a word read by spelling rules as ``Translate``,
and one it gives up on as ``Unpronouncable?`` followed by its letters' names. ``lookup``
reads that trace from a temporary file.
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import tempfile
import unicodedata
from dataclasses import dataclass
from typing import Final

from piper import espeakbridge
from piper import voice as piper_voice
from piper.phonemize_espeak import ESPEAK_DATA_DIR, EspeakPhonemizer

__all__ = ["Lookup", "lookup", "phonemize"]

_PHONEMES_IPA: Final = 0x02
_PHONEMES_TRACE: Final = 0x08
_LANGUAGE_SWITCH = re.compile(r"\([^)]+\)")
_FOUND = re.compile(r"^Found: '(.+?)' \[", re.MULTILINE)


@dataclass(frozen=True)
class Lookup:
    """How espeak reads one word."""

    phonemes: str
    """IPA, as the voice is given it (stress marks included, NFD)."""
    in_dictionary: bool
    """The voice's dictionary has the word (not guessed from spelling rules)."""
    spelled: bool
    """espeak found it unpronounceable and says its letters one by one."""


def _lock() -> object:
    # Piper's own lock around its espeak phonemizer (see the module docstring).
    return piper_voice._ESPEAK_PHONEMIZER_LOCK


def _initialize_locked() -> None:
    # Piper's phonemizer, made here if no voice has made it yet: espeak is initialized once.
    if piper_voice._ESPEAK_PHONEMIZER is None:
        piper_voice._ESPEAK_PHONEMIZER = EspeakPhonemizer(ESPEAK_DATA_DIR)


def _phonemize_locked(espeak_voice: str, text: str) -> str:
    _initialize_locked()
    espeakbridge.set_voice(espeak_voice)
    clauses = espeakbridge.get_phonemes(text)
    ipa = " ".join(_LANGUAGE_SWITCH.sub("", phonemes) for phonemes, _, _ in clauses)
    return unicodedata.normalize("NFD", ipa.strip())


@functools.lru_cache(maxsize=4096)
def phonemize(espeak_voice: str, text: str) -> str:
    """IPA for ``text`` as espeak reads it for ``espeak_voice`` (e.g. "en-us")."""
    with _lock():  # type: ignore[attr-defined]
        return _phonemize_locked(espeak_voice, text)


class _Trace:
    """espeak's translation trace, written to a temporary file while it is open."""

    def __init__(self) -> None:
        self._lib = ctypes.CDLL(espeakbridge.__file__)
        self._lib.espeak_SetPhonemeTrace.argtypes = [ctypes.c_int, ctypes.c_void_p]
        self._libc = ctypes.CDLL(None)
        self._libc.fopen.restype = ctypes.c_void_p
        self._libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        self._libc.fflush.argtypes = [ctypes.c_void_p]
        self._libc.fclose.argtypes = [ctypes.c_void_p]
        handle, self._path = tempfile.mkstemp(prefix="dialogue-tts-espeak-", suffix=".txt")
        os.close(handle)
        self._file = self._libc.fopen(os.fsencode(self._path), b"w")
        if not self._file:
            raise OSError(f"cannot open {self._path} for espeak's trace")

    def __enter__(self) -> _Trace:
        self._lib.espeak_SetPhonemeTrace(_PHONEMES_IPA | _PHONEMES_TRACE, self._file)
        return self

    def read(self) -> str:
        self._libc.fflush(self._file)
        with open(self._path, encoding="utf-8", errors="replace") as trace:
            return trace.read().replace("\0", "")

    def __exit__(self, *_: object) -> None:
        self._lib.espeak_SetPhonemeTrace(0, None)
        self._libc.fclose(self._file)
        os.unlink(self._path)


@functools.lru_cache(maxsize=65536)
def lookup(espeak_voice: str, word: str) -> Lookup:
    """How espeak reads ``word`` on its own, and whether its dictionary has it."""
    with _lock():  # type: ignore[attr-defined]
        _initialize_locked()  # (initializing resets the trace)
        with _Trace() as trace:
            phonemes = _phonemize_locked(espeak_voice, word)
            text = trace.read()
    folded = word.casefold()
    found = {match.group(1).casefold() for match in _FOUND.finditer(text)}
    return Lookup(
        phonemes=phonemes,
        in_dictionary=folded in found,
        # Spelled out: espeak gave up on the word and looked up its letters' names.
        spelled=folded not in found and any(len(key) == 1 and key.isalpha() for key in found),
    )
