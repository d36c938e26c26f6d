"""The in-memory output ownership index agrees with the obvious definition."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pfsmount.ownership import OutputIndex

_paths = st.lists(st.sampled_from("abc"), min_size=1, max_size=3).map("/".join)
_ops = st.lists(st.tuples(st.booleans(), _paths, st.sampled_from(["d1", "d2", "d3"])),
                max_size=30)


def _reference(owners: dict[str, str], path: str, below: bool) -> set[str]:
    """Every datum whose file collides with `path` (the index may name any one of them)."""
    hits = {d for p, d in owners.items() if p == path or path.startswith(p + "/")}
    if not hits and below:
        hits = {d for p, d in owners.items() if p.startswith(path + "/")}
    return hits


@given(_ops, _paths, st.booleans())
def test_owner_and_outputs_of_match_a_brute_force_model(ops, probe: str, below: bool) -> None:
    index = OutputIndex({})
    model: dict[str, str] = {}
    for add, path, datum in ops:
        if add:
            index.add(path, datum)
            model[path] = datum
        else:
            index.remove(path)
            model.pop(path, None)
    found = index.owner(probe, below=below)
    expected = _reference(model, probe, below)
    assert (found in expected) if expected else found is None
    for datum in ("d1", "d2", "d3"):
        assert index.outputs_of(datum) == sorted(p for p, d in model.items() if d == datum)
    assert len(index) == len(model)


def test_loading_from_the_ledger_mapping() -> None:
    index = OutputIndex({"a/x": "d1", "b": "d2"})
    assert "a/x" in index and "a" not in index
    assert index.owner("a", below=True) == "d1"  # d1 has a file under the directory a
    assert index.owner("a", below=False) is None
    assert index.owner("b/y", below=False) == "d2"  # b is d2's file: no directory there
