"""The cast's lexicon: parsing and refusals, matching rules, and end to end on the real voice
(the phoneme ids that reach the model, the audio, word marks, the disk cache, the socket)."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dialogue_tts import errors
from dialogue_tts.cache import DiskCache
from dialogue_tts.cast import Cast, CastError, load_cast
from dialogue_tts.client import Client, ServerError
from dialogue_tts.engine import Engine, Voice, VoiceCatalog
from dialogue_tts.errors import RemoteProtocolError
from dialogue_tts.jobs import DEFAULT_LIMITS, synthesis_request
from dialogue_tts.lexicon import Lexicon, LexiconError, respell
from dialogue_tts.messages import Pronounce, Synthesize
from dialogue_tts.text import prepare
from dialogue_tts.timings import word_spans
from dialogue_tts.tracked import Spoken
from tests.helpers import ServerThread

LEXICON = {"Aelindra": "ay-LIN-dra", "Nggh": "ung", "Xal'thar": "/zˈælθɑːɹ/", "US": "/jˌuːˈɛs/"}


def cast_of(lexicon: dict[str, Any], source: str = "cast.toml") -> Cast:
    return Cast.from_dict({"lexicon": lexicon}, source)


# --- the file: shape and refusals ---------------------------------------------------------


def test_the_toml_shape_with_language_and_voice_tables(tmp_path: Path) -> None:
    path = tmp_path / "cast.toml"
    path.write_text(
        '[lexicon]\nAelindra = "ay-LIN-dra"\nHale = "HAYL"\n'
        '[lexicon.language.en]\nAelindra = "EL-in-dra"\n'
        '[lexicon.language.fr]\nAelindra = "/ɛlindʁa/"\n'
        '[lexicon.voice."en_US-joe-medium"]\nNggh = "ung"\n',
        encoding="utf-8",
    )
    cast = load_cast(path)
    entries = {e.key: e.value for e in cast.lexicon.entries_for("en_US-joe-medium", "en_US")}
    # The language table overrides the common one; a French table does not apply; the
    # voice's own table adds its words.
    assert entries == {"Aelindra": "EL-in-dra", "Hale": "HAYL", "Nggh": "ung"}
    other = {e.key: e.value for e in cast.lexicon.entries_for("someone-else", "de_DE")}
    assert other == {"Aelindra": "ay-LIN-dra", "Hale": "HAYL"}
    # Only a table under "voice" or "language" is a scope: as a string it is a word.
    assert cast_of({"voice": "VOYSS"}).lexicon.common[0].key == "voice"
    shown = cast.to_dict()
    del shown["source"]
    assert Cast.from_dict(shown).lexicon == cast.lexicon  # queryable, and round trips


@pytest.mark.parametrize(
    ("lexicon", "reason"),
    [
        ({"two words": "x"}, "'two words': a key is one word; no spaces"),
        ({"Aelindra": ""}, "Aelindra: empty value"),
        ({"Aelindra": "//"}, "Aelindra: empty value"),
        ({"Aelindra": "/eɪ lɪn/"}, "Aelindra: phonemes for one word; no spaces"),
        ({"Aelindra": "/eɪlɪn"}, "Aelindra: phonemes go between two slashes"),
        ({"Aelindra": "ay LIN dra"}, "Aelindra: a respelling is letters"),
        ({"Aelindra": 3}, "Aelindra: expected a respelling or /phonemes/"),
        ({"language": {"en": {"a b": "x"}}}, "lexicon.language.en: 'a b': a key is one word"),
    ],
)
def test_a_bad_entry_is_refused_with_its_file_key_and_reason(
    lexicon: dict[str, Any], reason: str, tmp_path: Path
) -> None:
    with pytest.raises(CastError) as caught:
        cast_of(lexicon, str(tmp_path / "cast.toml"))
    assert str(caught.value).startswith(f"{tmp_path / 'cast.toml'}: lexicon")
    assert reason in str(caught.value)


def test_phonemes_are_checked_against_the_voices_phoneme_set() -> None:
    catalog = VoiceCatalog()
    cast_of({"Aelindra": "/ˈeɪlɪndɹə/"}).check(catalog)  # every symbol is the voice's
    with pytest.raises(CastError) as caught:
        cast_of({"Aelindra": "/ˈeɪl☃ndɹə/"}).check(catalog)
    message = str(caught.value)
    assert message.startswith("cast.toml: lexicon: Aelindra: voice 'en_US-joe-medium'")
    assert "no phoneme '☃' (U+2603)" in message
    with pytest.raises(CastError, match="no voice named 'nobody'"):
        cast_of({"voice": {"nobody": {"Aelindra": "ay-LIN-dra"}}}).check(catalog)


# --- matching -------------------------------------------------------------------------------


def book(lexicon: dict[str, Any]) -> Any:
    return cast_of(lexicon).lexicon.book("en_US-joe-medium", "en_US", "en-us")


def test_whole_words_and_the_case_rule() -> None:
    words = book({"aelindra": "ay-LIN-dra", "Hale": "HAYL", "US": "/jˌuːˈɛs/", "t": "tee"})
    text = "AELINDRA met hale Hale's US us in Halewood; don't t."
    found = [text[start:end] for start, end, _ in words.matches(text)]
    # Lowercase and capitalized keys match any case; "US" (capitals of its own) only as
    # written; never inside a word ("Halewood", the "t" of "don't"); a possessive keeps it.
    assert found == ["AELINDRA", "hale", "Hale", "US", "t"]


def test_a_respelling_becomes_stressed_phonemes() -> None:
    assert respell("ay-LIN-dra", "en-us") == "eɪlˈɪndɹɑː"
    assert respell("kuh-RAY-zee", "en-us") == "kəɹˈeɪziː"  # unstressed "uh" is a schwa
    assert respell("ung", "en-us") == "ˈʌŋ"  # one syllable: as espeak reads the word


# --- end to end on the real voice -----------------------------------------------------------


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    made = Engine(VoiceCatalog())
    yield made
    made.close()


@pytest.fixture(scope="module")
def voice(engine: Engine) -> Voice:
    return asyncio.run(engine.voice())


def job(text: str, cast: Cast, engine: Engine, words: bool = False) -> Any:
    request, _ = synthesis_request(Synthesize(text=text), cast, engine.catalog, DEFAULT_LIMITS)
    return dataclasses.replace(request, words=words)


def ids_of(voice: Voice, parts: list[Any]) -> list[list[int]]:
    return [ids for part in parts for ids in voice.pieces(part)]


def test_an_entry_changes_the_phoneme_ids_to_the_respellings(engine: Engine, voice: Voice) -> None:
    cast = cast_of(LEXICON)
    line = "Nggh, that hurts. Tell Aelindra."
    with_lexicon = ids_of(voice, job(line, cast, engine).parts)
    respelled = ids_of(voice, job("ung, that hurts. Tell Aelindra.", Cast(), engine).parts)
    as_written = ids_of(voice, job(line, Cast(), engine).parts)
    aelindra = ids_of(voice, prepare("Tell [[eɪlˈɪndɹɑː]].", "plain", "en_US"))
    # "Nggh" -> "ung": exactly the ids of the line with the respelling typed in, which are
    # not those espeak makes of "Nggh" (it spells it out: "N G G H").
    assert with_lexicon[:-1] == respelled[:-1] and with_lexicon != as_written
    assert with_lexicon[-1] == aelindra[-1] != respelled[-1]
    symbols = voice._piper.config.phoneme_id_map
    assert symbols["ɑ"][0] in with_lexicon[-1] and symbols["ɑ"][0] not in respelled[-1]


async def test_the_audio_differs_and_marks_slice_the_original_text(engine: Engine) -> None:
    line = "{b}Aelindra{/b}, Xal'thar's blade! Nggh..."
    request, _ = synthesis_request(
        Synthesize(text=line, markup="renpy"), cast_of(LEXICON), engine.catalog, DEFAULT_LIMITS
    )
    plain, _ = synthesis_request(
        Synthesize(text=line, markup="renpy"), Cast(), engine.catalog, DEFAULT_LIMITS
    )
    audio, _, pieces = await engine.render_timed(dataclasses.replace(request, words=True))
    unchanged, _ = await engine.render(plain)
    assert len(audio) > 5000 and len(unchanged) > 5000
    assert len(audio) != len(unchanged) or not np.allclose(audio, unchanged)
    said = [line[w.start_char : w.end_char] for piece in pieces for w in piece.words]
    assert said == ["Aelindra", "Xal'thar's", "blade", "Nggh"]


async def test_a_lexicon_edit_keeps_an_unrelated_lines_cache_entry(tmp_path: Path) -> None:
    catalog = VoiceCatalog()
    lines = ["Aelindra waits by the gate.", "The road north is long."]
    before = cast_of({"Aelindra": "ay-LIN-dra", "Nggh": "ung"})
    after = cast_of({"Aelindra": "EL-in-dra", "Nggh": "ung"})  # the entry line 1 uses

    async def render_all(cast: Cast) -> dict[str, int]:
        engine = Engine(catalog, disk_cache=DiskCache(tmp_path))
        try:
            for text in lines:
                await engine.render(job(text, cast, engine))
            await engine.finish_cache_writes()
            return engine.cache_counters()["disk"]
        finally:
            engine.close()

    first = await render_all(before)
    assert (first["hits"], first["writes"]) == (0, 2)
    again = await render_all(before)
    assert (again["hits"], again["writes"]) == (2, 0)
    edited = await render_all(after)
    assert (edited["hits"], edited["writes"]) == (1, 1)  # only the line with "Aelindra"
    unrelated = await render_all(cast_of({"Aelindra": "EL-in-dra", "Nggh": "NG-guh"}))
    assert (unrelated["hits"], unrelated["writes"]) == (2, 0)  # no line says "Nggh"


def test_renpy_render_re_renders_only_the_lines_an_edited_entry_is_in(tmp_path: Path) -> None:
    header = "Identifier\tCharacter\tDialogue\tFilename\tLine Number\tRen'Py Script"
    rows = [("start_1", "e", "{b}Aelindra{/b}, wait!"), ("start_2", "l", "The road is long.")]
    export = tmp_path / "dialogue.tab"
    export.write_text(
        "\n".join([header, *(f'{i}\t{w}\t{t}\tgame/script.rpy\t1\t"[what]"' for i, w, t in rows)])
        + "\n",
        encoding="utf-8",
    )
    cast = tmp_path / "cast.toml"

    def render(value: str) -> str:
        cast.write_text(f'[lexicon]\nAelindra = "{value}"\n', encoding="utf-8")
        result = subprocess.run(
            [sys.executable, "-m", "dialogue_tts", "renpy-render", str(export), "--cast",
             str(cast), "-o", str(tmp_path / "voice"), "--quiet"],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert "2 to render" in render("ay-LIN-dra")
    first = (tmp_path / "voice" / "start_1.ogg").read_bytes()
    assert "0 to render, 2 up to date" in render("ay-LIN-dra")
    assert "1 to render, 1 up to date" in render("EL-in-dra")  # only the line that says it
    assert (tmp_path / "voice" / "start_1.ogg").read_bytes() != first
    with pytest.raises(AssertionError, match="empty value"):
        render("")


_WORDS = st.text(st.characters(categories=["L", "Nd"]), min_size=1, max_size=8)
_VALUES = st.one_of(
    st.from_regex(r"\A[a-zA-Z]{1,6}(-[a-zA-Z]{1,6}){0,3}\Z"),
    st.from_regex(r"\A/[ˈˌaeiouɪəɹθðŋʃʒːæɑɛʊ]{1,8}/\Z"),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lexicon=st.dictionaries(_WORDS, _VALUES, max_size=5),
    text=st.text(max_size=60),
    pick=st.lists(st.integers(0, 4), max_size=4),
)
def test_any_lexicon_and_any_text_never_crash_nor_mark_outside_the_text(
    voice: Voice, lexicon: dict[str, str], text: str, pick: list[int]
) -> None:
    try:
        words = cast_of(lexicon).lexicon.book(voice.info.name, "en_US", "en-us")
    except CastError:
        return  # a refused lexicon (e.g. a key of digits and letters is fine; this is not)
    keys = list(lexicon)
    if keys:  # put some of the entries' words into the text, in any case
        text = " ".join([text, *(keys[i % len(keys)].upper() for i in pick)])
    for markup in ("plain", "renpy"):
        for part in prepare(text, markup, "en_US", words):
            if not isinstance(part, Spoken):
                continue
            sentences = voice.phonemize(part)
            for span in word_spans(part, sentences, voice.phonemize):
                start, end = part.origin(span.start, span.end)
                assert 0 <= start <= end <= len(text)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lexicon=st.dictionaries(_WORDS, _VALUES, min_size=1, max_size=3),
    text=st.text(st.characters(blacklist_categories=["Cs"]), max_size=30),
)
def test_any_lexicon_and_text_synthesized_keep_marks_inside_the_text(
    engine: Engine, lexicon: dict[str, str], text: str
) -> None:
    try:
        cast = cast_of(lexicon)
    except CastError:
        return
    text = f"{text} {' '.join(lexicon)}, {next(iter(lexicon)).lower()}!"
    try:
        request = job(text, cast, engine, words=True)
    except RemoteProtocolError:
        return  # nothing speakable
    _, _, pieces = asyncio.run(engine.render_timed(request))
    marks = [(w.start_char, w.end_char) for piece in pieces for w in piece.words]
    assert marks and all(0 <= start <= end <= len(text) for start, end in marks)


async def test_a_bad_lexicon_in_hello_is_a_clear_error_over_a_socket() -> None:
    server = ServerThread().start()
    try:
        with pytest.raises(ServerError) as caught:
            await Client.connect(port=server.port, cast={"lexicon": {"Xal thar": "ZAL-thar"}})
        assert caught.value.code == errors.INVALID_CAST
        assert caught.value.message == "hello: lexicon: 'Xal thar': a key is one word; no spaces"
        with pytest.raises(ServerError) as caught:
            await Client.connect(port=server.port, cast='[lexicon]\nXal = "/x☃/"\n')
        assert caught.value.code == errors.INVALID_CAST
        assert "hello: lexicon: Xal: voice 'en_US-joe-medium' has no phoneme '☃'" in (
            caught.value.message
        )
        # A good one works, and changes what is said.
        lexicon = {"lexicon": {"Nggh": "ung"}}
        async with await Client.connect(port=server.port, cast=lexicon) as client:
            assert (await client.cast())["lexicon"] == {"Nggh": "ung"}
            said = await client.synthesize("Nggh!", format="wav")
        async with await Client.connect(port=server.port) as client:
            as_written = await client.synthesize("Nggh!", format="wav")
        assert said.duration < as_written.duration  # "ung", not "N G G H"
    finally:
        server.stop()


async def test_pronounce_and_a_lines_own_lexicon_over_a_socket() -> None:
    server = ServerThread().start()
    try:
        text = "{b}Nggh{/b}! Ask Aelindra."
        async with await Client.connect(port=server.port, cast={"lexicon": LEXICON}) as client:
            reply = await client.request(Pronounce(text=text, markup="renpy"))
            assert reply.voice == "en_US-joe-medium"
            assert [text[start:end] for start, end, _, _ in reply.words] == ["Nggh", "Aelindra"]
            assert [w[2:] for w in reply.words] == [["ˈʌŋ", "ung"], ["eɪlˈɪndɹɑː", "ay-LIN-dra"]]
            # A line's own entries win over the cast's, for that line only.
            trial = await client.request(
                Pronounce(text=text, markup="renpy", lexicon={"aelindra": "EL-in-dra"})
            )
            assert trial.words[1][2:] == ["ˈɛlɪndɹɑː", "EL-in-dra"]
            tried = await client.synthesize("Ask Aelindra.", lexicon={"Aelindra": "EL-in-dra"})
            cast_said = await client.synthesize("Ask Aelindra.")
            assert tried.data != cast_said.data
            with pytest.raises(ServerError) as caught:
                await client.request(Pronounce(text=text, lexicon={"Nggh": "/x☃/"}))
            assert caught.value.code == errors.INVALID_FIELD
            assert caught.value.message.startswith("pronounce.lexicon: Nggh: voice")
            with pytest.raises(ServerError) as caught:
                await client.synthesize("Nggh", lexicon={"a b": "x"})
            assert caught.value.message == "synthesize.lexicon: 'a b': a key is one word; no spaces"
            assert (await client.request(Pronounce(text="Hello there."))).words == []
    finally:
        server.stop()


def test_a_lexicon_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        Lexicon.from_table({"": "x"}, "lexicon")
    assert issubclass(LexiconError, ValueError)
