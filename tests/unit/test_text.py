from tandem.runtime.engine.text import StopMatcher, Utf8Stream


def feed_all(matcher, pieces):
    return "".join(matcher.feed(p) for p in pieces) + matcher.flush()


def test_stop_string_split_across_pieces_is_never_shown():
    m = StopMatcher(["<|im_end|>"])
    assert feed_all(m, ["Hello", " world<|im", "_end|>", " after"]) == "Hello world"
    assert m.stopped


def test_text_that_only_looks_like_a_stop_prefix_is_released():
    m = StopMatcher(["STOP"])
    out = [m.feed("ST"), m.feed("ART "), m.feed("ok")]
    assert out[0] == ""  # held: could be the start of STOP
    assert "".join(out) + m.flush() == "START ok"
    assert not m.stopped


def test_held_text_is_flushed_at_the_end():
    m = StopMatcher(["###"])
    assert m.feed("a #") == "a "
    assert m.flush() == "#"


def test_earliest_of_several_stops_wins():
    m = StopMatcher(["END", "\n\n"])
    assert feed_all(m, ["one\n\ntwo END"]) == "one"


def test_no_stops_passes_everything():
    m = StopMatcher([])
    assert feed_all(m, ["a", "b"]) == "ab"


def test_utf8_character_split_across_tokens_comes_out_whole():
    data = "né 🙂".encode()
    s = Utf8Stream()
    out = [s.feed(data[i : i + 1]) for i in range(len(data))]
    assert "".join(out) + s.flush() == "né 🙂"
    assert "" in out  # partial bytes were held, not emitted as garbage


def test_invalid_utf8_becomes_a_replacement_character_not_a_crash():
    s = Utf8Stream()
    assert s.feed(b"ok\xff") == "ok\ufffd"
    assert s.feed(b"\xe2\x82") == ""
    assert s.flush() == "\ufffd"
