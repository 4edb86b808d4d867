"""Word, phoneme and viseme timings for lip-sync and text sync, from Piper's own durations.

A Piper (VITS) model predicts how many audio frames each phoneme id lasts (its ``w_ceil``
tensor, the output of a Ceil node) and the decoder turns every frame into exactly
``hop_length`` samples. ``add_duration_output`` exposes that tensor as an extra graph output,
in memory, so one inference yields both the audio and its exact timing. From there:

- ``phoneme_units`` turns one inference's ids and durations into phonemes with sample spans;
- ``word_spans`` maps each word of espeak's IPA back to the characters it was read from;
- ``word_units`` joins the two: words with both a character span and a sample span;
- ``viseme_units`` turns phonemes into mouth shapes (the Oculus/Meta set of 15);
- ``place`` moves units into a line (pauses and earlier pieces) and rescales them for
  pitch shifts, which resample the audio.

All positions are samples of the voice's output, counted from the start of the piece.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final, Literal, TypeVar

import numpy as np

from . import model_edit
from .pieces import CLAUSE_MARKS

__all__ = [
    "DEFAULT_HOP_LENGTH",
    "PHONEME_VISEMES",
    "VISEMES",
    "PhonemeUnit",
    "Piece",
    "VisemeUnit",
    "WordSpan",
    "WordUnit",
    "add_duration_output",
    "phoneme_units",
    "place",
    "viseme_units",
    "word_spans",
    "word_units",
]

_LOGGER = logging.getLogger(__name__)

DEFAULT_HOP_LENGTH: Final = 256
"""Samples per duration frame: Piper's hop length, unless the voice's config says otherwise."""

# Piper's special symbols (piper.const): beginning and end of a sentence, and the pad id
# that ``phonemes_to_ids`` puts after every phoneme.
_BOS: Final = "^"
_EOS: Final = "$"
_PAD: Final = "_"
_SPACE: Final = " "
_PUNCTUATION: Final = frozenset(",.;:!?¡¿—…\"'()-")
"""Marks espeak leaves in its IPA: they are pauses, not sounds of the word they follow."""


# --- The model: one extra output ------------------------------------------------------------


def add_duration_output(model_path: str | os.PathLike[str]) -> bytes | None:
    """A Piper model that also outputs its phoneme durations, serialized for onnxruntime.

    Pass the bytes to ``onnxruntime.InferenceSession`` in place of the path. The durations
    (frames per phoneme id, float, shape ``[1, 1, ids]``) are the **last** output, after the
    audio, which stays bit-identical to the unpatched model's. Returns None when the model
    has no duration node we can tell apart (not a VITS graph): the caller then loads the
    file as usual, without timings. The file on disk is never written.

    The edit is piper's ``add_alignment_output``, made on the model's bytes
    (``model_edit``: milliseconds, where importing ``onnx`` alone took 0.65 s of CPU at each
    start); a model that reader does not understand, or already patched on disk, goes
    through ``onnx`` and piper's patch as before.
    """
    try:
        data = Path(model_path).read_bytes()
        name = durations_tensor(model_edit.graph_nodes(data))
        if name is not None and name not in model_edit.graph_outputs(data):
            _LOGGER.debug("Exposing %s of %s as the duration output", name, model_path)
            return model_edit.append_output(data, name)
    except (OSError, model_edit.ModelFormatError) as exc:
        _LOGGER.debug("Reading %s directly failed (%s): trying onnx", model_path, exc)
    return _add_duration_output_with_onnx(model_path)


def _add_duration_output_with_onnx(model_path: str | os.PathLike[str]) -> bytes | None:
    try:
        import onnx
    except ImportError:
        _LOGGER.warning("The onnx package is not installed: no speech timings")
        return None
    try:
        model = onnx.load(os.fspath(model_path))
    except Exception as exc:  # onnxruntime will fail on the same file, and say so
        _LOGGER.warning("Cannot read %s for timings: %s", model_path, exc)
        return None
    try:
        # Piper's own patch, where the installed piper has one: it appends the Ceil output.
        from piper.patch_voice_with_alignment import add_alignment_output

        name = add_alignment_output(model)
    except (ImportError, ValueError) as exc:
        # Older piper, several Ceil nodes, or a model already patched on disk.
        _LOGGER.debug("Finding the duration tensor of %s ourselves: %s", model_path, exc)
        nodes = [
            model_edit.Node(n.op_type, tuple(n.input), tuple(n.output)) for n in model.graph.node
        ]
        found = durations_tensor(nodes)
        if found is None:
            _LOGGER.info("No duration tensor in %s: no speech timings", model_path)
            return None
        name = found
        outputs = model.graph.output
        for index, output in enumerate(outputs):
            if output.name == name:
                del outputs[index]  # already an output: moved last, like a new one
                break
        # No type or shape, as in piper's own patch: onnxruntime infers them.
        outputs.append(onnx.ValueInfoProto(name=name))
    _LOGGER.debug("Exposing %s of %s as the duration output", name, model_path)
    return bytes(model.SerializeToString())


def durations_tensor(nodes: Sequence[model_edit.Node]) -> str | None:
    """The output name of the Ceil node that computes the durations (VITS ``w_ceil``)."""
    ceils = [node for node in nodes if node.op_type == "Ceil"]
    if len(ceils) > 1:
        # w_ceil is summed into the audio length (ReduceSum) and accumulated into the
        # alignment path (CumSum); a Ceil used elsewhere is not both.
        uses: dict[str, set[str]] = {}
        for node in nodes:
            for name in node.inputs:
                uses.setdefault(name, set()).add(node.op_type)
        ceils = [
            node for node in ceils if {"ReduceSum", "CumSum"} <= uses.get(node.outputs[0], set())
        ]
    return ceils[0].outputs[0] if len(ceils) == 1 and ceils[0].outputs else None


# --- Phonemes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhonemeUnit:
    """One phoneme (or ``^``/``$``, the piece's lead-in and tail) and the samples it covers."""

    phoneme: str
    start: int
    n_samples: int

    @property
    def end(self) -> int:
        return self.start + self.n_samples


def phoneme_units(
    phoneme_ids: Sequence[int],
    durations: np.ndarray,
    id_map: Mapping[str, Sequence[int]],
    hop_length: int = DEFAULT_HOP_LENGTH,
) -> list[PhonemeUnit]:
    """Phonemes of one inference with their sample spans, covering all of its audio.

    ``phoneme_ids`` is what went into the model and ``durations`` the duration output that
    came back (frames per id); ``id_map`` and ``hop_length`` are the voice config's. The units
    are contiguous from sample 0 and their lengths sum to ``sum(durations) * hop_length``,
    the length of the audio.

    Piper puts a pad id after every phoneme, and the model gives pads as much time as the
    phonemes themselves. Each pad counts as part of the phoneme before it, as in piper's own
    alignments: a unit then starts exactly where its phoneme's own id starts, and a pause
    (",", ".") gets the silence after it rather than the fading end of the word before.
    Ids not in ``id_map`` become units named ``"?"``.

    Raises ValueError if ``durations`` does not hold one value per id.
    """
    frames = np.rint(np.asarray(durations, dtype=np.float64).reshape(-1)).astype(np.int64)
    if len(frames) != len(phoneme_ids):
        raise ValueError(f"{len(frames)} durations for {len(phoneme_ids)} phoneme ids")
    names = {ids[0]: phoneme for phoneme, ids in id_map.items() if len(ids) == 1}
    pads = set(id_map.get(_PAD, ()))
    units: list[PhonemeUnit] = []
    position = 0
    for phoneme_id, count in zip(phoneme_ids, frames.tolist(), strict=True):
        n_samples = max(count, 0) * hop_length
        if phoneme_id in pads and units:
            last = units[-1]
            units[-1] = PhonemeUnit(last.phoneme, last.start, last.n_samples + n_samples)
        else:
            units.append(PhonemeUnit(names.get(phoneme_id, "?"), position, n_samples))
        position += n_samples
    return units


# --- Words ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WordSpan:
    """Where one IPA word came from in the text: ``text[start:end]``.

    An IPA word read from a part of a written token ("250" is said in two IPA words) gets the
    whole token; one read from several tokens (espeak says "in the" as one word, ``ɪnðə``)
    gets all of them, so neighbouring spans may overlap. Spans never go backwards.
    """

    ipa: str
    start: int
    end: int


@dataclass(frozen=True)
class WordUnit:
    """A spoken word: its characters in the text, and the samples it is said in."""

    start_char: int
    end_char: int
    start: int
    n_samples: int

    @property
    def end(self) -> int:
        return self.start + self.n_samples


# Written tokens: runs of non-space, also cut at dashes and ellipses, which stand between
# words ("yes—no", "left…Really") whether or not the writer put spaces around them.
_TOKEN = re.compile(r"[^\s—–…]+")

_Method = Literal["exact", "aligned", "proportional"]


def word_spans(
    text: str,
    ipa: str | Sequence[Sequence[str]],
    phonemize: Callable[[str], list[list[str]]],
) -> list[WordSpan]:
    """The span of ``text`` that each IPA word of ``ipa`` was read from, in order.

    ``ipa`` is what ``phonemize(text)`` returned (a list of sentences of phonemes, as from
    ``PiperVoice.phonemize``) or one IPA string; ``phonemize`` is that same function, used
    to read each written token on its own. When the tokens' own IPA word counts add up to
    the whole text's, each token simply takes its words in order; otherwise (espeak joins
    "of the" into ``ʌvðə`` and reads "left… Really" as one word) the IPA letters of the
    tokens are aligned with the text's, and words no letter matched are spread evenly
    between their neighbours. Never raises for odd text; an empty ``text`` gives ``[]``.
    """
    return _word_spans(text, ipa, phonemize)[0]


def _word_spans(
    text: str,
    ipa: str | Sequence[Sequence[str]],
    phonemize: Callable[[str], list[list[str]]],
) -> tuple[list[WordSpan], _Method]:
    """``word_spans``, and which way it matched tokens to words (for tests and tuning)."""
    sentences = [list(ipa)] if isinstance(ipa, str) else ipa
    words = [word for sentence in sentences for word in _ipa_words(sentence)]
    if not words:
        return [], "exact"
    tokens: list[tuple[int, int, list[str]]] = []  # start, end, the token's own IPA words
    for match in _TOKEN.finditer(text):
        start, end = _core(text, match.start(), match.end())
        own = [word for sentence in phonemize(match.group()) for word in _ipa_words(sentence)]
        if own:
            tokens.append((start, end, own))
    if not tokens:
        # Nothing readable on its own (espeak spoke symbols only in context): the whole text.
        return [WordSpan(word, 0, len(text)) for word in words], "proportional"
    counts = [len(own) for _, _, own in tokens]
    if sum(counts) == len(words):
        owners = [index for index, count in enumerate(counts) for _ in range(count)]
        ranges = [(owner, owner) for owner in owners]
        method: _Method = "exact"
    else:
        ranges, method = _align(words, [own for _, _, own in tokens])
    spans = [
        WordSpan(word, tokens[first][0], tokens[last][1])
        for word, (first, last) in zip(words, ranges, strict=True)
    ]
    _LOGGER.debug("%s word spans for %r", method, text)
    return spans, method


def _ipa_words(phonemes: Sequence[str]) -> list[str]:
    """IPA words: split at spaces, and after clause marks, exactly where a piece may end.

    ``pieces.split_sentence`` cuts at spaces and after ``CLAUSE_MARKS``, so counting words
    this way in each piece adds up to the count for the whole sentence.
    """
    words: list[str] = []
    current: list[str] = []
    for phoneme in phonemes:
        if phoneme != _SPACE:
            current.append(phoneme)
        if current and (phoneme == _SPACE or phoneme in CLAUSE_MARKS):
            words.append("".join(current))
            current = []
    if current:
        words.append("".join(current))
    return words


def _core(text: str, start: int, end: int) -> tuple[int, int]:
    """A token without the punctuation around it ('"Halt!"' -> 'Halt'), unless it is all that."""
    core_start, core_end = start, end
    while core_start < core_end and unicodedata.category(text[core_start]).startswith("P"):
        core_start += 1
    while core_end > core_start and unicodedata.category(text[core_end - 1]).startswith("P"):
        core_end -= 1
    return (core_start, core_end) if core_start < core_end else (start, end)


def _letters(ipa: str) -> str:
    """The IPA letters only: stress, length, diacritics and punctuation vary with context."""
    return "".join(char for char in ipa if unicodedata.category(char) in ("Ll", "Lu", "Lo"))


def _align(
    words: Sequence[str], token_words: Sequence[Sequence[str]]
) -> tuple[list[tuple[int, int]], _Method]:
    """For each IPA word, the first and last token it was read from (monotonic)."""
    token_of: list[int] = []
    for index, own in enumerate(token_words):
        token_of.extend([index] * len(_letters("".join(own))))
    word_of: list[int] = []
    for index, word in enumerate(words):
        word_of.extend([index] * len(_letters(word)))
    said = "".join(_letters("".join(own)) for own in token_words)
    heard = "".join(_letters(word) for word in words)
    matched: list[list[int]] = [[] for _ in words]
    matcher = difflib.SequenceMatcher(None, said, heard, autojunk=False)
    for block in matcher.get_matching_blocks():
        for offset in range(block.size):
            matched[word_of[block.b + offset]].append(token_of[block.a + offset])
    last_token = len(token_words) - 1
    if not any(matched):
        # Nothing in common: spread the words evenly over the tokens, in order.
        spread = [index * len(token_words) // len(words) for index in range(len(words))]
        return [(token, token) for token in spread], "proportional"
    ranges: list[tuple[int, int] | None] = [
        (min(tokens), max(tokens)) if tokens else None for tokens in matched
    ]
    # Unmatched words lie between the tokens of their matched neighbours: share them out.
    index = 0
    while index < len(ranges):
        if ranges[index] is not None:
            index += 1
            continue
        gap_end = index
        while gap_end < len(ranges) and ranges[gap_end] is None:
            gap_end += 1
        before = ranges[index - 1] if index > 0 else None
        after = ranges[gap_end] if gap_end < len(ranges) else None
        low = before[1] if before is not None else 0
        high = after[0] if after is not None else last_token
        count = gap_end - index
        for step in range(count):
            token = low + round((step + 1) * (high - low) / (count + 1))
            ranges[index + step] = (token, token)
        index = gap_end
    result: list[tuple[int, int]] = []
    for item in ranges:
        first, last = item if item is not None else (0, 0)
        if result:  # SequenceMatcher's blocks are in order; merged words can still overlap
            first = max(first, result[-1][0])
            last = max(last, result[-1][1])
        result.append((first, max(first, last)))
    return result, "aligned"


def word_units(units: Sequence[PhonemeUnit], spans: Sequence[WordSpan]) -> list[WordUnit]:
    """The words of one piece: its phoneme units grouped into IPA words, given their spans.

    ``spans`` are the word spans from this piece's first word on (the rest of the line's
    spans may follow; they are not used): the result has one unit per IPA word of the
    piece, or fewer if the spans run out, so ``spans[len(result):]`` are the next piece's.
    A word's samples run from its first phoneme to its last sound: punctuation after it
    (a pause) and the space before the next word are not part of it.
    """
    groups: list[list[PhonemeUnit]] = []
    current: list[PhonemeUnit] = []
    for unit in units:
        if unit.phoneme in (_BOS, _EOS, _SPACE):
            if current:
                groups.append(current)
            current = []
            continue
        current.append(unit)
        if unit.phoneme in CLAUSE_MARKS:
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    words: list[WordUnit] = []
    for group, span in zip(groups, spans, strict=False):
        sounds = [unit for unit in group if unit.phoneme not in _PUNCTUATION]
        start = (sounds or group)[0].start
        end = sounds[-1].end if sounds else start
        words.append(WordUnit(span.start, span.end, start, end - start))
    if len(groups) > len(spans):
        _LOGGER.debug("%d words in a piece, only %d spans", len(groups), len(spans))
    return words


# --- Visemes --------------------------------------------------------------------------------

VISEMES: Final = (
    "sil", "PP", "FF", "TH", "DD", "kk", "CH", "SS", "nn", "RR", "aa", "E", "ih", "oh", "ou",
)  # fmt: skip
"""The Oculus/Meta (OVRLipSync) visemes, in their index order: silence, then consonants by
place of articulation (PP: p b m, FF: f v, TH: θ ð, DD: t d, kk: k g, CH: tʃ dʒ ʃ, SS: s z,
nn: n l, RR: r), then vowels (aa: car, E: bed, ih: tip, oh: toe, ou: book)."""

_VISEME_GROUPS: Final = {
    "PP": "pbmɓʙʘ",
    "FF": "fvɸβʋⱱɱ",
    "TH": "θð",
    "DD": "tdʈɖɗɾɽǀǂǃ",
    "kk": "kgɡqɢɠʛɣxXχħʕhɦʜɧʔʡʢŋɴcɟʄ",
    "CH": "ʃʒɕʑʂʐçʝ",
    "SS": "szʦ",
    "nn": "nlɲɳɫɬɮɭʎʟɺǁ",
    "RR": "rɹɻʀʁɚɝɜ",
    "aa": "aɑɒɐæʌɶ",
    "E": "eɛəɘɞε",
    "ih": "iɪɨᵻyʏj",
    "oh": "oɔɵøœɤ",
    "ou": "uʊʉɯwʍɥɰ",
}
PHONEME_VISEMES: Final[Mapping[str, str]] = {
    phoneme: viseme for viseme, phonemes in _VISEME_GROUPS.items() for phoneme in phonemes
}
"""Viseme of each IPA letter: every letter in piper's default id map, which en_US voices use.

Choices where the table is not obvious: the flap ``ɾ`` ("thirty") and clicks are DD (the
bilabial click ``ʘ`` is PP); ``h`` and ``ŋ`` are kk (the tongue back, the lips free); ``j``
is ih and ``w`` is ou (glides hold the lips of their vowel); ``ɜ`` is RR because en_US
espeak writes the r-coloured vowel of "sir", "world" as ``ɜː``; schwa ``ə`` is E, the
relaxed half-open mouth.

Not in the table, and resolved by ``viseme_units``: stress marks take the viseme of the
phoneme after them (espeak writes them just before the vowel), length marks, modifier
letters and combining diacritics that of the phoneme before, a space continues the word
before it (speech does not stop between words), and punctuation, ``^`` and ``$`` are
"sil". Any other symbol is looked up by its base letter, and is "sil" if that fails."""

_STRESS: Final = frozenset("ˈˌ")
_NEXT: Final = ">"
_PREVIOUS: Final = "<"


@dataclass(frozen=True)
class VisemeUnit:
    """One mouth shape (a name from ``VISEMES``) and the samples it is held for."""

    viseme: str
    start: int
    n_samples: int

    @property
    def end(self) -> int:
        return self.start + self.n_samples


def viseme_units(units: Sequence[PhonemeUnit]) -> list[VisemeUnit]:
    """Mouth shapes for phoneme units, consecutive equal ones merged into one unit.

    A phoneme of several letters (Piper's vowel clusters, such as ``aɪ``) is split evenly
    between their visemes. The result covers the same samples as ``units``.
    """
    shapes: list[tuple[str, int, int]] = []  # viseme (or _NEXT, _PREVIOUS), start, length
    for unit in units:
        known = unit.phoneme in PHONEME_VISEMES
        symbols = [unit.phoneme] if known else unicodedata.normalize("NFD", unit.phoneme)
        found = [_viseme(symbol) for symbol in symbols] or ["sil"]
        own = [viseme for viseme in found if viseme not in (_NEXT, _PREVIOUS)]
        if len(own) > 1:
            position = unit.start
            for index, viseme in enumerate(own):
                end = unit.start + unit.n_samples * (index + 1) // len(own)
                shapes.append((viseme, position, end - position))
                position = end
        else:
            shapes.append(((own or found)[0], unit.start, unit.n_samples))
    visemes: list[str] = []
    for index, (viseme, _, _) in enumerate(shapes):
        if viseme == _NEXT:
            later = (
                shape[0] for shape in shapes[index + 1 :] if shape[0] not in (_NEXT, _PREVIOUS)
            )
            viseme = next(later, "sil")
        elif viseme == _PREVIOUS:
            viseme = visemes[-1] if visemes else "sil"
        visemes.append(viseme)
    merged: list[VisemeUnit] = []
    for viseme, (_, start, n_samples) in zip(visemes, shapes, strict=True):
        if merged and merged[-1].viseme == viseme:
            merged[-1] = VisemeUnit(viseme, merged[-1].start, merged[-1].n_samples + n_samples)
        else:
            merged.append(VisemeUnit(viseme, start, n_samples))
    return merged


def _viseme(symbol: str) -> str:
    """A symbol's viseme, or _NEXT / _PREVIOUS: the neighbour it belongs with decides."""
    if symbol in PHONEME_VISEMES:
        return PHONEME_VISEMES[symbol]
    if symbol in _STRESS:
        return _NEXT
    if symbol in (_BOS, _EOS, _PAD) or symbol in _PUNCTUATION:
        return "sil"
    if symbol == _SPACE or unicodedata.category(symbol) in ("Lm", "Mn", "Sk", "Nd"):
        return _PREVIOUS  # ː ʲ ʰ ˞, combining marks, tone digits: part of the sound before
    return PHONEME_VISEMES.get(unicodedata.normalize("NFKD", symbol)[:1], "sil")


# --- Placing a piece's units in a line ------------------------------------------------------


_Timed = TypeVar("_Timed", PhonemeUnit, VisemeUnit, WordUnit)


def place(units: Sequence[_Timed], offset: int = 0, factor: float = 1.0) -> list[_Timed]:
    """``units`` with every position scaled by ``factor``, then moved ``offset`` samples on.

    ``offset`` is where the piece starts in the line (the samples of pauses and of earlier
    pieces, as streamed); ``factor`` is the piece's length after processing over its length
    before (``len(shifted) / len(raw)`` for a pitch shift, which resamples). Boundaries are
    rounded, not lengths, so contiguous units stay contiguous and no error adds up.
    """

    def moved(position: int) -> int:
        return offset + round(position * factor)

    result: list[_Timed] = []
    for unit in units:
        start, end = moved(unit.start), moved(unit.start + unit.n_samples)
        result.append(replace(unit, start=start, n_samples=end - start))
    return result


# --- A piece of a line's audio with its timings -------------------------------------------


@dataclass(frozen=True)
class Piece:
    """A stretch of a line's audio (a clause, or a pause's silence) and what is said when in
    it: positions are samples of ``audio``, from its start. ``phonemes`` is empty for a voice
    whose model gives no durations, and ``words`` unless a client asked for words."""

    audio: np.ndarray
    phonemes: tuple[PhonemeUnit, ...] = ()
    words: tuple[WordUnit, ...] = ()

    def with_audio(self, audio: np.ndarray) -> Piece:
        """The same piece with processed audio; a change of length (resampling) rescales
        the units to it."""
        if len(audio) == len(self.audio) or not len(self.audio):
            return replace(self, audio=audio)
        factor = len(audio) / len(self.audio)
        return Piece(
            audio, tuple(place(self.phonemes, 0, factor)), tuple(place(self.words, 0, factor))
        )
