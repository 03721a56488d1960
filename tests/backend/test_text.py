"""TextStream, shared by both engines: never half a UTF-8 character, never a stop string or its start."""
from __future__ import annotations

import random

import pytest
from ampere_llm_server.text import TextStream


def run(pieces: list[bytes], stop=()) -> tuple[list[str], str, bool]:
    ts = TextStream(stop)
    shown = [ts.push(p) for p in pieces]
    return shown, ts.flush(), ts.stopped


def test_multibyte_characters_split_across_tokens_are_held_whole():
    data = "héllo 😀 世界".encode()
    pieces = [data[i:i + 1] for i in range(len(data))]  # the worst case: one byte per token
    shown, tail, _ = run(pieces)
    assert "".join(shown) + tail == "héllo 😀 世界"
    assert all("\ufffd" not in s for s in shown)
    emoji_start = data.index("😀".encode())
    assert shown[emoji_start:emoji_start + 3] == ["", "", ""]  # held until its 4th byte
    assert shown[emoji_start + 3] == "😀"


def test_invalid_bytes_become_replacement_characters_not_errors():
    shown, tail, _ = run([b"ok", b"\xff", b"\xe4\xb8"])  # a stray byte, then a cut-off character
    assert "".join(shown) + tail == "ok\ufffd\ufffd"


def test_stop_string_split_across_tokens_is_never_shown():
    shown, tail, stopped = run([b"Hello wor", b"ld. ", b"END", b"ING more"], stop=["ENDING"])
    assert stopped
    assert "".join(shown) + tail == "Hello world. "
    assert shown[2] == ""  # "END" might be the start of "ENDING": held back
    assert tail == ""


def test_held_text_that_is_not_a_stop_is_released():
    shown, tail, stopped = run([b"The E", b"NDS", b" of it"], stop=["ENDING"])
    assert not stopped
    assert shown[0] == "The "  # "E" held
    assert "".join(shown) + tail == "The ENDS of it"


def test_earliest_of_several_stops_wins_and_the_end_flushes_a_held_prefix():
    shown, _, stopped = run([b"a, b; c"], stop=["; ", ", "])
    assert stopped and shown == ["a"]
    shown, tail, stopped = run([b"x <", b"|im"], stop=["<|im_end|>"])
    assert not stopped and shown == ["x ", ""] and tail == "<|im"


@pytest.mark.parametrize("seed", range(20))
def test_random_splits_give_the_same_text_as_one_piece(seed):
    rng = random.Random(seed)
    text = "".join(rng.choice(["a", "b", "é", "😀", " ", "STOP", "ST", "世"]) for _ in range(60))
    data = text.encode()
    cuts = sorted(rng.sample(range(1, len(data)), min(15, len(data) - 1)))
    pieces = [data[i:j] for i, j in zip([0, *cuts], [*cuts, len(data)])]
    shown, tail, stopped = run(pieces, stop=["STOP"])
    want = text.split("STOP")[0]
    assert "".join(shown) + tail == want
    assert stopped == ("STOP" in text)
    assert all("\ufffd" not in s for s in shown)
