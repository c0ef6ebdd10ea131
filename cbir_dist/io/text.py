"""File names as text a terminal can show safely.

A file name may hold any byte but ``/`` and NUL: newlines, ANSI/OSC escape sequences (which set a
terminal's title or clear its screen when printed raw) and, on POSIX, bytes that are not UTF-8
(which Python's ``os`` functions carry as lone surrogates, ``surrogateescape``). :func:`printable`
is what every line the command line prints goes through: such characters become visible escapes,
while every ordinary name, accented letters and CJK included, prints as it is.

Names that are not UTF-8 must also be stored where text is required (Parquet strings, Milvus
VARCHAR, JSON, HTML), and read back to open the file. :func:`path_text` gives the one text form the
package works with: each byte that is not UTF-8 (0x80-0xFF, a surrogate U+DC80-U+DCFF in Python's
``os`` strings) becomes the private-use character U+10FF80-U+10FFFF, which is valid UTF-8 and
unassigned; :func:`os_path` turns it back for the system calls. Every UTF-8 name maps to itself. A
name that already holds one of those 128 private-use characters would be ambiguous: the listing
rejects it with a reason (:func:`reserved_reason`).
"""

from __future__ import annotations

import unicodedata

_BYTE_BASE = 0x10FF00  # byte 0xNN (not UTF-8) <-> U+10FF00 + 0xNN, for 0xNN in 0x80-0xFF
_SURROGATE_BASE = 0xDC00  # surrogateescape's byte 0xNN <-> U+DC00 + 0xNN


def path_text(path: str) -> str:
    """The storable text form of a path from ``os`` (surrogate-escaped bytes as U+10FF80-U+10FFFF)."""
    if path.isascii():
        return path
    return "".join(chr(_BYTE_BASE + ord(c) - _SURROGATE_BASE) if 0xDC80 <= ord(c) <= 0xDCFF else c for c in path)


def os_path(text: str) -> str:
    """The path to hand to ``os`` for a :func:`path_text` form (the inverse; surrogates pass through)."""
    if text.isascii():
        return text
    return "".join(chr(_SURROGATE_BASE + ord(c) - _BYTE_BASE) if 0x10FF80 <= ord(c) <= 0x10FFFF else c for c in text)


def reserved_reason(name: str) -> str:
    """Why a (UTF-8) file name cannot be told apart from the text form of a non-UTF-8 one, or ""."""
    if any(0x10FF80 <= ord(c) <= 0x10FFFF for c in name):
        return ("the name holds a private-use character U+10FF80-U+10FFFF, which this package reserves for "
                "bytes that are not UTF-8; rename the file")
    return ""


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8, as surrogateescape carries it
        return f"\\x{code - 0xDC00:02x}"
    if 0x10FF80 <= code <= 0x10FFFF:  # the same byte in the text form of path_text
        return f"\\x{code - _BYTE_BASE:02x}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _unsafe(ch: str) -> bool:
    # Cc: C0/C1 controls and DEL; Cs: surrogates; Cf: format characters such as bidi overrides
    # (U+202E shows a name reversed); Zl/Zp: line and paragraph separators
    return unicodedata.category(ch) in ("Cc", "Cs", "Cf", "Zl", "Zp") or 0x10FF80 <= ord(ch) <= 0x10FFFF


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
