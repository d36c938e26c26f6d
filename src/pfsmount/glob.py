"""Pachyderm glob patterns: which repo paths become datums, and the capture groups behind
`join_on` / `group_by` keys.

Pachyderm matches globs with github.com/pachyderm/ohmyglob (a gobwas/glob fork with capture
groups), using `/` as the separator. The syntax understood here:

- `*` any run of characters except `/`; `?` exactly one character except `/`
- `**` any run of characters including `/` (so `/a/**/b` needs at least `/a//b`-shaped paths
  to have something between the slashes, exactly as in gobwas: it does not match `/a/b`)
- `[abc]`, `[a-z]`, `[!abc]` / `[^abc]` character classes (never matching `/`)
- `{a,b,c}` alternatives, nestable
- `(...)` capture groups with `|` alternatives, numbered by their opening parenthesis;
  ohmyglob's extended forms `@(...)`, `*(...)`, `+(...)`, `?(...)` are capture groups too
  (exactly one, zero or more, one or more, zero or one repetition of the alternatives)
- `!(a|b)` a negated extended glob (a capture group too): a run of characters within one
  segment, starting where no alternative followed by the rest of the pattern matches what
  remains of the path. `/!(*.*)` is every top-level name without a dot, `/d/!(*.txt)` every
  name in `/d` not ending in `.txt`, `/!(a|b)*` every top-level name not starting with `a` or
  `b`. Groups inside a negation are numbered like any other but never capture (they give "").
- `\\x` the character `x` literally

Deliberate differences from ohmyglob: a character class never matches `/` (ohmyglob's negated
class could); a negation inside a group or `{...}` is refused; and a negation is always weighed
together with the rest of the pattern, where ohmyglob, when the negation is followed by more
pattern, only tests whether an alternative matches at its start (`/!(tmp)/*` skips `/tmpx/a`
there, not here). For a negation at the end, as in Pachyderm's `/!(*.*)`, both agree.

Templates (`$1`, `${1}`, `$$`) follow the regexp2 replacement syntax Pachyderm uses to turn a
matched path into a join or group key.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "Glob",
    "GlobError",
    "compile_glob",
    "expand_template",
    "template_groups",
]

_STAR = "[^/]*"
_SUPER_STAR = ".*"
_EXTGLOB_QUANTIFIERS = {"@": "", "*": "*", "+": "+", "?": "?"}
_TEMPLATE = re.compile(r"\$(?:\{(\d+)\}|(\d+)|(\$))")


class GlobError(ValueError):
    """A pattern that is not a valid glob; the message names the pattern and what is wrong."""


@dataclass(frozen=True)
class Glob:
    """A compiled glob: the normalized pattern and how many capture groups it has."""

    pattern: str
    ngroups: int
    _regex: re.Pattern[str] = field(repr=False, compare=False)

    def match(self, path: str) -> tuple[str, ...] | None:
        """The capture groups if `path` (like "/dir/a.txt", the root is "/") matches, else None.

        A group that took part in no match (an unused alternative) captures "".
        """
        # The root is a datum only for the glob "/"; without this, `/*` would match "/" with an
        # empty name.
        if path == "/" and self.pattern != "/":
            return None
        m = self._regex.fullmatch(path)
        if m is None:
            return None
        return tuple(g or "" for g in m.groups())

    def matches(self, path: str) -> bool:
        """Whether `path` matches; `match` without building the groups."""
        return (path != "/" or self.pattern == "/") and self._regex.fullmatch(path) is not None


def compile_glob(pattern: str) -> Glob:
    """Compile a Pachyderm glob into a `Glob`; raise `GlobError` if it is malformed."""
    normalized = _normalize(pattern)
    parser = _Parser(normalized)
    body = parser.parse()
    return Glob(pattern=normalized, ngroups=parser.ngroups, _regex=re.compile(body, re.DOTALL))


def template_groups(template: str) -> set[int]:
    """The capture-group numbers a `$1`-style template refers to."""
    return {int(m.group(1) or m.group(2)) for m in _TEMPLATE.finditer(template) if not m.group(3)}


def expand_template(template: str, path: str, groups: Sequence[str]) -> str:
    """Fill a `$1`-style template from a match: `$0` is the whole path, `$$` a literal `$`.

    A reference to a group the glob does not have expands to "" (validate templates with
    `template_groups` first so users hear about it).
    """

    if "$" not in template:
        return template  # the common case, and most templates are ""

    def fill(m: re.Match[str]) -> str:
        if m.group(3):
            return "$"
        index = int(m.group(1) or m.group(2))
        if index == 0:
            return path
        return groups[index - 1] if index <= len(groups) else ""

    return _TEMPLATE.sub(fill, template)


def _normalize(pattern: str) -> str:
    if not pattern.startswith("/"):
        pattern = "/" + pattern
    # Pachyderm matches directories without their trailing "/", so a trailing "/" in the glob
    # would otherwise never match anything.
    stripped = pattern.rstrip("/")
    trailing_backslashes = len(stripped) - len(stripped.rstrip("\\"))
    if trailing_backslashes % 2 and len(stripped) < len(pattern):
        # "\/" at the end: the escaped slash is meant literally, keep one.
        stripped += "/"
    return stripped or "/"


class _Parser:
    """Recursive-descent translation of one glob into a Python regular expression."""

    def __init__(self, pattern: str, *, pos: int = 0, capture: bool = True) -> None:
        self.pattern = pattern
        self.pos = pos
        self.ngroups = 0
        # A copy of the rest of the pattern inside a negation's lookahead must not add groups.
        self.capture = capture
        self.depth = 0  # how many groups and {...} enclose the current position

    def fail(self, why: str) -> GlobError:
        return GlobError(f"{self.pattern!r} is not a valid glob ({why})")

    def parse(self) -> str:
        body = self.sequence(closers="")
        if self.pos < len(self.pattern):
            # Only a stray ")" or "}" can stop the top level early.
            raise self.fail(f"unmatched {self.pattern[self.pos]!r} at position {self.pos + 1}")
        return body

    def peek(self, offset: int = 0) -> str:
        index = self.pos + offset
        return self.pattern[index] if index < len(self.pattern) else ""

    def sequence(self, closers: str) -> str:
        """Translate until end of pattern or one of `closers` (left unconsumed)."""
        out: list[str] = []
        while self.pos < len(self.pattern):
            char = self.peek()
            if char in closers:
                break
            if char == ")" or (char == "}" and "}" in closers):
                break
            out.append(self.atom())
        return "".join(out)

    def atom(self) -> str:
        char = self.peek()
        nxt = self.peek(1)
        if char in _EXTGLOB_QUANTIFIERS and nxt == "(":
            self.pos += 1
            return self.group(_EXTGLOB_QUANTIFIERS[char])
        if char == "!" and nxt == "(":
            return self.negation()
        if char == "(":
            return self.group("")
        if char == "*":
            if nxt == "*":
                self.pos += 2
                return _SUPER_STAR
            self.pos += 1
            return _STAR
        if char == "?":
            self.pos += 1
            return "[^/]"
        if char == "[":
            return self.char_class()
        if char == "{":
            return self.alternatives()
        if char == "\\":
            return self.escape()
        self.pos += 1
        return re.escape(char)

    def escape(self) -> str:
        if self.pos + 1 >= len(self.pattern):
            raise self.fail("it ends with a lone '\\'; write '\\\\' for a backslash")
        self.pos += 2
        return re.escape(self.pattern[self.pos - 1])

    def group(self, quantifier: str) -> str:
        """A capture group at "(": alternatives separated by "|" up to ")"."""
        inner = "|".join(self.group_alternatives())
        opening = "(" if self.capture else "(?:"
        if quantifier in ("*", "+") and inner in (_STAR, _SUPER_STAR):
            # "*(*)" repeats something that already matches any run; repeating it again would
            # only add catastrophic backtracking, not matches.
            return f"{opening}{inner})"
        if quantifier:
            return f"{opening}(?:{inner}){quantifier})"
        return f"{opening}{inner})"

    def group_alternatives(self) -> list[str]:
        """The "|"-separated alternatives of the group opening at "(", which is numbered."""
        start = self.pos
        self.pos += 1
        if self.capture:
            self.ngroups += 1
        self.depth += 1
        alternatives = [self.sequence(closers="|)")]
        while self.peek() == "|":
            self.pos += 1
            alternatives.append(self.sequence(closers="|)"))
        if self.peek() != ")":
            raise self.fail(f"unclosed group '(' at position {start + 1}")
        self.pos += 1
        self.depth -= 1
        return alternatives

    def negation(self) -> str:
        """`!(a|b)` at "!": a run within a segment where no alternative + the rest matches.

        The lookahead holds the rest of the pattern (compiled again, without groups), so a
        negation means "what `*` + rest matches, minus what alternative + rest matches".
        """
        start = self.pos
        if self.depth:
            raise self.fail(
                f"the negation '!(' at position {start + 1} is inside a group or {{...}}; "
                "pfsmount supports '!(...)' only at the top level, e.g. '/!(*.txt)'"
            )
        self.pos += 1
        alternatives = "|".join(self.group_alternatives())
        rest = _Parser(self.pattern, pos=self.pos, capture=False).parse()
        opening = "(" if self.capture else "(?:"
        return f"{opening}(?!(?:{alternatives}){rest}\\Z){_STAR})"

    def alternatives(self) -> str:
        """Non-capturing `{a,b}` alternatives."""
        start = self.pos
        self.pos += 1
        self.depth += 1
        options = [self.sequence(closers=",}")]
        while self.peek() == ",":
            self.pos += 1
            options.append(self.sequence(closers=",}"))
        if self.peek() != "}":
            raise self.fail(f"unclosed alternatives '{{' at position {start + 1}")
        self.pos += 1
        self.depth -= 1
        return "(?:" + "|".join(options) + ")"

    def char_class(self) -> str:
        start = self.pos
        self.pos += 1
        negated = self.peek() in ("!", "^")
        if negated:
            self.pos += 1
        items: list[str] = []
        first = True
        while True:
            if self.pos >= len(self.pattern):
                raise self.fail("unclosed character class")
            char = self.pattern[self.pos]
            if char == "]" and not first:
                self.pos += 1
                break
            items.append(self.class_item())
            first = False
        if not negated and items == []:
            raise self.fail(f"empty character class at position {start + 1}")
        # A class stands for one character of a name, so it never matches the separator.
        return ("[^/" if negated else "(?:(?!/)[") + "".join(items) + ("]" if negated else "])")

    def class_item(self) -> str:
        low = self.class_char()
        if self.peek() == "-" and self.peek(1) not in ("]", ""):
            self.pos += 1
            high = self.class_char()
            if high < low:
                raise self.fail(f"range '{low}-{high}' is out of order; write '{high}-{low}'")
            return f"{re.escape(low)}-{re.escape(high)}"
        return re.escape(low)

    def class_char(self) -> str:
        char = self.peek()
        if char == "\\":
            if self.pos + 1 >= len(self.pattern):
                raise self.fail("unclosed character class")
            self.pos += 2
            return self.pattern[self.pos - 1]
        self.pos += 1
        return char
