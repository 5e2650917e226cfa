"""The engine plan's structure, checked field by field (:func:`check_engine_plan`).

An engine plan is read by programs that are not depthkv, and may be edited by hand: every field is
checked for its type and range, and the derived ones (a layer's ``slots``, the ``totals``, the
policy's ``floor``) against what they are derived from, so a file that was changed in one place but
not the other is refused rather than half-believed. The fields are described in
:mod:`depthkv.serving.export`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from depthkv.files import CorruptFileError
from depthkv.policies import PolicyConfig
from depthkv.profile.budget import check_budget
from depthkv.profile.plan import MAX_TOKENS
from depthkv.runtime.modes import MODES

__all__ = [
    "ALLOCATION_FIELDS",
    "ENGINE_PLAN_FORMAT",
    "ENGINE_PLAN_VERSION",
    "LAYER_FIELDS",
    "MODEL_FIELDS",
    "POLICY_FIELDS",
    "TOP_FIELDS",
    "TOTAL_FIELDS",
    "check_engine_plan",
]

ENGINE_PLAN_FORMAT = "depthkv-engine-plan"
ENGINE_PLAN_VERSION = 1

TOP_FIELDS: tuple[str, ...] = (
    "format",
    "version",
    "model",
    "allocation",
    "policy",
    "mode",
    "max_new_tokens",
    "context_length",
    "layers",
    "totals",
)
MODEL_FIELDS: tuple[str, ...] = (
    "architecture",
    "model_type",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "hidden_size",
    "vocab_size",
    "config_hash",
)
ALLOCATION_FIELDS: tuple[str, ...] = ("strategy", "global_budget", "relative", "context_length", "floor")
POLICY_FIELDS: tuple[str, ...] = (*(f.name for f in dataclasses.fields(PolicyConfig)), "floor", "stateful")
LAYER_FIELDS: tuple[str, ...] = ("index", "attention", "sliding_window", "budget", "fraction", "tail", "slots")
TOTAL_FIELDS: tuple[str, ...] = ("budget_tokens", "slots")

_MODEL_STRINGS = ("architecture", "model_type", "config_hash")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return {dict: "object", list: "list", str: "string"}.get(type(value), "number")


class _Checker:
    """Raises :class:`CorruptFileError` messages that start with the source and name the field."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, field: str, problem: str) -> None:
        raise CorruptFileError(f"{self.source}: {field} {problem}")

    def fields(self, value: Any, field: str, expected: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(field, f"is a JSON {_json_type(value)}, expected an object with fields {list(expected)}")
        missing = [k for k in expected if k not in value]
        if missing:
            self.fail(field, f"is missing field(s) {missing}")
        unknown = sorted(set(value) - set(expected))
        if unknown:
            self.fail(field, f"has unknown field(s) {unknown}; version {ENGINE_PLAN_VERSION} has {list(expected)}")
        return value

    def int_at_least(self, value: Any, field: str, low: int, *, nullable: bool = False) -> None:
        if value is None and nullable:
            return
        if not _is_int(value) or not low <= value <= MAX_TOKENS:
            null = "null or " if nullable else ""
            self.fail(field, f"is {value!r}; expected {null}a whole number in [{low}, {MAX_TOKENS}]")


def _check_model(c: _Checker, model: Any) -> dict[str, Any]:
    c.fields(model, "model", MODEL_FIELDS)
    for name in _MODEL_STRINGS:
        if model[name] is not None and not isinstance(model[name], str):
            c.fail(f"model.{name}", f"is {model[name]!r}; expected a string or null")
    c.int_at_least(model["num_layers"], "model.num_layers", 1)
    for name in ("num_heads", "num_kv_heads", "head_dim", "hidden_size"):
        c.int_at_least(model[name], f"model.{name}", 1, nullable=True)
    c.int_at_least(model["vocab_size"], "model.vocab_size", 0, nullable=True)
    return model


def _check_allocation(c: _Checker, allocation: Any) -> dict[str, Any]:
    c.fields(allocation, "allocation", ALLOCATION_FIELDS)
    if not isinstance(allocation["strategy"], str):
        c.fail("allocation.strategy", f"is {allocation['strategy']!r}; expected a string")
    if allocation["global_budget"] is not None:
        try:
            check_budget(allocation["global_budget"], "allocation.global_budget")
        except (TypeError, ValueError) as exc:
            c.fail("allocation.global_budget", f"is wrong: {exc}")
    if not isinstance(allocation["relative"], bool):
        c.fail("allocation.relative", f"is {allocation['relative']!r}; expected true or false")
    planned = allocation["context_length"]
    if planned is not None and not (_is_number(planned) and planned > 0):
        c.fail("allocation.context_length", f"is {planned!r}; expected null or a positive number of tokens")
    if allocation["relative"] and planned is None:
        c.fail("allocation.context_length", "is null; a relative plan records the context length it was made for")
    c.int_at_least(allocation["floor"], "allocation.floor", 0)
    return allocation


def _check_policy(c: _Checker, policy: Any) -> PolicyConfig:
    c.fields(policy, "policy", POLICY_FIELDS)
    try:
        config = PolicyConfig.from_dict({k: v for k, v in policy.items() if k not in ("floor", "stateful")})
    except (TypeError, ValueError) as exc:
        c.fail("policy", f"is not a valid eviction policy: {exc}")
    if policy["floor"] != config.floor or not _is_int(policy["floor"]):
        c.fail("policy.floor", f"is {policy['floor']!r}, but the {config.name} policy's floor is {config.floor}")
    if policy["stateful"] is not config.stateful:
        c.fail("policy.stateful", f"is {policy['stateful']!r}, but the {config.name} policy's is {config.stateful}")
    return config


def _check_mode(c: _Checker, data: dict[str, Any]) -> None:
    mode, new = data["mode"], data["max_new_tokens"]
    if mode not in MODES:
        c.fail("mode", f"is {mode!r}; expected one of {list(MODES)}")
    c.int_at_least(new, "max_new_tokens", 0)
    if mode == "append" and new < 1:
        c.fail("max_new_tokens", "is 0; append mode reserves a tail of at least 1 slot")
    if mode == "evict" and new != 0:
        c.fail("max_new_tokens", f"is {new}; evict mode has no tail, so it is 0")
    c.int_at_least(data["context_length"], "context_length", 1, nullable=True)


def _check_layer(c: _Checker, layer: Any, i: int, data: dict[str, Any], floor: int) -> None:
    at = f"layers[{i}]"
    c.fields(layer, at, LAYER_FIELDS)
    if layer["index"] != i or not _is_int(layer["index"]):
        c.fail(f"{at}.index", f"is {layer['index']!r}; the layers are listed in order, so it is {i}")
    kind, window, budget = layer["attention"], layer["sliding_window"], layer["budget"]
    if kind not in ("full", "sliding"):
        c.fail(f"{at}.attention", f"is {kind!r}; expected 'full' or 'sliding'")
    if kind == "sliding":
        c.int_at_least(window, f"{at}.sliding_window", 1)
    elif window is not None:
        c.fail(f"{at}.sliding_window", f"is {window!r}; a full-attention layer has none (null)")
    c.int_at_least(budget, f"{at}.budget", 1, nullable=True)
    if kind == "sliding":
        if budget is None:
            c.fail(f"{at}.budget", f"is null; a sliding layer keeps at most its window ({window}): give tokens")
        if budget > window:
            c.fail(f"{at}.budget", f"is {budget}, above the layer's sliding window {window}")
    if budget is not None and budget < min(floor, window or floor):
        c.fail(f"{at}.budget", f"is {budget}, below the policy's floor {floor} (the slots it always keeps)")
    fraction = layer["fraction"]
    if data["allocation"]["relative"]:
        if not (_is_number(fraction) and fraction > 0):
            c.fail(f"{at}.fraction", f"is {fraction!r}; a relative plan gives each layer's share of the context (> 0)")
    elif fraction is not None:
        c.fail(f"{at}.fraction", f"is {fraction!r}; an absolute plan has no fractions (null)")
    tail = data["max_new_tokens"] if data["mode"] == "append" and kind == "full" and budget is not None else 0
    if layer["tail"] != tail or not _is_int(layer["tail"]):
        c.fail(f"{at}.tail", f"is {layer['tail']!r}; in {data['mode']} mode this layer's tail is {tail}")
    slots = None if budget is None else budget + tail
    if layer["slots"] != slots or isinstance(layer["slots"], bool):
        c.fail(f"{at}.slots", f"is {layer['slots']!r}; budget + tail is {slots!r}")


def _check_totals(c: _Checker, totals: Any, layers: list[dict[str, Any]]) -> None:
    c.fields(totals, "totals", TOTAL_FIELDS)
    for name, key in (("budget_tokens", "budget"), ("slots", "slots")):
        values = [layer[key] for layer in layers]
        expected = None if None in values else sum(values)
        if totals[name] != expected or isinstance(totals[name], bool):
            c.fail(f"totals.{name}", f"is {totals[name]!r}; the layers' {key} add up to {expected!r}")


def check_engine_plan(data: Any, source: str = "engine plan") -> dict[str, Any]:
    """``data`` itself if it is a valid engine plan of this version; else raise, naming the field.

    Args:
        data: the parsed JSON.
        source: what the data is, for the messages (``"engine plan out.json"``).

    Raises:
        depthkv.files.CorruptFileError: another format or version, a missing or unknown field, a
            value of the wrong type or range (a negative budget, a sliding layer above its window),
            a layer count that is not ``model.num_layers``, or a derived field (``slots``,
            ``totals``, the policy's ``floor``) that does not match what it is derived from.
    """
    c = _Checker(source)
    if not isinstance(data, dict):
        c.fail("the data", f"is a JSON {_json_type(data)}, expected an object")
    if data.get("format") != ENGINE_PLAN_FORMAT:
        c.fail("format", f"is {data.get('format')!r}; this is not a {ENGINE_PLAN_FORMAT} file")
    if data.get("version") != ENGINE_PLAN_VERSION or not _is_int(data.get("version")):
        c.fail(
            "version",
            f"is {data.get('version')!r}; this depthkv reads version {ENGINE_PLAN_VERSION}: export the plan again "
            "with this version (depthkv export)",
        )
    c.fields(data, "the top level", TOP_FIELDS)
    model = _check_model(c, data["model"])
    _check_allocation(c, data["allocation"])
    policy = _check_policy(c, data["policy"])
    _check_mode(c, data)
    layers = data["layers"]
    if not isinstance(layers, list):
        c.fail("layers", f"is a JSON {_json_type(layers)}, expected a list with one entry per layer")
    if len(layers) != model["num_layers"]:
        c.fail("layers", f"has {len(layers)} entries but model.num_layers is {model['num_layers']}")
    for i, layer in enumerate(layers):
        _check_layer(c, layer, i, data, policy.floor)
    _check_totals(c, data["totals"], layers)
    return data
