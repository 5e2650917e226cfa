"""Profile / Plan JSON: round trip, fingerprint checks, broken files."""

from __future__ import annotations

import json

import numpy as np
import pytest

import depthkv
from depthkv import Plan, Profile
from tests.helpers import make_profile, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", layers=3)


def test_profile_round_trip(model, tmp_path):
    profile = make_profile(model)
    path = profile.save(tmp_path / "p.json")
    loaded = Profile.load(path, model=model)
    assert loaded.to_dict() == profile.to_dict()
    np.testing.assert_array_equal(loaded.degradation, profile.degradation)
    assert loaded.ablation_budgets == [0.2, 64] and isinstance(loaded.ablation_budgets[1], int)


def test_plan_round_trip(model, tmp_path):
    plan = depthkv.allocate(make_profile(model), 0.3, "proportional")
    loaded = Plan.load(plan.save(tmp_path / "plan.json"), model=model)
    assert loaded.to_dict() == plan.to_dict()


def test_fingerprint_mismatch_names_every_field(model, tmp_path):
    path = make_profile(model).save(tmp_path / "p.json")
    other = tiny_model("qwen2", layers=4, kv_heads=4)
    with pytest.raises(depthkv.FingerprintMismatch) as err:
        Profile.load(path, model=other)
    msg = str(err.value)
    for field in ("architecture", "model_type", "num_layers", "num_kv_heads", "config_hash"):
        assert field in msg
    assert "num_layers: profile has 3, model has 4" in msg


def test_same_architecture_other_config_is_caught(model, tmp_path):
    path = make_profile(model).save(tmp_path / "p.json")
    other = tiny_model("llama", layers=3)
    other.config.rope_theta = 1234.0
    with pytest.raises(depthkv.FingerprintMismatch, match="config_hash"):
        Profile.load(path, model=other)


@pytest.mark.parametrize(
    "mangle, match",
    [
        (lambda t: t[: len(t) // 2], "not valid JSON"),
        (lambda t: "", "empty"),
        (lambda t: "[1, 2]", "expected an object"),
        (lambda t: t.replace('"depthkv-profile"', '"something"'), "not a depthkv-profile"),
        (lambda t: t.replace('"schema_version": 1', '"schema_version": 99'), "schema version 99"),
    ],
)
def test_broken_files_give_clear_errors(model, tmp_path, mangle, match):
    path = make_profile(model).save(tmp_path / "p.json")
    path.write_text(mangle(path.read_text()))
    with pytest.raises(depthkv.CorruptFileError, match=match):
        Profile.load(path)


def test_inconsistent_fields_are_rejected(model, tmp_path):
    path = make_profile(model).save(tmp_path / "p.json")
    data = json.loads(path.read_text())
    data["context_lengths"] = data["context_lengths"][:-1]
    path.write_text(json.dumps(data))
    with pytest.raises(depthkv.CorruptFileError, match="context lengths"):
        Profile.load(path)
    del data["degradation"]
    path.write_text(json.dumps(data))
    with pytest.raises(depthkv.CorruptFileError, match="missing required fields"):
        Profile.load(path)


def test_atomic_save_keeps_old_file_on_failure(model, tmp_path):
    profile = make_profile(model)
    path = profile.save(tmp_path / "p.json")
    before = path.read_text()
    profile.degradation[0, 0, 0] = np.nan
    with pytest.raises(ValueError):
        profile.save(path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Profile.load(tmp_path / "nope.json")
