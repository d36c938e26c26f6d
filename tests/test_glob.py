"""Pachyderm glob semantics: matching, captures, normalization, errors, templates."""

from __future__ import annotations

import pytest

from pfsmount.glob import GlobError, compile_glob, expand_template, template_groups

MATCHES = [
    # pattern, path, expected groups (None = no match)
    ("/", "/", ()),
    ("/", "/a", None),
    ("/*", "/a.txt", ()),
    ("/*", "/dir", ()),
    ("/*", "/dir/a.txt", None),
    ("/*", "/", None),
    ("/*/*", "/dir/a.txt", ()),
    ("/*/*", "/dir", None),
    ("/*.txt", "/a.txt", ()),
    ("/*.txt", "/a.csv", None),
    ("/*.txt", "/d/a.txt", None),
    ("/?.txt", "/a.txt", ()),
    ("/?.txt", "/ab.txt", None),
    ("/?", "//", None),
    ("/**", "/a", ()),
    ("/**", "/a/b/c", ()),
    ("/**", "/", None),
    ("/**.txt", "/a/b/c.txt", ()),
    ("/a/**/b", "/a/x/y/b", ()),
    ("/a/**/b", "/a/b", None),
    ("/[abc].txt", "/b.txt", ()),
    ("/[abc].txt", "/d.txt", None),
    ("/[a-c]*", "/cat", ()),
    ("/[a-c]*", "/dog", None),
    ("/[!a-c]*", "/dog", ()),
    ("/[!a-c]*", "/cat", None),
    ("/[^a-c]*", "/dog", ()),
    ("/[^a-c]*", "/bat", None),
    ("/a[!x]b", "/a/b", None),
    ("/a[/]b", "/a/b", None),
    ("/[]]", "/]", ()),
    ("/[a\\]]", "/]", ()),
    ("/{a,b}.txt", "/a.txt", ()),
    ("/{a,b}.txt", "/b.txt", ()),
    ("/{a,b}.txt", "/c.txt", None),
    ("/{a,{b,c}x}", "/cx", ()),
    ("/{*.txt,*.csv}", "/q.csv", ()),
    ("/(*).txt", "/abc.txt", ("abc",)),
    ("/(*)/(*).txt", "/d/f.txt", ("d", "f")),
    ("/(*)-(*)", "/a-b-c", ("a-b", "c")),
    ("/((*)/(*))", "/x/y", ("x/y", "x", "y")),
    ("/(a|b)*", "/bz", ("b",)),
    ("/(a|b)*", "/cz", None),
    ("/(**)", "/a/b", ("a/b",)),
    ("/{x,(y)}", "/x", ("",)),
    ("/@(a|b)", "/a", ("a",)),
    ("/a*(b)", "/abbb", ("bbb",)),
    ("/a*(b)", "/a", ("",)),
    ("/a+(b)", "/a", None),
    ("/a+(b)", "/abb", ("bb",)),
    ("/a?(b)c", "/ac", ("",)),
    ("/a?(b)c", "/abc", ("b",)),
    ("/*(*).go", "/x.go", ("x",)),
    ("/\\*", "/*", ()),
    ("/\\*", "/a", None),
    ("/a\\?", "/a?", ()),
    ("/\\(x\\)", "/(x)", ()),
    ("/\\{a,b\\}", "/{a,b}", ()),
    ("/a.b", "/a.b", ()),
    ("/a.b", "/axb", None),
    ("/a+b", "/a+b", ()),
    ("/a|b", "/a|b", ()),
    ("/a,b", "/a,b", ()),
    ("/a}b", "/a}b", ()),
    ("/$x^", "/$x^", ()),
    ("/naïve/*", "/naïve/ü", ()),
]


@pytest.mark.parametrize(("pattern", "path", "expected"), MATCHES)
def test_match_table(pattern: str, path: str, expected: tuple[str, ...] | None) -> None:
    assert compile_glob(pattern).match(path) == expected


@pytest.mark.parametrize(
    ("given", "normalized"),
    [
        ("*", "/*"),
        ("/*/", "/*"),
        ("dir/*//", "/dir/*"),
        ("/", "/"),
        ("", "/"),
        ("//", "/"),
        ("/a\\/", "/a\\/"),
    ],
)
def test_normalization(given: str, normalized: str) -> None:
    assert compile_glob(given).pattern == normalized


def test_trailing_slash_matches_directories_without_slash() -> None:
    assert compile_glob("/*/").match("/dir") == ()


def test_ngroups_counts_every_capture_including_nested_and_extglob() -> None:
    assert compile_glob("/*").ngroups == 0
    assert compile_glob("/(*)/(*)").ngroups == 2
    assert compile_glob("/((a)|(b))").ngroups == 3
    assert compile_glob("/a*(b)+(c)").ngroups == 2
    assert compile_glob("/{(a),b}").ngroups == 1


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("[", "unclosed character class"),
        ("/[abc", "unclosed character class"),
        ("/[a\\", "unclosed character class"),
        ("/[z-a]", "range 'z-a' is out of order"),
        ("/{a,b", "unclosed alternatives"),
        ("/(a", "unclosed group"),
        ("/a)", "unmatched ')'"),
        ("/a\\", "lone '\\'"),
        ("/(!(a))", "is inside a group"),
    ],
)
def test_invalid_globs(pattern: str, why: str) -> None:
    with pytest.raises(GlobError) as info:
        compile_glob(pattern)
    message = str(info.value)
    assert "is not a valid glob" in message
    assert why in message


def test_error_message_shape() -> None:
    with pytest.raises(GlobError) as info:
        compile_glob("[")
    assert str(info.value) == "'/[' is not a valid glob (unclosed character class)"


def test_nested_star_extglob_stays_fast_on_a_maximal_file_name() -> None:
    glob = compile_glob("/*(*)*(*)*(*).txt")
    assert glob.match("/" + "a" * 255 + ".csv") is None


def test_glob_is_hashable_and_comparable_by_pattern() -> None:
    assert compile_glob("*") == compile_glob("/*")


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("$1", "abc"),
        ("${1}", "abc"),
        ("$1-$2", "abc-7"),
        ("$2$1", "7abc"),
        ("x$$1", "x$1"),
        ("$0", "/abc_7.txt"),
        ("plain", "plain"),
        ("", ""),
        ("$9", ""),
        ("$", "$"),
        ("$x", "$x"),
    ],
)
def test_expand_template(template: str, expected: str) -> None:
    assert expand_template(template, "/abc_7.txt", ("abc", "7")) == expected


def test_template_groups() -> None:
    assert template_groups("$1-${3}$$2") == {1, 3}
    assert template_groups("none") == set()
