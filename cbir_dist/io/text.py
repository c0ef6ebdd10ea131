"""File names as text a terminal can show safely.

A file name may hold any byte but ``/`` and NUL: newlines, ANSI/OSC escape sequences (which set a
terminal's title or clear its screen when printed raw) and, on POSIX, bytes that are not UTF-8
(which Python's ``os`` functions carry as lone surrogates, ``surrogateescape``). :func:`printable`
is what every line the command line prints goes through: such characters become visible escapes,
while every ordinary name, accented letters and CJK included, prints as it is.
"""

from __future__ import annotations

import unicodedata

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8, as surrogateescape carries it
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _unsafe(ch: str) -> bool:
    # Cc: C0/C1 controls and DEL; Cs: surrogates; Cf: format characters such as bidi overrides
    # (U+202E shows a name reversed); Zl/Zp: line and paragraph separators
    return unicodedata.category(ch) in ("Cc", "Cs", "Cf", "Zl", "Zp")


def printable(text: str) -> str:
    """``text`` with control, format and undecodable characters as backslash escapes.

    Text without any such character is returned as it is (backslashes included), so ordinary
    names and messages are unchanged; once one is escaped, backslashes are doubled too, so the
    escaped form is unambiguous.

    >>> printable("photos/été.jpg")
    'photos/été.jpg'
    >>> printable("a\\x1b]0;owned\\x07.jpg")
    'a\\\\x1b]0;owned\\\\x07.jpg'
    """
    if not any(_unsafe(ch) for ch in text):
        return text
    return "".join(_escape(ch) if _unsafe(ch) or ch == "\\" else ch for ch in text)
