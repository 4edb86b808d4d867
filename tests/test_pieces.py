"""Clause splitting of phonemes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dialogue_tts.pieces import FIRST_PIECE_MAX, MAX_PIECE, split_sentence


def phonemes(text: str) -> list[str]:
    return list(text)


def joined(pieces: list[list[str]]) -> str:
    return "|".join("".join(piece) for piece in pieces)


def test_cuts_after_clause_marks_keeping_the_space() -> None:
    text = "lˈɪsən wˈɛl ænd hˈɪɚ, fɔːɹ aɪʃˌɐl tˈɛl juː ðə hˈoʊl θˈɪŋ; ænd ðɛn wiː wɪl ɡˈoʊ."
    assert joined(split_sentence(phonemes(text))) == (
        "lˈɪsən wˈɛl ænd hˈɪɚ, |fɔːɹ aɪʃˌɐl tˈɛl juː ðə hˈoʊl θˈɪŋ; |ænd ðɛn wiː wɪl ɡˈoʊ."
    )


def test_short_clauses_join_their_neighbours() -> None:
    assert joined(split_sentence(phonemes("jˈɛs, sˈɜː."))) == "jˈɛs, sˈɜː."
    text = "nˈoʊ, aɪ dˈoʊnt θˈɪŋk sˌoʊ ænd aɪ nˈɛvɚ wɪl."
    assert len(split_sentence(phonemes(text))) == 1


def test_run_ons_and_first_pieces_are_cut_at_word_boundaries() -> None:
    run_on = " ".join(["wˈʊlvz kˈeɪm dˈaʊn"] * 12) + "."
    pieces = split_sentence(phonemes(run_on), first=True)
    assert len(pieces[0]) <= FIRST_PIECE_MAX
    assert all(len(piece) <= MAX_PIECE for piece in pieces)
    assert all(piece[-1] in (" ", ".") for piece in pieces)  # never inside a word
    assert "".join("".join(p) for p in pieces) == run_on


@given(st.lists(st.sampled_from(list("abcdeˈ ,;:.")), max_size=400), st.booleans())
def test_pieces_always_rejoin_to_the_sentence(sentence: list[str], first: bool) -> None:
    pieces = split_sentence(sentence, first=first)
    assert [phoneme for piece in pieces for phoneme in piece] == sentence
    assert all(piece for piece in pieces)
