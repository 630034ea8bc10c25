"""The one schema of a run's config: pydantic models generated from the :class:`Setting`
declarations (the run's own scalars in ``simulator.config.SCALARS`` and every rule's and
task's ``settings``).

A rule or task declares its settings once; from that declaration come

* validation: :func:`validate_settings` (used by ``settings.resolve``, hence by
  ``make_rule_args``, ``make_task`` and ``RunConfig``) runs the generated model, whose
  validators are the settings' own ``Setting.parse``, so refusals keep the one shape
  ``field: got X; allowed: Y`` (a :class:`ConfigError` with ``.field``);
* the JSON schema of the REST API's OpenAPI document (:func:`config_schemas`), with each
  rule's and task's settings as their own component (``RuleArgs.<rule>``,
  ``TaskArgs.<task>``);
* the CLI's ``run --help`` (:func:`help_text`).

No Dash or Flask here: the simulator's CLI uses it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    create_model,
)
from pydantic_core import PydanticUndefined

from simulator.settings import ConfigError, Setting

#: ``annotation(..., default=REQUIRED)``: the field must be given.
REQUIRED: Any = PydanticUndefined

#: ``$ref`` template of the schemas: the components of an OpenAPI document.
REF_TEMPLATE = "#/components/schemas/{model}"

_KINDS: dict[type, type] = {int: int, float: float, str: str, bool: bool}


def annotation(setting: Setting, where: str = "", default: Any = "setting") -> Any:
    """The pydantic type of one setting: its kind, range, choices, default and help for the
    schema; ``Setting.parse`` as the validator (so a refusal is the setting's own message).
    ``default``: the setting's own (the default), another value (not validated, e.g. None
    for an optional parameter) or ``REQUIRED``."""
    if setting.choices:
        kind: Any = Literal[tuple(setting.choices)]
    else:
        kind = _KINDS[setting.kind]
    numeric = setting.kind in (int, float)
    if isinstance(default, str) and default == "setting":
        default = setting.default
    if default is None:
        kind = kind | None  # an optional parameter: absent or null
    field = Field(default=default, description=setting.help,
                  ge=setting.low if numeric else None, le=setting.high if numeric else None)
    return Annotated[kind, field, BeforeValidator(functools.partial(_parse, setting, where))]


def _parse(setting: Setting, where: str, value: Any) -> Any:
    return setting.parse(value, where)


@functools.lru_cache(maxsize=256)
def settings_model(settings: tuple[Setting, ...], where: str, title: str) -> type[BaseModel]:
    """A model with one field per setting; unknown keys are refused. Cached per declaration."""
    fields: dict[str, Any] = {s.name: annotation(s, where) for s in settings}
    return create_model(title, __config__=ConfigDict(extra="forbid", title=title), **fields)


def raise_config_error(exc: ValidationError, where: str, allowed: Sequence[str]) -> None:
    """Re-raise a model's ValidationError as today's ConfigError: an unknown key first (as
    the settings were always checked), else the first setting's own refusal."""
    errors = exc.errors()
    for error in errors:
        if error["type"] == "extra_forbidden":
            key = str(error["loc"][-1]) if error["loc"] else "?"
            names = ", ".join(allowed) or "none"
            raise ConfigError(f"{where}.{key}" if where else key,
                              f"unknown setting; allowed: {names}") from None
    for error in errors:
        original = (error.get("ctx") or {}).get("error")
        if isinstance(original, ConfigError):
            raise original from None
    first = errors[0] if errors else {"loc": (), "msg": str(exc)}
    loc = ".".join(str(part) for part in (where, *first["loc"]) if part != "")
    raise ConfigError(loc or where or "config", str(first["msg"])) from None


def validate_settings(settings: Sequence[Setting], given: Mapping[str, Any],
                      where: str) -> dict[str, Any]:
    """Defaults filled, every value parsed and range-checked by the generated model."""
    model = settings_model(tuple(settings), where, where or "settings")
    try:
        return model.model_validate(dict(given)).model_dump()
    except ValidationError as exc:
        raise_config_error(exc, where, [s.name for s in settings])
        raise  # not reached


# ---- the run config ---------------------------------------------------------------------------
#: The config fields that are not a Setting: (JSON type, default, description). One place for
#: their help texts: the OpenAPI document and the CLI's --help read them from here.
OTHER_FIELDS: dict[str, tuple[Any, Any, str]] = {
    "phases": (str, "all", "circuit phases: a preset ({presets}) or '[NAME=]POP+POP:STEPS,...' "
                           "(docs/model.md section 4)"),
    "seeds": (list[int] | int | str, [0], "the ensemble's seeds: a list of integers in "
                                          "[0, 2^31-1], an integer, or text like '0-4' or "
                                          "'0,3,7' (at most {max_seeds}, no repeats)"),
    "align": (str | None, None, "shadow exact gradient for alignment: auto, rtrl or bptt:T "
                                "(omit or null: off; docs/model.md section 5)"),
    "compare": (list[str] | str, [], "comparison rules measured passively on this run's "
                                     "network (the JMLR protocol): a list of rule names or "
                                     "text like 'rflo,kernl,dni-b'; needs an exact gradient "
                                     "(align, else auto)"),
}


def _names(registry: Mapping[str, Any]) -> Any:
    return Literal[tuple(sorted(registry))]


def run_config_model() -> type[BaseModel]:
    """The run config as one model (POST /api/runs' body, the CLI's run options): the run's
    scalar settings, the task and rule with their settings models, and OTHER_FIELDS. Made
    again when a rule or task is registered."""
    from simulator.rules import RULES
    from simulator.tasks import TASKS

    return _run_config_model(tuple(RULES), tuple(TASKS))


@functools.lru_cache(maxsize=8)
def _run_config_model(rules: tuple[str, ...], tasks: tuple[str, ...]) -> type[BaseModel]:
    from simulator.config import MAX_SEEDS, SCALARS, RunConfig
    from simulator.phases import PRESETS

    RULES, TASKS = dict.fromkeys(rules), dict.fromkeys(tasks)

    defaults = RunConfig()
    fields: dict[str, Any] = {
        "task": (_names(TASKS), Field(defaults.task, description="the task (python -m "
                                                                 "simulator tasks)")),
        "task_args": (dict[str, Any], Field(default_factory=dict, description=(
            "settings of the chosen task: the matching TaskArgs.<task> schema"))),
        "rule": (_names(RULES), Field(defaults.rule, description="the learning rule (python "
                                                                 "-m simulator rules)")),
        "rule_args": (dict[str, Any], Field(default_factory=dict, description=(
            "settings of the chosen rule: the matching RuleArgs.<rule> schema"))),
    }
    fields.update({s.name: (annotation(s), s.default) for s in SCALARS})
    for name, (kind, default, text) in OTHER_FIELDS.items():
        text = text.format(presets=", ".join(PRESETS), max_seeds=MAX_SEEDS)
        fields[name] = (kind, Field(default, description=text))
    return create_model("RunConfig", __config__=ConfigDict(extra="forbid", title="RunConfig"),
                        **fields)


def component_name(text: str) -> str:
    """``text`` as an OpenAPI component name (letters, digits, '.', '-', '_')."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def rule_args_models() -> dict[str, type[BaseModel]]:
    """Each rule's settings model, by rule name (component ``RuleArgs.<rule>``)."""
    from simulator.rules import RULES

    return {name: settings_model(tuple(cls.settings), "rule_args",
                                 component_name(f"RuleArgs.{name}"))
            for name, cls in RULES.items()}


def task_args_models() -> dict[str, type[BaseModel]]:
    """Each task's settings model, by task name (component ``TaskArgs.<task>``)."""
    from simulator.tasks import TASKS

    return {name: settings_model(tuple(cls.settings), "task_args",
                                 component_name(f"TaskArgs.{name}"))
            for name, cls in TASKS.items()}


def json_schemas(models: Mapping[str, Any]) -> dict[str, Any]:
    """``{name: JSON schema}`` for models (or other types), refs into the components; the
    definitions they pull in (nested models) are included."""
    out: dict[str, Any] = {}
    for name, model in models.items():
        schema = TypeAdapter(model).json_schema(ref_template=REF_TEMPLATE)
        out.update(schema.pop("$defs", {}))
        out[name] = schema
    return out


def config_schemas() -> dict[str, Any]:
    """RunConfig and every rule's and task's settings, as OpenAPI component schemas."""
    rules, tasks = rule_args_models(), task_args_models()
    models: dict[str, Any] = {"RunConfig": run_config_model()}
    models.update({m.__name__: m for m in (*rules.values(), *tasks.values())})
    schemas = json_schemas(models)
    props = schemas["RunConfig"]["properties"]
    for key, registry in (("rule_args", rules), ("task_args", tasks)):
        props[key]["anyOf"] = [{"$ref": REF_TEMPLATE.format(model=m.__name__)}
                               for m in registry.values()]
    return schemas


def help_text(setting: Setting) -> str:
    """A setting's one-line help for the CLI: its text, default and allowed values."""
    return f"{setting.help} (default {setting.default}; {setting.allowed()})".replace("%", "%%")


def registry_help(registry: Mapping[str, Any], option: str) -> str:
    """Every rule's (or task's) settings, for the epilog of ``run --help``."""
    lines = [f"{option} KEY=VALUE settings, per {option.strip('-').split('-')[0]} "
             "(default; allowed):"]
    for name, cls in registry.items():
        lines.append(f"  {name}: {cls.summary}")
        lines.extend(f"      {s.describe()}" for s in cls.settings)
        if not cls.settings:
            lines.append("      (no settings)")
    return "\n".join(lines).replace("%", "%%")
