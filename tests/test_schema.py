"""One schema: the Setting declarations of the run, the rules and the tasks generate the
pydantic models that validate a config, the OpenAPI document and the CLI's help; the control
actions are a tagged union whose parameter ranges are declared once (app.schema), and the
worker's check_params is that validation."""

from __future__ import annotations

from typing import Any

import pytest
from openapi_spec_validator import validate
from pydantic import TypeAdapter, ValidationError

from app.schema import ACTIONS, CONTROL_MODELS, Control, openapi_document
from app.service.base import ACTIONS as BACKEND_ACTIONS
from app.service.worker import check_params
from simulator.cli import _parser
from simulator.config import SCALARS, RunConfig
from simulator.rules import RULES, make_rule_args
from simulator.schema import config_schemas, run_config_model
from simulator.settings import ConfigError, Setting


class ToyRule:
    """Only what the registries read: a summary and the settings."""

    summary = "a toy rule for the schema test"
    settings = (Setting("gain", 0.5, "the toy's gain", float, 0.0, 2.0),
                Setting("mode", "fast", "the toy's mode", str, choices=("fast", "slow")))


def test_a_new_rules_settings_reach_validation_the_document_and_the_help(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(RULES, "toy", ToyRule)  # registering is the only line a rule needs

    assert make_rule_args("toy", {"gain": "1.5"}) == {"gain": 1.5, "mode": "fast"}
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict({"rule": "toy", "rule_args": {"gain": 3}})
    assert (str(err.value), err.value.field) == (
        "rule_args.gain: got 3; allowed: a number in [0, 2]", "rule_args.gain")
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict({"rule": "toy", "rule_args": {"speed": 1}})
    assert str(err.value) == "rule_args.speed: unknown setting; allowed: gain, mode"

    doc = openapi_document()
    validate(doc)
    schemas = doc["components"]["schemas"]
    assert schemas["RuleArgs.toy"]["properties"]["gain"] == {
        "type": "number", "minimum": 0.0, "maximum": 2.0, "default": 0.5,
        "description": "the toy's gain", "title": "Gain"}
    assert schemas["RuleArgs.toy"]["properties"]["mode"]["enum"] == ["fast", "slow"]
    assert schemas["RuleArgs.toy"]["additionalProperties"] is False
    config = schemas["RunConfig"]["properties"]
    assert "toy" in config["rule"]["enum"]
    assert {"$ref": "#/components/schemas/RuleArgs.toy"} in config["rule_args"]["anyOf"]

    with pytest.raises(SystemExit):
        _parser().parse_args(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "toy: a toy rule for the schema test" in text
    assert "gain=0.5 (a number in [0, 2]): the toy's gain" in text
    assert "toy" in run_config_model().model_fields["rule"].annotation.__args__


def test_run_config_model_matches_the_dataclass_and_the_settings() -> None:
    """The RunConfig dataclass, the model and the settings agree on fields and defaults."""
    model = run_config_model()
    defaults = RunConfig()
    assert set(model.model_fields) == set(defaults.to_dict())
    for name, info in model.model_fields.items():
        default = info.get_default(call_default_factory=True)
        assert default == getattr(defaults, name), name
    props = config_schemas()["RunConfig"]["properties"]
    for s in SCALARS:
        if s.choices:
            assert props[s.name]["enum"] == list(s.choices)
        else:
            assert (props[s.name]["minimum"], props[s.name]["maximum"]) == (s.low, s.high)
        assert props[s.name]["default"] == s.default and props[s.name]["description"] == s.help
    # the model validates a real validated config as the API echoes it
    echoed = RunConfig.from_dict({"rule": "rflo", "seeds": "0-2", "n": 8}).to_dict()
    assert model.model_validate(echoed).model_dump()["seeds"] == [0, 1, 2]


VALID: list[dict[str, Any]] = [
    {"action": "pause"}, {"action": "resume"}, {"action": "stop"}, {"action": "step", "k": 5},
    {"action": "speed", "steps_per_frame": 0}, {"action": "speed", "steps_per_second": 0.1},
    {"action": "fast_forward", "to": 10**9}, {"action": "set", "apical": 10},
    {"action": "set", "phases": " all "}, {"action": "view", "units": [0, 7], "seed_index": 1},
    {"action": "checkpoint"}, {"action": "checkpoint", "name": "mark-1.a"},
    {"action": "branch", "changes": {"rule": "rtrl"}, "checkpoint": "mark"},
    {"action": "evaluate", "steps": 10**6},
]
INVALID: list[tuple[dict[str, Any], str, str]] = [
    ({"action": "step"}, "k", "k: required: steps to advance, then pause"),
    ({"action": "step", "k": 10**7 + 1}, "k", "k: got 10000001; allowed: an integer in [1, 1e+07]"),
    ({"action": "speed"}, "steps_per_frame", "steps_per_frame: give exactly one of"),
    ({"action": "speed", "steps_per_frame": 1, "steps_per_second": 1.0}, "steps_per_frame", ""),
    ({"action": "speed", "steps_per_second": 0.01}, "steps_per_second",
     "steps_per_second: got 0.01; allowed: a number in [0.1, 1e+07]"),
    ({"action": "fast_forward", "to": -1}, "to", "to: got -1; allowed: an integer in [0, 1e+09]"),
    ({"action": "set", "lr": 10.5}, "lr", "lr: got 10.5; allowed: a number in [0, 10]"),
    ({"action": "set"}, "lr", "lr: give at least one of lr, apical, jacobian"),
    ({"action": "view", "units": [0, 8]}, "units",
     "units: got [0, 8]; allowed: a list of 1 to 32 distinct unit indices in [0, 7]"),
    ({"action": "view", "units": [1, 1]}, "units", ""),
    ({"action": "view", "seed_index": 2}, "seed_index",
     "seed_index: got 2; allowed: an integer in [0, 1]"),
    ({"action": "checkpoint", "name": "a/b"}, "name", "name: got 'a/b'; allowed: 1-64 letters"),
    ({"action": "branch", "changes": [1]}, "changes", "changes: must be an object"),
    ({"action": "evaluate", "steps": 0}, "steps", "steps: got 0; allowed: an integer in [1, 1e+06]"),
    ({"action": "warp"}, "action", "action: got 'warp'; allowed: pause, resume, step, stop"),
    ({"action": "pause", "k": 1}, "k", "k: unknown parameter for pause; allowed: none"),
]


@pytest.mark.parametrize("body", VALID)
def test_a_valid_control_passes_check_params_and_the_documented_union(body: dict) -> None:
    params = {k: v for k, v in body.items() if k != "action"}
    parsed = check_params(body["action"], params, 8, 2)  # a run of n=8 units and 2 seeds
    assert set(parsed) <= set(params) | {"changes"}
    TypeAdapter(Control).validate_python(body)


@pytest.mark.parametrize(("body", "field", "message"), INVALID)
def test_a_bad_control_is_refused_naming_the_field(body: dict, field: str, message: str) -> None:
    params = {k: v for k, v in body.items() if k != "action"}
    with pytest.raises(ConfigError) as err:
        check_params(body["action"], params, 8, 2)
    assert err.value.field == field and str(err.value).startswith(message)


def test_control_actions_are_declared_once() -> None:
    assert BACKEND_ACTIONS is ACTIONS  # the backends' table is the models'
    assert set(CONTROL_MODELS) == set(ACTIONS) == {
        "pause", "resume", "step", "stop", "speed", "fast_forward", "set", "view",
        "checkpoint", "branch", "evaluate"}
    schemas = openapi_document()["components"]["schemas"]
    mapping = schemas["Control"]["discriminator"]["mapping"]
    for action, params in ACTIONS.items():
        model = schemas[mapping[action].rsplit("/", 1)[1]]
        assert set(model["properties"]) == {"action", *params}
        assert model["properties"]["action"]["const"] == action
    with pytest.raises(ValidationError):
        TypeAdapter(Control).validate_python({"action": "step", "k": 0})
