"""The REST API's one schema: control actions (a tagged union on ``action``, their parameters'
ranges declared once as Settings), frames, run info, errors, and the OpenAPI document
generated from these models and the run config's (``simulator.schema``).

Why pydantic's own JSON schema (``model_json_schema`` / ``TypeAdapter.json_schema`` with
``ref_template="#/components/schemas/{model}"``) rather than spectree or flask-openapi3: no
new dependency (pydantic is already the simulator's), and no coupling to Flask routing (the
routes stay plain blueprint functions; the Celery server and the tests read the same models).
A test checks that every /api route of the Flask url_map is documented here.

Validation of control actions is :func:`check_control` (``app.service.worker.check_params``
delegates to it). Frames stay orjson-encoded dicts on the hot path: the Frame model
documents them and the tests validate real frames against it.
"""

from __future__ import annotations

import copy
import functools
import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from simulator.schema import REF_TEMPLATE, REQUIRED, annotation, config_schemas, json_schemas
from simulator.settings import MAX_SEEDS, ConfigError, Setting, quote

MAX_LIVE_CHUNK = 100_000  # steps per frame at most
MAX_UNITS = 32            # units the traces may carry
NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
NAME_RE = re.compile(NAME_PATTERN)

# ---- control actions: every parameter's range, once -------------------------------------------
K = Setting("k", 1, "steps to advance, then pause", int, 1, 10**7)
STEPS_PER_FRAME = Setting("steps_per_frame", 0, "as fast as possible, one frame every this "
                          "many steps (0: automatic, about 10 frames/s)", int, 0, MAX_LIVE_CHUNK)
STEPS_PER_SECOND = Setting("steps_per_second", 10.0, "real-time pacing in steps per second "
                           "(frames about 10/s)", float, 0.1, 1e7)
TO = Setting("to", 0, "the step to fast-forward to (no frames until then)", int, 0, 10**9)


def set_rate_names() -> tuple[str, ...]:
    """The learning rates ``set`` accepts: lr (the network's), each population a rule owns
    and each rule setting that holds one (declared by the rule classes: simulator.rules
    live_populations, e.g. lr_apical -> apical, lr_kernel -> jacobian)."""
    from simulator.rules import live_populations

    live = live_populations()
    return ("lr", *dict.fromkeys(live.values()), *live)


_RATE_WHAT = {"lr": "network (basal W and readout)"}
RATES = tuple(Setting(name, 0.0, f"{_RATE_WHAT.get(name, name)} learning rate, mid-run", float,
                      0.0, 10.0) for name in set_rate_names())
EVAL_STEPS = Setting("steps", 1000, "held-out steps", int, 1, 10**6)
SEED_INDEX = Setting("seed_index", 0, "index of the seed the traces show", int, 0,
                     MAX_SEEDS - 1)

_Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class _Action(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Pause(_Action):
    """Stop stepping; keep the worker and its state."""

    action: Literal["pause"]


class Resume(_Action):
    """Continue; also restarts an interrupted, parked or 'failed: ... (resumable)' run from
    its last checkpoint in a new worker."""

    action: Literal["resume"]


class Stop(_Action):
    """End the run for good (status stopped), with a checkpoint."""

    action: Literal["stop"]


class Step(_Action):
    """Advance k steps, then pause."""

    action: Literal["step"]
    k: annotation(K, default=REQUIRED)  # type: ignore[valid-type]


class Speed(_Action):
    """Give exactly one: steps_per_frame (as fast as possible) or steps_per_second."""

    action: Literal["speed"]
    steps_per_frame: annotation(STEPS_PER_FRAME, default=None)  # type: ignore[valid-type]
    steps_per_second: annotation(STEPS_PER_SECOND, default=None)  # type: ignore[valid-type]
    narrate: bool | None = Field(None, description="with steps_per_second: slow to 10 steps/s "
                                                   "around phase switches and setting changes")

    @field_validator("narrate", mode="before")
    @classmethod
    def _flag(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, bool):
            raise ConfigError("narrate", f"got {quote(value)}; allowed: true or false")
        return value

    @model_validator(mode="after")
    def _one(self) -> Speed:
        if (self.steps_per_frame is None) == (self.steps_per_second is None):
            raise ConfigError("steps_per_frame", f"give exactly one of steps_per_frame "
                              f"({STEPS_PER_FRAME.allowed()}, 0: automatic) or "
                              f"steps_per_second ({STEPS_PER_SECOND.allowed()})")
        if self.narrate and self.steps_per_second is None:
            raise ConfigError("narrate", "got true with steps_per_frame; allowed: narrate only "
                                         "with steps_per_second (its base pace)")
        return self


class FastForward(_Action):
    """No frame or display work until step ``to``, then live again."""

    action: Literal["fast_forward"]
    to: annotation(TO, default=REQUIRED)  # type: ignore[valid-type]


class _SetBase(_Action):
    """Learning rates and / or the phase schedule, mid-run, without reset (any subset)."""

    action: Literal["set"]
    phases: str | None = Field(None, description="the phase schedule (docs/model.md section "
                                                 "4)")

    @field_validator("phases", mode="before")
    @classmethod
    def _schedule(cls, value: Any) -> Any:
        from simulator.phases import parse_schedule

        parse_schedule(value)
        return value.strip()

    @model_validator(mode="after")
    def _some(self) -> _SetBase:
        names = [rate.name for rate in RATES]
        if all(getattr(self, key) is None for key in (*names, "phases")):
            raise ConfigError("lr", f"give at least one of {', '.join(names)} ("
                                    f"{RATES[0].allowed()}) or phases (a schedule string)")
        return self


# one optional field per rate a rule declares live: a new rule's live setting is settable
Set = create_model("Set", __base__=_SetBase, __doc__=_SetBase.__doc__,
                   **{rate.name: (annotation(rate, default=None), None) for rate in RATES})


class View(_Action):
    """Which units and which seed the traces carry."""

    action: Literal["view"]
    units: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, min_length=1, max_length=MAX_UNITS, description="distinct unit indices, each "
                                                              "below the run's n")
    seed_index: annotation(SEED_INDEX, default=None)  # type: ignore[valid-type]

    @field_validator("units", mode="before")
    @classmethod
    def _units(cls, units: Any, info: ValidationInfo) -> Any:
        n = (info.context or {}).get("n", 4096)
        bad = ConfigError("units", f"got {quote(units)}; allowed: a list of 1 to {MAX_UNITS} "
                                   f"distinct unit indices in [0, {n - 1}]")
        if not isinstance(units, list) or not 1 <= len(units) <= MAX_UNITS:
            raise bad
        if any(isinstance(u, bool) or not isinstance(u, int) or not 0 <= u < n for u in units):
            raise bad
        if len(set(units)) != len(units):
            raise bad
        return list(units)

    @field_validator("seed_index", mode="after")
    @classmethod
    def _seed(cls, index: int, info: ValidationInfo) -> int:
        seeds = (info.context or {}).get("seeds", MAX_SEEDS)
        if index >= seeds:
            raise ConfigError("seed_index", f"got {index}; allowed: an integer in "
                                            f"[0, {seeds - 1}]")
        return index

    @model_validator(mode="after")
    def _some(self) -> View:
        if self.units is None and self.seed_index is None:
            raise ConfigError("units", "give units (a list of unit indices) and/or seed_index")
        return self


def _check_name(value: Any, field_name: str) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ConfigError(field_name, f"got {quote(value)}; allowed: 1-64 letters, digits, "
                                      "'_', '-', '.'")
    return value


class Checkpoint(_Action):
    """Save a checkpoint now; answers {"checkpoint": name}."""

    action: Literal["checkpoint"]
    name: _Name | None = Field(None, description="a name to keep it under (named "
                                                 "checkpoints are never pruned)")

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> Any:
        return _check_name(value, "name")


class Branch(_Action):
    """A new run from a checkpoint with config changes; answers {"id": new}."""

    action: Literal["branch"]
    changes: dict[str, Any] = Field(default_factory=dict, description="config changes, e.g. "
                                    "{\"rule\": \"rtrl\"} (task, task_args, n and seeds stay)")
    checkpoint: _Name | None = Field(None, description="from this checkpoint (default: now)")

    @field_validator("changes", mode="before")
    @classmethod
    def _changes(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ConfigError("changes", "must be an object of config changes, e.g. "
                                         "{\"rule\": \"dni-b\"}")
        return value

    @field_validator("checkpoint", mode="before")
    @classmethod
    def _checkpoint(cls, value: Any) -> Any:
        return _check_name(value, "checkpoint")


class Evaluate(_Action):
    """The held-out loss now; it appears in the next frame."""

    action: Literal["evaluate"]
    steps: annotation(EVAL_STEPS, default=None)  # type: ignore[valid-type]


CONTROL_MODELS: dict[str, type[_Action]] = {
    model.model_fields["action"].annotation.__args__[0]: model  # type: ignore[union-attr]
    for model in (Pause, Resume, Step, Stop, Speed, FastForward, Set, View, Checkpoint, Branch,
                  Evaluate)}

#: action -> its parameters (``app.service.base.ACTIONS``).
ACTIONS: dict[str, tuple[str, ...]] = {
    name: tuple(key for key in model.model_fields if key != "action")
    for name, model in CONTROL_MODELS.items()}

#: The body of POST /api/runs/{id}/control: one of the actions, told apart by ``action``.
Control = Annotated[Pause | Resume | Step | Stop | Speed | FastForward | Set | View | Checkpoint
                    | Branch | Evaluate, Field(discriminator="action")]


def check_action(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The action and its parameters of a control body; ConfigError naming "action" (missing
    or unknown) or an unknown parameter. Ranges: :func:`check_control`, with the run's sizes."""
    if "action" not in body:
        raise ConfigError("action", f"required; allowed: {', '.join(ACTIONS)}")
    params = dict(body)
    action = params.pop("action")
    _check_keys(action, params)
    return action, params


def _check_keys(action: Any, params: dict[str, Any]) -> None:
    if not isinstance(action, str) or action not in ACTIONS:
        raise ConfigError("action", f"got {quote(action)}; allowed: {', '.join(ACTIONS)}")
    allowed = ACTIONS[action]
    for key in params:
        if key not in allowed:
            raise ConfigError(str(key)[:100], f"unknown parameter for {action}; allowed: "
                                              f"{', '.join(allowed) or 'none'}")


def check_control(action: Any, params: dict[str, Any], n: int, seeds: int) -> dict[str, Any]:
    """Validate a control command's params against its model (n units, seeds: the run's
    sizes); returns the given ones parsed. ConfigError naming "action" or the parameter."""
    _check_keys(action, params)
    model = CONTROL_MODELS[action]
    given = {k: v for k, v in params.items() if v is not None}
    try:
        parsed = model.model_validate({"action": action, **given},
                                      context={"n": n, "seeds": seeds})
    except ValidationError as exc:
        _raise(exc, model)
    out = parsed.model_dump(exclude={"action"})
    return {k: v for k, v in out.items() if k in given or k == "changes"}


def _raise(exc: ValidationError, model: type[BaseModel]) -> Any:
    for error in exc.errors():
        original = (error.get("ctx") or {}).get("error")
        if isinstance(original, ConfigError):
            raise original from None
    error = exc.errors()[0]
    name = str(error["loc"][0]) if error["loc"] else "action"
    info = model.model_fields.get(name)
    text = info.description if info is not None else ""
    if error["type"] == "missing":
        raise ConfigError(name, f"required: {text}") from None
    raise ConfigError(name, f"got {quote(error.get('input'))}; {error['msg']}") from None


# ---- what the API answers -------------------------------------------------------------------
Series = list[float | None]


class Envelope(BaseModel):
    """A series binned to at most max_points: per bin the mean over seeds and steps and the
    min / max envelope (null where a run diverged)."""

    mean: Series
    min: Series
    max: Series
    step: list[int] | None = Field(None, description="each bin's last step")


class Traces(BaseModel):
    seed: int
    units: list[int]
    step: list[int]
    V: list[Series] = Field(description="per unit: basal potential")
    U: list[Series] = Field(description="per unit: apical potential")
    r: list[Series] = Field(description="per unit: rate")


class TaskView(BaseModel):
    seed: int
    step: list[int]
    x: list[Series]
    y: list[Series]
    pred: list[Series]


class Frame(BaseModel):
    """One telemetry frame (``simulator.telemetry.make_frame``, plus seq, run and wall added
    by the service): the summary of one ``advance`` call, steps t0 to t1."""

    model_config = ConfigDict(extra="allow")

    seq: int = Field(description="the frame's number: pass the last one as ?after=")
    run: str | None = None
    t0: int
    t1: int
    step: int | None = None
    wall: float | None = Field(None, description="unix time the frame was made")
    phase: str
    phases: list[list[Any]] = Field(description="[start, stop, phase name] spans in the frame")
    loss: Envelope
    loss_seeds: Series = Field(description="mean loss over the frame, per seed")
    diagnostics: dict[str, Envelope]
    alignment: Envelope | None = Field(None, description="cosine to the exact gradient (with "
                                                         "align); compare: per rule")
    status: str
    traces: Traces | None = None
    task: TaskView | None = None
    weight_change: dict[str, Any] | None = None
    weight_norm: dict[str, float] | None = None
    test_loss: Series | None = None
    detail: bool | None = None
    run_status: str | None = None


class Frames(BaseModel):
    frames: list[Frame]
    cursor: int = Field(description="seq of the newest frame: the next call's ?after=")


class Cost(BaseModel):
    """simulator.cost.Cost: the config's estimated cost."""

    memory_bytes: int = Field(description="estimated peak memory")
    disk_bytes_per_1000_steps: int = Field(description="CSV history")
    checkpoint_bytes: int
    flops_per_step: int = Field(description="all seeds")
    work_flops: int = Field(description="flops_per_step x steps")
    human: str


class Budgets(BaseModel):
    """Bytes and FLOP; 0: no limit."""

    run_memory: int
    total_memory: int
    run_work: int


class Estimate(Cost):
    fits: bool = Field(description="within the per-run budgets")
    budgets: Budgets


class RunInfo(BaseModel):
    """One run (GET /api/runs/{id}); backends may add keys (the local one: cursor, alive,
    pid, last_test_step)."""

    model_config = ConfigDict(extra="allow")

    id: str
    config: dict[str, Any] = Field(description="the validated config (RunConfig)")
    status: str = Field(description="ready, running, paused, parked (checkpointed and without a "
                                    "worker; resume, or a poll of a running one, continues it),"
                                    " finished, stopped, interrupted, 'failed: reason', "
                                    "'failed: reason (resumable)', 'diverged at step N'")
    step: int
    steps_per_second: float
    created: float
    parent: str | None = Field(description="the run this was branched from")
    best_test_loss: Series | None
    last_test_loss: Series | None
    reference_levels: dict[str, float]
    task_view: dict[str, Any]
    phases: str
    seeds: list[int]
    steps_per_frame: int
    target_steps: int
    checkpoints: list[str]
    view: dict[str, Any]
    learning_rates: dict[str, float]
    cost: Cost | None
    owner: str | None = Field(None, description="who created it: 'admin' (the serve token) "
                                                "or a user")


class RunList(BaseModel):
    runs: list[RunInfo]


class Created(BaseModel):
    id: str
    run: RunInfo


class Deleted(BaseModel):
    ok: bool
    id: str


class ControlResult(BaseModel):
    model_config = ConfigDict(extra="allow")

    ok: bool
    status: str | None = None
    step: int | None = None
    id: str | None = Field(None, description="branch: the new run")
    checkpoint: str | None = None
    test_loss: Series | None = None


class TestLoss(BaseModel):
    step: list[int]
    mean: Series
    seeds: list[Series]


class History(BaseModel):
    model_config = ConfigDict(extra="allow")

    t: int
    cursor: int
    step: list[int]
    loss: Envelope
    diagnostics: dict[str, Envelope]
    alignment: Envelope | None
    weight_norm: dict[str, Envelope]
    test_loss: TestLoss
    phases: list[list[Any]]


class Error(BaseModel):
    """Every refusal: 'field: got X; allowed: Y' (a value quoted to about 100 characters)."""

    error: str = Field(description="'field: message'")
    field: str | None


#: Body keys of POST /api/runs that are not config fields.
CREATE_EXTRAS = {"start": (bool, Field(True, description="false: create it ready (paused at "
                                                         "step 0)")),
                 "view": (dict[str, Any] | None, Field(None, description=(
                     "the traces' units and seed: {\"units\": [...], \"seed_index\": i}")))}


def create_body_model() -> type[BaseModel]:
    """POST /api/runs' body: the run config plus start and view."""
    from simulator.schema import run_config_model

    return create_model("CreateRun", __base__=run_config_model(), **CREATE_EXTRAS)


# ---- the OpenAPI document -------------------------------------------------------------------
def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF_TEMPLATE.format(model=name)}


def _ok(schema: dict[str, Any], text: str = "OK", mime: str = "application/json") -> dict:
    return {"description": text, "content": {mime: {"schema": schema}}}


#: (path, method, operationId, summary, request body model or None, answer, error codes,
#: query parameters as (name, Setting)).
_RUN = "/api/runs/{run_id}"
QUERIES = {
    "after": Setting("after", -1, "the cursor of the last call (-1: every frame kept)", int,
                     -1, 2**62),
    "max_points": Setting("max_points", 500, "bins per series", int, 1, 100_000),
    "start": Setting("start", 0, "first step", int, 0, 10**12),
    "stop": Setting("stop", 0, "last step", int, 0, 10**12),
}
ROUTES: tuple[tuple[str, str, str, str, str | None, str, str, tuple[str, ...]], ...] = (
    ("/api/runs", "get", "listRuns", "List every run (newest first)", None, "RunList", "", ()),
    ("/api/runs", "post", "createRun", "Create (and start) a run", "CreateRun", "201:Created",
     "400 409 413 422 503 507", ()),
    ("/api/estimate", "post", "estimate", "A config's cost against this server's budgets (no "
     "run is made)", "RunConfig", "Estimate", "400 413 422", ()),
    (_RUN, "get", "getRun", "One run", None, "RunInfo", "404", ()),
    (_RUN, "delete", "deleteRun", "Stop and delete a run and its files", None, "Deleted", "404",
     ()),
    (f"{_RUN}/frames", "get", "getFrames", "Telemetry frames after a cursor (only new ones)",
     None, "Frames", "400 404", ("after",)),
    (f"{_RUN}/history", "get", "getHistory", "Whole-run decimated scalar history (min/max "
     "envelopes)", None, "History", "400 404", ("max_points", "start", "stop")),
    (f"{_RUN}/control", "post", "control", "Control a run: " + ", ".join(ACTIONS), "Control",
     "ControlResult", "400 404 409 413 422 503 507", ()),
    (f"{_RUN}/export.csv", "get", "exportCsv", "Per-step scalar history as CSV (full resolution "
     "within the run's history budget, then means over blocks of steps): step, seed, "
     "train_loss, diagnostics..., block", None, "csv", "404", ()),
    (f"{_RUN}/config.json", "get", "exportConfig", "The run's config (re-POSTable to "
     "/api/runs)", None, "RunConfig", "404", ()),
    ("/api/openapi.json", "get", "openapi", "This document", None, "object", "", ()),
)


def component_schemas() -> dict[str, Any]:
    """Every model of the API as OpenAPI components (the run config's from the simulator)."""
    schemas = config_schemas()
    schemas.update(json_schemas({
        "CreateRun": create_body_model(), "Control": Control, "RunInfo": RunInfo,
        "RunList": RunList, "Created": Created, "Deleted": Deleted, "Frame": Frame,
        "Frames": Frames, "History": History, "ControlResult": ControlResult, "Error": Error,
        "Cost": Cost, "Estimate": Estimate}))
    return schemas


def openapi_document() -> dict[str, Any]:
    """OpenAPI 3.1 description of every endpoint, its schemas generated from the models (made
    once per set of registered rules and tasks: about 0.1 s; a copy each call)."""
    from simulator.rules import RULES
    from simulator.tasks import TASKS

    return copy.deepcopy(_document(tuple(RULES), tuple(TASKS)))


@functools.lru_cache(maxsize=4)
def _document(rules: tuple[str, ...], tasks: tuple[str, ...]) -> dict[str, Any]:
    err = _ok(_ref("Error"), "error naming the field")
    run_id = {"name": "run_id", "in": "path", "required": True, "schema": {"type": "string"}}
    paths: dict[str, Any] = {}
    for path, method, op_id, summary, body, answer, errors, queries in ROUTES:
        item = paths.setdefault(path, {"parameters": [run_id]} if "{run_id}" in path else {})
        status, _, name = answer.rpartition(":")
        if name == "csv":
            ok = _ok({"type": "string"}, "CSV", "text/csv")
        else:
            ok = _ok({"type": "object"} if name == "object" else _ref(name))
        operation: dict[str, Any] = {"summary": summary, "operationId": op_id,
                                     "responses": {status or "200": ok,
                                                   **{code: err for code in errors.split()}}}
        if body:
            operation["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": _ref(body)}}}
        if queries:
            operation["parameters"] = [
                {"name": q, "in": "query", "required": False,
                 "description": f"{QUERIES[q].help} ({QUERIES[q].allowed()})",
                 "schema": {"type": "integer", "minimum": QUERIES[q].low,
                            "maximum": QUERIES[q].high}} for q in queries]
        item[method] = operation
    document = {"openapi": "3.1.0",
                "info": {"title": "Plasticity Lab run service", "version": "0.2.0",
                         "description": "Runs in background workers, live telemetry frames "
                                        "after a cursor, control, persistent history. Every "
                                        "refusal: {\"error\": \"field: got X; allowed: Y\", "
                                        "\"field\": ...}."},
                "paths": paths, "components": {"schemas": component_schemas()}}
    from app.experiments import add_openapi as add_experiments  # grids of runs
    from app.exports import add_openapi as add_exports  # every scalar as CSV / JSON / zip
    from app.sharing import add_openapi  # sign-in, viewer links, copies

    return add_experiments(add_exports(add_openapi(document)))
