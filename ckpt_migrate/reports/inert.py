"""Strings from files made inert before they reach a terminal, a log line or a progress bar.

A tensor name, a global's dotted name, a zip member or an extras value is attacker-chosen text:
``ESC ]0;…`` retitles a window, ``ESC [5;41m`` paints the screen, ``\\r`` overwrites a line, a
bidi override reorders what the reader sees, and ``[/x]`` is rich markup that crashes a console
print. :func:`inert_text` escapes all of them; JSON output needs nothing (``json.dumps`` escapes
every control character itself). Torch-free.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

UNSAFE_CHARACTERS = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060-\u2069\ufeff\ufff9-\ufffb]"
)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\x1b": "\\x1b"}
_MARKUP_TAG = re.compile(r"(\\*)(\[[a-z#/@][^[]*?])")
MAX_INT_DIGITS = 1000


def _escape_character(match: re.Match[str]) -> str:
    char = match.group(0)
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _escape_markup(text: str) -> str:
    escaped = _MARKUP_TAG.sub(lambda m: f"{m.group(1)}{m.group(1)}\\{m.group(2)}", text)
    if escaped.endswith("\\") and not escaped.endswith("\\\\"):
        escaped += "\\"
    return escaped


def int_text(value: int) -> str:
    """Decimal digits of ``value``, or a size summary past :data:`MAX_INT_DIGITS` digits.

    Python refuses ``str()`` of an int over 4300 digits; a checkpoint may hold one anyway.

    Args:
        value: any int (bool included).

    Returns:
        ``str(value)`` when short enough, else ``"<int of N bits>"``.
    """
    if value.bit_length() > MAX_INT_DIGITS * 3:
        return f"<{'negative ' if value < 0 else ''}int of {value.bit_length()} bits>"
    return str(value)


def inert_text(value: Any, *, markup: bool = False) -> str:
    """``value`` as text that cannot drive a terminal: control, bidi and invisible characters escaped.

    Args:
        value: a string (or anything: it is turned into text first; huge ints are summarised).
        markup: also escape rich markup, for text interpolated into a string rich will parse.

    Returns:
        The text with ``ESC`` as ``\\x1b``, ``\\r`` as ``\\r``, C1 controls and bidi overrides as
        ``\\xNN``/``\\uNNNN``; with ``markup``, ``[tag]`` as ``\\[tag]``.
    """
    if isinstance(value, str):
        text = value
    elif isinstance(value, int):
        text = int_text(value)
    else:
        try:
            text = str(value)
        except ValueError:
            text = f"<{type(value).__name__}>"
    text = UNSAFE_CHARACTERS.sub(_escape_character, text)
    return _escape_markup(text) if markup else text


def is_inert(text: str) -> bool:
    """True when ``text`` holds no character :func:`inert_text` would escape (markup aside)."""
    return UNSAFE_CHARACTERS.search(text) is None


_CONSOLE_CLASS: Any = None


def inert_console(**kwargs: Any) -> Any:
    """A rich ``Console`` that escapes control characters in every string it renders.

    Markup in our own format strings still works; text from files interpolated into markup must
    still go through ``inert_text(..., markup=True)``. This is the backstop for control characters.

    Args:
        kwargs: passed to ``rich.console.Console``.

    Returns:
        The console.
    """
    global _CONSOLE_CLASS
    if _CONSOLE_CLASS is None:
        from rich.console import Console

        class InertConsole(Console):
            """A console whose ``render_str`` sees only inert text."""

            def render_str(self, text: str, **options: Any) -> Any:  # type: ignore[override]
                return super().render_str(inert_text(text), **options)

        _CONSOLE_CLASS = InertConsole
    return _CONSOLE_CLASS(**kwargs)


def write_lines(console: Any, lines: Iterable[str]) -> None:
    """Write plain lines (no markup, no wrapping) to ``console``'s file, each made inert first.

    For output that is not a terminal: what ``console.print(line, markup=False, soft_wrap=True)``
    writes, without rich's rendering of every line, which costs more than the rest of a dry run
    of 10⁵ files.

    Args:
        console: a rich console (its ``file`` is written to).
        lines: the lines, without newlines; text from files in them is made inert here.
    """
    handle = console.file
    for start in range(0, len(lines := list(lines)), 4096):
        handle.write("".join(inert_text(line) + "\n" for line in lines[start: start + 4096]))
    handle.flush()
