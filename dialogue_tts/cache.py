"""Caches of rendered lines: prepared lines in memory, and every line on disk.

The disk cache is content-addressed: an entry's name is the SHA-256 of the voice files'
digest, every synthesis setting and the line's normalized text, so a changed voice file or
setting can never serve stale audio. Writers create a temporary file in the cache folder,
fsync it and rename it into place; a rename is atomic, so a reader (in this process or
another server sharing the folder) sees a whole entry or none, even when a writer is killed
mid-write. Each entry also records its length and CRC-32, and one that does not check out is
deleted instead of served. Size is bounded by evicting the least recently used entries
(a hit touches the entry's mtime).

The disk cache never fails a line: a folder that is read-only, full or gone only turns
writes off for a while, with one warning in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import struct
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Final

import numpy as np

from .text import Part, Pause
from .timings import PhonemeUnit, Piece, WordUnit

__all__ = [
    "DEFAULT_DISK_CACHE_BYTES",
    "DiskCache",
    "LinesInPreparation",
    "Preparation",
    "PreparedLines",
    "default_cache_dir",
    "file_digest",
    "line_key",
]

_LOGGER = logging.getLogger(__name__)

DEFAULT_DISK_CACHE_BYTES: Final = 512 * 1024 * 1024
"""About 100 minutes of 22.05 kHz speech (entries are float32)."""
CACHE_DIR_ENV: Final = "DIALOGUE_TTS_CACHE"
_MAGIC: Final = b"DTTS-LINE-2\n"
_HEADER: Final = struct.Struct("<I")
_KEY_VERSION: Final = 2
"""Bump when synthesis changes in a way that makes old entries wrong."""
_STALE_TEMP_SECONDS: Final = 3600.0
"""A temporary file this old belongs to a writer that died; younger ones may be in use."""
_RETRY_WRITES_AFTER: Final = 60.0
_EVICT_TO: Final = 0.9
"""Eviction goes down to this share of the limit, so it does not run for every write."""


def default_cache_dir() -> Path:
    """$DIALOGUE_TTS_CACHE, else the platform's user cache folder."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    if os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif os.uname().sysname == "Darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "dialogue-tts"


def file_digest(*paths: Path) -> str:
    """SHA-256 of the files' contents, in order (a voice's .onnx and .onnx.json)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as file:
            digest.update(hashlib.file_digest(file, "sha256").digest())
    return digest.hexdigest()


def line_key(voice_digest: str, settings: dict[str, Any], parts: list[Part]) -> str:
    """The content address of a rendered line."""
    spoken = [["pause", part.seconds] if isinstance(part, Pause) else str(part) for part in parts]
    material = json.dumps(
        [_KEY_VERSION, voice_digest, settings, spoken], sort_keys=True, ensure_ascii=False
    )
    return hashlib.sha256(material.encode()).hexdigest()


class DiskCache:
    """Rendered lines as files under ``folder``, at most ``max_bytes`` in all.

    Blocking: call ``get`` and ``put`` from worker threads. Thread-safe.
    """

    def __init__(self, folder: Path, max_bytes: int = DEFAULT_DISK_CACHE_BYTES) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self.writes = 0
        self.write_errors = 0
        self._lock = threading.Lock()
        self._sizes: dict[str, int] = {}
        self._bytes = 0
        self._writes_off_until = 0.0
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._scan()
        except OSError as exc:
            self._writes_failed(exc)

    # --- reading ------------------------------------------------------------------------

    def get(self, key: str) -> list[Piece] | None:
        """The entry's pieces, or None (missing, or damaged and now deleted)."""
        path = self._path(key)
        try:
            data = path.read_bytes()
        except OSError:
            with self._lock:
                self.misses += 1
            return None
        pieces = _decode(data)
        with self._lock:
            if pieces is None:
                self.misses += 1
            else:
                self.hits += 1
        if pieces is None:
            _LOGGER.warning("Deleting damaged cache entry %s", path)
            self._remove(key)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # most recently used
        return pieces

    # --- writing ------------------------------------------------------------------------

    def put(self, key: str, pieces: list[Piece]) -> None:
        """Store an entry atomically; failures are logged, never raised."""
        data = _encode(pieces)
        if len(data) > self.max_bytes or not self._write(self._path(key), data):
            return
        with self._lock:
            self.writes += 1
            self._bytes += len(data) - self._sizes.get(key, 0)
            self._sizes[key] = len(data)
            over = self._bytes > self.max_bytes
        if over:
            self._evict()

    def _write(self, path: Path, data: bytes) -> bool:
        """Write ``path`` atomically (temp file, fsync, rename); False if writes are off or
        it failed (logged)."""
        if time.monotonic() < self._writes_off_until:
            return False
        temp = path.parent / f".tmp-{os.getpid()}-{threading.get_ident()}-{path.name[:16]}"
        try:
            path.parent.mkdir(exist_ok=True)
            with open(temp, "wb") as file:
                _write_all(file, data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temp.unlink()
            self._writes_failed(exc)
            return False
        return True

    # --- records: small JSON facts kept beside the lines (a voice's calibration) ---------
    # They live in records/, which eviction and the size count leave alone (a few hundred
    # bytes each, one per voice and version).

    def get_record(self, name: str) -> Any:
        """The JSON value stored under ``name``, or None (missing or unreadable)."""
        try:
            return json.loads(self._record_path(name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def put_record(self, name: str, value: Any) -> None:
        """Store a JSON value under ``name``, atomically; failures are logged, never raised."""
        self._write(self._record_path(name), json.dumps(value).encode())

    def _record_path(self, name: str) -> Path:
        return self.folder / "records" / f"{name}.json"

    def counters(self) -> dict[str, int]:
        with self._lock:
            return {
                "hits": self.hits, "misses": self.misses, "entries": len(self._sizes),
                "bytes": self._bytes, "writes": self.writes, "write_errors": self.write_errors,
            }  # fmt: skip

    # --- housekeeping -------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / key

    def _entries(self) -> list[tuple[float, int, str]]:
        """(mtime, size, key) of every entry on disk; removes temp files of dead writers."""
        found = []
        now = time.time()
        for sub in self.folder.iterdir():
            if not sub.is_dir() or len(sub.name) != 2:
                continue
            for entry in os.scandir(sub):
                try:
                    info = entry.stat()
                except OSError:
                    continue  # removed meanwhile by another process
                if entry.name.startswith(".tmp-"):
                    if now - info.st_mtime > _STALE_TEMP_SECONDS:
                        with contextlib.suppress(OSError):
                            os.unlink(entry.path)
                    continue
                found.append((info.st_mtime, info.st_size, entry.name))
        return found

    def _scan(self) -> None:
        entries = self._entries()
        with self._lock:
            self._sizes = {key: size for _, size, key in entries}
            self._bytes = sum(self._sizes.values())

    def _evict(self) -> None:
        """Delete least recently used entries, looking at the folder itself, since other
        processes may share it."""
        try:
            entries = sorted(self._entries())
        except OSError as exc:
            _LOGGER.warning("Cannot list the cache folder %s: %s", self.folder, exc)
            return
        total = sum(size for _, size, _ in entries)
        target = self.max_bytes * _EVICT_TO
        for _, size, key in entries:
            if total <= target:
                break
            self._remove(key)
            total -= size
        self._scan()

    def _remove(self, key: str) -> None:
        with contextlib.suppress(OSError):
            self._path(key).unlink()
        with self._lock:
            self._bytes -= self._sizes.pop(key, 0)

    def _writes_failed(self, exc: OSError) -> None:
        with self._lock:
            self.write_errors += 1
            first = self.write_errors == 1
        self._writes_off_until = time.monotonic() + _RETRY_WRITES_AFTER
        log = _LOGGER.warning if first else _LOGGER.debug
        log("Cache folder %s is not writable (%s); lines are not cached for a while",
            self.folder, exc)  # fmt: skip


class PreparedLines:
    """Raw audio pieces of prepared lines, least recently used dropped past ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self._bytes = 0
        self._entries: OrderedDict[Any, list[Piece]] = OrderedDict()

    def get(self, key: Any) -> list[Piece] | None:
        pieces = self._entries.get(key)
        if pieces is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return pieces

    def counters(self) -> dict[str, int]:
        return {
            "hits": self.hits, "misses": self.misses, "entries": len(self._entries),
            "bytes": self._bytes,
        }  # fmt: skip

    def put(self, key: Any, pieces: list[Piece]) -> None:
        size = sum(piece.audio.nbytes for piece in pieces)
        if size > self.max_bytes:
            return
        if key in self._entries:
            self._bytes -= sum(piece.audio.nbytes for piece in self._entries.pop(key))
        self._entries[key] = pieces
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= sum(piece.audio.nbytes for piece in evicted)


class Preparation:
    """A line being prepared: its pieces so far, so that a ``say`` of the same line plays
    them as they come instead of synthesizing the line a second time.

    The preparation's pool jobs read ``priority`` late (``workers.py``): while a say follows
    it, its remaining pieces are as urgent as that say's own would be.
    """

    def __init__(self, priority: Callable[[], Any], words: bool) -> None:
        self.pieces: list[Piece] = []
        self.words = words
        """Its pieces carry word timings."""
        self.done = False
        self.failed = False
        self._background = priority
        self._followers: list[Callable[[], Any]] = []
        self._changed = asyncio.Event()
        """Set (and replaced) when a piece comes or the preparation ends."""

    def priority(self) -> Any:
        """The most urgent of its followers' priorities, or its own while none follows."""
        return min((follower() for follower in self._followers), default=self._background())

    def add(self, piece: Piece) -> None:
        self.pieces.append(piece)
        self._notify()

    def finish(self, failed: bool = False) -> None:
        self.done, self.failed = True, failed
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def follow(self, priority: Callable[[], Any]) -> AsyncIterator[Piece]:
        """Its pieces, those made so far at once and then each as it is made, until it is
        done; a failed preparation just ends (see ``failed``)."""
        self._followers.append(priority)
        try:
            index = 0
            while True:
                if index < len(self.pieces):
                    index += 1
                    yield self.pieces[index - 1]
                elif self.done:
                    return
                else:
                    await self._changed.wait()
        finally:
            self._followers.remove(priority)


class LinesInPreparation:
    """The preparations under way, by line (the ``PreparedLines`` key), bounded by the
    callers' own limits on prepares in flight."""

    def __init__(self) -> None:
        self._by_key: dict[Any, Preparation] = {}
        self.joined = 0
        """Lines said, or prepared again, while being prepared: played from the preparation."""

    def __len__(self) -> int:
        return len(self._by_key)

    def get(self, key: Any, words: bool) -> Preparation | None:
        """The preparation of ``key`` to follow, if one is under way with what is wanted."""
        preparation = self._by_key.get(key)
        if preparation is None or (words and not preparation.words):
            return None
        self.joined += 1
        return preparation

    @contextlib.asynccontextmanager
    async def start(
        self, key: Any, priority: Callable[[], Any], words: bool
    ) -> AsyncIterator[Preparation]:
        """Register a preparation of ``key`` while the block makes it; it is finished (and
        marked failed if the block raised) when the block ends."""
        preparation = Preparation(priority, words)
        self._by_key[key] = preparation
        try:
            yield preparation
        except BaseException:
            preparation.finish(failed=True)
            raise
        else:
            preparation.finish()
        finally:
            if self._by_key.get(key) is preparation:
                del self._by_key[key]


def _encode(pieces: list[Piece]) -> bytes:
    samples = b"".join(piece.audio.astype("<f4", copy=False).tobytes() for piece in pieces)
    header = {
        "pieces": [len(piece.audio) for piece in pieces],
        "crc32": zlib.crc32(samples),
        "phonemes": [[[u.phoneme, u.start, u.n_samples] for u in p.phonemes] for p in pieces],
        "words": [
            [[u.start_char, u.end_char, u.start, u.n_samples] for u in p.words] for p in pieces
        ],
    }
    encoded = json.dumps(header, ensure_ascii=False).encode()
    return _MAGIC + _HEADER.pack(len(encoded)) + encoded + samples


def _decode(data: bytes) -> list[Piece] | None:
    """The pieces of an entry, or None if it is not a whole, intact entry."""
    start = len(_MAGIC) + _HEADER.size
    if not data.startswith(_MAGIC) or len(data) < start:
        return None
    (header_size,) = _HEADER.unpack_from(data, len(_MAGIC))
    samples = data[start + header_size :]
    try:
        header = json.loads(data[start : start + header_size])
        lengths = [int(n) for n in header["pieces"]]
        if len(samples) != 4 * sum(lengths) or zlib.crc32(samples) != int(header["crc32"]):
            return None
        phonemes = [tuple(PhonemeUnit(str(p), int(s), int(n)) for p, s, n in units)
                    for units in header["phonemes"]]  # fmt: skip
        words = [tuple(WordUnit(int(a), int(b), int(s), int(n)) for a, b, s, n in units)
                 for units in header["words"]]  # fmt: skip
    except (ValueError, KeyError, TypeError):
        return None
    if not len(phonemes) == len(words) == len(lengths):
        return None
    audio = np.frombuffer(samples, dtype="<f4").astype(np.float32)
    parts = np.split(audio, np.cumsum(lengths)[:-1]) if lengths else []
    return [Piece(*fields) for fields in zip(parts, phonemes, words, strict=True)]


def _write_all(file: Any, data: bytes) -> None:
    """Write in slices, so a test can stop a writer between two of them."""
    view = memoryview(data)
    for offset in range(0, len(view), 1 << 16):
        file.write(view[offset : offset + (1 << 16)])
