"""The negated glob `!(...)`: exact cases, capture numbering, and properties against a
reference matcher written independently of glob.py's regex translation."""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pfsmount.glob import GlobError, compile_glob, expand_template

EXACT = [
    # Pachyderm's tutorial: every top-level entry without a dot.
    ("/!(*.*)", "/images", ("images",)),
    ("/!(*.*)", "/a.png", None),
    ("/!(*.*)", "/.hidden", None),
    ("/!(*.*)", "/dir/file", None),
    ("/!(*.*)", "/", None),
    ("/dir/!(*.txt)", "/dir/a.csv", ("a.csv",)),
    ("/dir/!(*.txt)", "/dir/a", ("a",)),
    ("/dir/!(*.txt)", "/dir/a.txt", None),
    ("/dir/!(*.txt)", "/dir/a.txt.gz", ("a.txt.gz",)),
    ("/dir/!(*.txt)", "/dir", None),
    ("/dir/!(*.txt)", "/other/a.csv", None),
    ("/!(a|b)*", "/c", ("c",)),
    ("/!(a|b)*", "/cab", ("cab",)),
    ("/!(a|b)*", "/a", None),
    ("/!(a|b)*", "/bc", None),
    ("/!(a|b)*", "/c/d", None),
    ("/!(x)", "/", None),
    ("/!(x)", "/x", None),
    ("/!(x)", "/xx", ("xx",)),
    # Weighed with the rest of the pattern: only `tmp` itself is left out.
    ("/!(tmp)/*", "/tmpx/a", ("tmpx",)),
    ("/!(tmp)/*", "/tmp/a", None),
    # Cases from ohmyglob's own tests (Pachyderm's matcher), where a negation ends the pattern.
    ("/!(*.js|*.json)", "/a.js", None),
    ("/!(*.js|*.json)", "/a.js.gz", ("a.js.gz",)),
    ("/a*!(x)", "/ax", ("",)),
    ("/a!(x)", "/ax", None),
    ("/a!(x)", "/ab", ("b",)),
    ("/*.!(js)", "/foo.js.js", ("js.js",)),
    ("/*.!(js)*", "/foo.js.js", None),
    ("/!(foo)*", "/foobar", None),
    ("/*-!(integration)-test.js", "/a-integration-test.js", None),
    ("/*!(integration)-test.js", "/a-integration-test.js", ("",)),
]


@pytest.mark.parametrize(("pattern", "path", "groups"), EXACT)
def test_negation_exact_cases(pattern: str, path: str, groups: tuple[str, ...] | None) -> None:
    glob = compile_glob(pattern)
    assert glob.match(path) == groups
    assert glob.matches(path) == (groups is not None)


def test_groups_are_numbered_by_opening_parenthesis_around_a_negation() -> None:
    glob = compile_glob("/(*)-!(x|(y))-(*).csv")
    # $1 before, $2 the negation, $3 inside it (never captures), $4 after.
    assert glob.ngroups == 4
    groups = glob.match("/2024-jan-03.csv")
    assert groups == ("2024", "jan", "", "03")
    assert expand_template("$1/$4:$2", "/2024-jan-03.csv", groups) == "2024/03:jan"
    assert glob.match("/2024-x-03.csv") is None
    assert glob.match("/2024-y-03.csv") is None


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("/(!(a))", "is inside a group"),
        ("/{a,!(b)}", "is inside a group or {...}"),
        ("/!(a|!(b))", "is inside a group"),
        ("/!(a", "unclosed group"),
        ("/!(a)[", "unclosed character class"),
    ],
)
def test_bad_negations_are_refused(pattern: str, why: str) -> None:
    with pytest.raises(GlobError) as info:
        compile_glob(pattern)
    assert why in str(info.value)
    assert repr(pattern) in str(info.value)


# --- properties: a reference matcher over a small pattern language ----------------------------


@dataclass(frozen=True)
class Neg:
    alternatives: tuple[tuple[str, ...], ...]


Token = str | Neg  # "a", "b", ".", "/", "*" (any run in a segment), "?" (one char), or Neg

_SEGMENT_TOKENS = st.sampled_from(["a", "b", ".", "*", "?"])


def _no_double_star(tokens: list[Token]) -> bool:
    # "**" is a different token (it crosses "/"), which this reference leaves out.
    return all(not (a == "*" and b == "*") for a, b in itertools.pairwise(tokens))


_ALTERNATIVE = st.lists(_SEGMENT_TOKENS, max_size=3).filter(_no_double_star).map(tuple)
_NEG = st.lists(_ALTERNATIVE, min_size=1, max_size=2).map(lambda alts: Neg(tuple(alts)))
_TOKENS = st.lists(st.one_of(_SEGMENT_TOKENS, st.just("/"), _NEG), min_size=1,
                   max_size=6).filter(_no_double_star)
_PATHS = st.text(alphabet="ab./", min_size=1, max_size=7).map(lambda s: "/" + s)


def _text(tokens: tuple[Token, ...]) -> str:
    return "/" + "".join(
        t if isinstance(t, str) else "!(" + "|".join("".join(a) for a in t.alternatives) + ")"
        for t in tokens
    )


@functools.cache
def _ref(tokens: tuple[Token, ...], s: str) -> bool:
    """Whether `tokens` match all of `s`, straight from the definition of each token."""
    if not tokens:
        return s == ""
    head, rest = tokens[0], tokens[1:]
    segment = len(s.split("/", 1)[0])  # how far a run within this segment can go
    if isinstance(head, Neg):
        if any(_ref(alt + rest, s) for alt in head.alternatives):
            return False
        return any(_ref(rest, s[k:]) for k in range(segment + 1))
    if head == "*":
        return any(_ref(rest, s[k:]) for k in range(segment + 1))
    if head == "?":
        return segment >= 1 and _ref(rest, s[1:])
    return s[:1] == head and _ref(rest, s[1:])


@settings(max_examples=400, deadline=None)
@given(tokens=_TOKENS, path=_PATHS)
def test_negation_matches_the_reference(tokens: list[Token], path: str) -> None:
    pattern = _text(tuple(tokens))
    assume(not pattern.endswith("/"))  # normalization trims a trailing "/"
    assume(path != "/")
    assert compile_glob(pattern).matches(path) == _ref(tuple(tokens), path[1:]), pattern


@settings(max_examples=200, deadline=None)
@given(tokens=_TOKENS, before=st.sampled_from(["ab", "b"]), after=st.sampled_from(["ba", "a"]))
def test_capture_numbering_stays_consistent(tokens: list[Token], before: str,
                                            after: str) -> None:
    """Literal groups before and after any mix of negations capture their own text at the
    number their opening parenthesis has in the pattern text."""
    middle = _text(tuple(tokens))
    pattern = f"/({before}){middle}/({after})"
    glob = compile_glob(pattern)
    assert glob.ngroups == pattern.count("(")
    for path in (f"/{before}/a/{after}", f"/{before}/.b/{after}", f"/{before}/ab./{after}"):
        groups = glob.match(path)
        if groups is not None:
            assert groups[0] == before
            assert groups[-1] == after
