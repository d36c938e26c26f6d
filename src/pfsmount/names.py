"""Names are bytes: how file names, paths and environment values travel through pfsmount.

On Linux a file name or an environment value is any sequence of bytes (no NUL). pfsmount
carries them as Python's *surrogateescape* strings end to end — what `os.scandir`,
`os.environ` and `os.fsdecode` give: valid UTF-8 reads as text, and every byte that is not
becomes one lone surrogate `\\udc80`..`\\udcff`, which `fsencode` turns back into the
original byte. Only where a string leaves pfsmount does it need a form of its own:

- the kernel (FUSE names, `os` calls): `fsencode`, the exact bytes;
- a person (console, tables): `display`, undecodable bytes shown as `\\xff`;
- JSON for programs (`list-datums --json`): `json_text`, always valid UTF-8, plus the exact
  bytes in base64 under `<key>_b64` when the text alone cannot hold them;
- `/pfs/.env`: `env_line`, quoted so that `source` yields the exact bytes;
- gRPC (`wire.py`): valid UTF-8 only, each undecodable byte as U+FFFD.
"""

from __future__ import annotations

import base64
import re
import sys
from typing import Any

__all__ = [
    "FS_ENCODING",
    "FS_ERRORS",
    "display",
    "env_line",
    "from_json",
    "fsencode",
    "json_text",
    "message",
]

# What os.fsencode uses; hot loops call `text.encode(FS_ENCODING, FS_ERRORS)` directly.
FS_ENCODING = sys.getfilesystemencoding()
FS_ERRORS = sys.getfilesystemencodeerrors()
_SURROGATE = re.compile("[\udc80-\udcff]")


def fsencode(text: str) -> bytes:
    """The bytes a surrogateescape string stands for (`os.fsencode` without its overhead)."""
    return text.encode(FS_ENCODING, FS_ERRORS)


def _exact_text(text: str) -> bool:
    """True when `text` holds no undecodable byte, i.e. is plain Unicode text."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def message(text: str) -> str:
    """`text` (a message for a person) with each undecodable byte written as `\\xff`."""
    if _exact_text(text):
        return text
    return _SURROGATE.sub(lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}", text)


def display(name: str) -> str:
    """A name on one line of a terminal: undecodable bytes and control characters escaped."""
    if name.isprintable():
        return name
    return "".join(c if c.isprintable() else _escape(c) for c in name)


def _escape(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    return char.encode("unicode_escape").decode("ascii")


def json_text(record: dict[str, Any], key: str, value: str) -> None:
    """Put `value` in a JSON `record` under `key`, so that every JSON parser can read it.

    Plain text goes in as it is. A value holding bytes that are not UTF-8 goes in with each
    such byte as U+FFFD (for reading), and its exact bytes in base64 under `<key>_b64` —
    lone surrogates (`\\udcff`) would make the JSON unreadable by strict parsers.
    """
    if _exact_text(value):
        record[key] = value
        return
    raw = fsencode(value)
    record[key] = raw.decode("utf-8", "replace")
    record[key + "_b64"] = base64.b64encode(raw).decode("ascii")


def from_json(record: dict[str, Any], key: str) -> str:
    """The surrogateescape string `json_text` stored under `key` (the inverse of it)."""
    raw = record.get(key + "_b64")
    if raw is None:
        return str(record[key])
    return base64.b64decode(raw).decode(FS_ENCODING, FS_ERRORS)


# --- /pfs/.env --------------------------------------------------------------------------

_SAFE_VALUE = re.compile(r"[A-Za-z0-9_@%+=:,./-]*")
_DOUBLE_QUOTED = re.compile(r'["\\$`]')  # what a backslash protects inside "..."


def env_line(key: str, value: str) -> str:
    """One `KEY=VALUE` line of /pfs/.env, read alike by `source` (bash, dash) and python-dotenv.

    Values are unquoted, as Pachyderm writes them, when that is safe. Otherwise the quoting is
    chosen so the shell yields exactly the value's bytes and never runs any of it, and
    python-dotenv (which pachyderm-sdk uses) reads the same value whenever its dialect can:

    - no `'` and no `\\`: single quotes, the same for both;
    - no `$` and no backquote: double quotes with `\\` and `"` escaped, the same for both;
    - anything else: double quotes with `\\`, `"`, `$` and backquote escaped; python-dotenv
      keeps the backslash before `$` and backquote.

    Bytes that are not UTF-8 cannot go into a UTF-8 file that python-dotenv must read: each
    run of them becomes `$(printf '\\377...')` inside the double quotes, so `source` yields the
    exact bytes and python-dotenv reads that text literally (it cannot hold such bytes at
    all). python-dotenv cannot parse a quoted value that ends in a backslash: such a value is
    written `"..."\\\\`, exact for the shell, and skipped by python-dotenv with a warning. It also
    expands `${NAME}` in every value, quoted or not.
    """
    if _SAFE_VALUE.fullmatch(value):
        return f"{key}={value}\n"
    if _exact_text(value):
        if "'" not in value and "\\" not in value:
            return f"{key}='{value}'\n"
        if "$" not in value and "`" not in value:
            return _double_quoted(key, value, value.replace("\\", "\\\\").replace('"', '\\"'))
        return _double_quoted(key, value, _shell_escape(value))
    parts = []
    for text, raw in _split_undecodable(value):
        parts.append(_shell_escape(text))
        if raw:
            parts.append("$(printf '" + "".join(f"\\{b:03o}" for b in raw) + "')")
    return _double_quoted(key, value, "".join(parts))


def _double_quoted(key: str, value: str, escaped: str) -> str:
    trailing = len(value) - len(value.rstrip("\\"))
    if trailing:
        # `\\"` would read as an escaped quote to python-dotenv, which would then run on
        # into the next lines; outside the quotes, backslashes end the line cleanly.
        tail = "\\\\" * trailing
        return f'{key}="{escaped[:-2 * trailing]}"{tail}\n'
    return f'{key}="{escaped}"\n'


def _shell_escape(value: str) -> str:
    return _DOUBLE_QUOTED.sub(lambda m: "\\" + m.group(), value)


def _split_undecodable(value: str) -> list[tuple[str, bytes]]:
    """(text, the undecodable bytes after it) pairs covering `value`."""
    pieces: list[tuple[str, bytes]] = []
    start = 0
    for run in re.finditer("[\udc80-\udcff]+", value):
        pieces.append((value[start:run.start()], bytes(ord(c) - 0xDC00 for c in run.group())))
        start = run.end()
    pieces.append((value[start:], b""))
    return pieces
