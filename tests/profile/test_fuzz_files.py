"""Fuzzing the files users hand to depthkv: profiles and plans, mutated, truncated, retyped.

Property (hypothesis): loading a damaged file either succeeds with a valid artefact or raises a
depthkv error — :class:`~depthkv.CorruptFileError` (a ``ValueError``) naming the file — never a
bare ``KeyError``, ``IndexError``, ``TypeError``, ``AttributeError``, ``ZeroDivisionError`` or
``OverflowError``, and never a profile with NaN in it.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import depthkv
from depthkv import CorruptFileError, Plan, Profile
from tests.helpers import make_profile, tiny_model

EXAMPLES = 150

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    model = tiny_model("llama")
    folder = tmp_path_factory.mktemp("fuzz")
    profile = make_profile(model)
    plan = depthkv.allocate(profile, budget=16)
    return {
        "profile": (Profile, json.loads(profile.save(folder / "p.json").read_text())),
        "plan": (Plan, json.loads(plan.save(folder / "plan.json").read_text())),
    }


def _paths(data, prefix=()):
    """Every (path, value) in nested dicts/lists."""
    yield prefix, data
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data[:4]):
            yield from _paths(v, (*prefix, i))


def _set(data, path, value):
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value


_DELETE = object()


def check_load(cls, text: str, path) -> None:
    path.write_text(text, encoding="utf-8")
    try:
        artefact = cls.load(path)
    except (CorruptFileError, ValueError) as exc:
        assert str(path) in str(exc) or path.name in str(exc), f"the message does not name the file: {exc}"
        return
    if isinstance(artefact, Profile):
        assert np.isfinite(artefact.degradation).all()


@pytest.mark.parametrize("kind", ["profile", "plan"])
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_files_load_or_fail_clearly(files, tmp_path, kind, data):
    cls, original = files[kind]
    doc = json.loads(json.dumps(original))
    paths = [p for p, _ in _paths(doc) if p]
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p, _ in _paths(doc) if p]
        where = data.draw(st.sampled_from(paths))
        value = data.draw(st.one_of(st.just(_DELETE), json_value))
        _set(doc, where, value)
    check_load(cls, json.dumps(doc), tmp_path / f"{kind}.json")


@pytest.mark.parametrize("kind", ["profile", "plan"])
@settings(max_examples=EXAMPLES // 2, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0.0, 1.0), junk=st.sampled_from(["", "}", "\x00", "\ufffd", "NaN", "]]"]))
def test_truncated_files_fail_clearly(files, tmp_path, kind, cut, junk):
    cls, original = files[kind]
    text = json.dumps(original, indent=1)
    check_load(cls, text[: int(len(text) * cut)] + junk, tmp_path / f"{kind}.json")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_literals_are_refused(files, tmp_path, literal):
    cls, original = files["profile"]
    text = json.dumps(original).replace('"degradation": [[[', f'"degradation": [[[{literal}, ', 1)
    path = tmp_path / "p.json"
    path.write_text(text)
    with pytest.raises(CorruptFileError, match="p.json"):
        cls.load(path)


def test_huge_numbers_and_unknown_versions(files, tmp_path):
    cls, original = files["plan"]
    for field, value, match in [
        ("schema_version", 99, "schema version 99"),
        ("kind", "profile", "is not a depthkv-plan file"),
        ("budgets", [10**40] * len(original["budgets"]), "plan.json"),
        ("global_budget", math.inf, "plan.json"),
    ]:
        doc = dict(original, **{field: value})
        path = tmp_path / "plan.json"
        path.write_text(json.dumps(doc))
        with pytest.raises(CorruptFileError, match=match):
            cls.load(path)
