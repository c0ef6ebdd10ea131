"""File names reach the terminal as text it can show: no raw control or escape sequences."""

from __future__ import annotations

import os

import pytest

from cbir_dist.io.text import printable
from cbir_dist.query.results import format_results


@pytest.mark.parametrize("name", ["photos/a.jpg", "été/東京 1.png", "back\\slash.png", "it's \"q\".jpg", "-dash.jpg"])
def test_ordinary_names_print_unchanged(name):
    assert printable(name) == name


@pytest.mark.parametrize("raw, shown", [
    ("a\nb.jpg", "a\\nb.jpg"),
    ("\x1b]0;owned\x07.jpg", "\\x1b]0;owned\\x07.jpg"),  # OSC: would set the terminal's title
    ("\x1b[2J.jpg", "\\x1b[2J.jpg"),  # CSI: would clear the screen
    ("tab\there\\x.jpg", "tab\\there\\\\x.jpg"),  # once escaping, a literal backslash is doubled
    ("\u202egpj.exe", "\\u202egpj.exe"),  # a bidi override shows a name reversed
    ("c\x9bd", "c\\x9bd"),  # C1 control
])
def test_controls_and_escapes_become_visible(raw, shown):
    assert printable(raw) == shown
    assert not any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in printable(raw))


def test_bytes_that_are_not_utf8_show_as_hex():
    name = os.fsdecode(b"caf\xe9\xff.jpg")  # surrogateescape on POSIX
    assert printable(name) == "caf\\xe9\\xff.jpg"
    printable(name).encode("utf-8")  # printable text encodes


def test_the_query_table_escapes_every_name():
    evil = "d/\x1b]0;x\x07/q\n.png"
    cols = {"query": [evil], "query_id": [1], "query_label": ["\x1b[31m"], "rank": [1], "id": [2],
            "path": [evil], "label": ["l\rx"], "distance": [0.5], "error": [""], "estimated_missing": [None]}
    out = format_results(cols)
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out
    assert out.count("\n") == 2  # head, column titles, one hit: the name's newline is no line break
