"""names.py and the places it serves, without a mount: names and values that are not UTF-8."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import struct
import subprocess
from pathlib import Path

import dotenv
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pfsmount.datums import Datum, DatumInput, datum_id
from pfsmount.glob import compile_glob
from pfsmount.names import display, from_json, json_text, message
from pfsmount.store.local import open_repo
from pfsmount.view import InodeAllocator, build_view
from pfsmount.wire import DecodeError, NextDatumRequest, NextDatumResponse
from pfsmount.worker import env_file

# Bytes a value can hold (no NUL), weighted towards what shells and python-dotenv treat
# specially.
_ALPHABET = b"ab '\"\\$`\n\t(){}#;|&*?!=\xff\xc3\xa9\x80 "


def _values() -> list[str]:
    fixed = [b"plain", b"a b", b"it's", b"a\\b", b"$HOME", b"`id`", b'q"q', b"l1\nl2\n", b"x\\",
             b"a\xffb", b"\xfe\xff", "é ü".encode(), b"\xff'$`\"\\", b"\t", b"", b"-", b"'",
             b"\\'", b"a\\nb", b"\xff\\", b"-rf /; echo pwned"]
    rnd = random.Random(10)
    fuzz = [bytes(rnd.choice(_ALPHABET) for _ in range(rnd.randint(0, 12))) for _ in range(300)]
    return [os.fsdecode(v) for v in fixed + fuzz]


def test_env_file_gives_the_shell_the_exact_bytes_and_dotenv_something_to_parse(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    values = _values()
    text = env_file([(f"K{i}", v) for i, v in enumerate(values)])
    text.decode("utf-8")  # python-dotenv opens it as UTF-8
    path = tmp_path / "env"
    path.write_bytes(text)
    dump = "; ".join(f'printf "%s\\0" "$K{i}"' for i in range(len(values)))
    for shell in ("bash", "dash"):
        out = subprocess.run([shell, "-c", f'set -eu; . "$1"; {dump}', shell, str(path)],
                             capture_output=True, check=True, env={"PATH": "/usr/bin:/bin"})
        assert out.stdout.split(b"\0")[:-1] == [os.fsencode(v) for v in values], shell
        assert out.stderr == b""  # nothing ran, nothing complained

    with caplog.at_level(logging.WARNING):
        parsed = dotenv.dotenv_values(stream=io.StringIO(text.decode()), interpolate=False)
    for i, value in enumerate(values):
        key = f"K{i}"
        if value.endswith("\\"):
            continue  # documented: python-dotenv cannot read a quoted value ending in \
        assert key in parsed, value
        plain = not any(0xDC80 <= ord(c) <= 0xDCFF for c in value)
        if plain and not ({"$", "`"} & set(value) and {"'", "\\"} & set(value)):
            assert parsed[key] == value  # the same value for python-dotenv as for the shell
    skipped = [r for r in caplog.records if "could not parse" in r.getMessage()]
    assert len(skipped) == sum(1 for v in values if v.endswith("\\"))


def test_env_line_never_lets_the_shell_run_a_value(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    values = [f"$(touch {marker})", f"`touch {marker}`", f"';touch {marker};'",
              f'";touch {marker};"', f"\\\";touch {marker};\\\"", f"\n touch {marker}\n",
              os.fsdecode(b"\xff$(touch ") + str(marker) + ")"]
    path = tmp_path / "env"
    path.write_bytes(env_file([("V", v) for v in values]))
    for shell in ("bash", "dash"):
        subprocess.run([shell, "-c", '. "$1"', shell, str(path)], check=True)
    assert not marker.exists()


def test_only_identifiers_and_the_datums_own_names_become_lines() -> None:
    text = env_file([("ok", "1"), ("not ok", "2"), ("my-input", "/pfs/my-input")],
                    datum_keys=frozenset({"my-input"}))
    assert text == b"ok=1\nmy-input=/pfs/my-input\n"


@given(st.binary(max_size=40))
def test_json_text_is_strict_utf8_and_round_trips(raw: bytes) -> None:
    value = os.fsdecode(raw)
    record: dict[str, str] = {}
    json_text(record, "path", value)
    encoded = json.dumps(record, ensure_ascii=False)
    encoded.encode("utf-8")  # no lone surrogates: any JSON parser reads it
    back = json.loads(encoded)
    assert from_json(back, "path") == value
    assert ("path_b64" in back) == (value != raw.decode("utf-8", "replace"))


@given(st.binary(max_size=40))
def test_display_is_one_printable_line_and_message_keeps_text(raw: bytes) -> None:
    shown = display(os.fsdecode(raw))
    assert shown.isprintable()
    shown.encode("utf-8")
    said = message(os.fsdecode(raw))
    said.encode("utf-8")
    if raw.isascii() or raw.decode("utf-8", "replace") == os.fsdecode(raw):
        assert said == os.fsdecode(raw)


def test_display_and_message_show_undecodable_bytes_as_hex() -> None:
    assert display(os.fsdecode(b"/a\xff\n")) == "/a\\xff\\n"
    assert message(os.fsdecode(b"copy of /a\xff failed\n")) == "copy of /a\\xff failed\n"


def test_wire_carries_bytes_locally_and_utf8_on_grpc() -> None:
    env = (os.fsdecode(b"in=/pfs/in/a\xff.txt"), "PLAIN=é")
    exact = NextDatumResponse(env, datum_id="d").encode(exact=True)
    assert NextDatumResponse.decode(exact, exact=True).env == env
    grpc = NextDatumResponse(env, datum_id="d").encode()
    assert NextDatumResponse.decode(grpc).env == ("in=/pfs/in/a\ufffd.txt", "PLAIN=é")
    error = os.fsdecode(b"cannot read \xff")
    assert NextDatumRequest.decode(NextDatumRequest(error).encode(exact=True),
                                   exact=True).error == error
    assert NextDatumRequest.decode(NextDatumRequest(error).encode()).error == "cannot read \ufffd"
    with pytest.raises(DecodeError):  # what arrives over gRPC must still be UTF-8
        NextDatumRequest.decode(NextDatumRequest(error).encode(exact=True))


def test_globs_match_undecodable_names_byte_for_byte() -> None:
    name = os.fsdecode(b"/a\xff.txt")
    assert compile_glob("/*").matches(name)
    assert compile_glob("/a?.txt").matches(name)  # `?` is one byte that is not UTF-8
    assert compile_glob("/*.txt").match(name) == ()
    assert not compile_glob("/b*").matches(name)


def test_datum_id_hashes_the_names_bytes() -> None:
    path = b"/d\xffir"
    expected = hashlib.blake2b(b"".join(
        part + struct.pack(">q", len(part)) for part in (b"in", b"in", b"master", path)),
        digest_size=32).hexdigest()
    assert datum_id([DatumInput("in", "in", "master", os.fsdecode(path), "c")]) == expected


def test_view_names_are_the_bytes_on_disk(tmp_path: Path) -> None:
    repo = os.path.join(os.fsencode(tmp_path), b"in")
    os.makedirs(os.path.join(repo, b"d\xffir", b"sub"))
    with open(os.path.join(repo, b"d\xffir", b"sub", b"deep\xfe.txt"), "wb") as f:
        f.write(b"deep")
    index = open_repo(str(tmp_path), "in")
    inputs = (DatumInput("in", "in", "master", os.fsdecode(b"/d\xffir"), index.commit),)
    view = build_view(Datum("x", inputs), {"in": index}, b"", InodeAllocator())
    node = view.node(view.top[b"in"])
    for name in (b"d\xffir", b"sub", b"deep\xfe.txt"):
        assert node.children is not None
        node = view.node(node.children[name])
    assert node.size == 4 and node.origin is not None
    repo_index, entry = node.origin
    fd = repo_index.open_file(entry)  # the listed file, found by its undecodable name
    try:
        assert os.read(fd, 10) == b"deep"
    finally:
        os.close(fd)
