"""Every scalar a run has, for slides and papers: CSV, JSON and zip exports, streamed.

One run's export joins two sources that the run service keeps (both bounded):

- the per-step table, ``scalars.csv`` (``Backend.export_csv``; see
  ``app.service.worker.HistoryCSV``): step, seed, train_loss, the rule's losses, alignment,
  norm_ratio, alignment_RULE per comparison rule, block (steps a row averages once the byte
  budget coarsened it);
- the per-frame history (``Backend.history``, a ``app.service.framebuffer.FrameBuffer``): the
  held-out test loss per seed at the steps it was measured, the weight norms per population
  (one value per frame while the history keeps frames apart; for long runs the mean over a
  history bin, at the bin's last step), the phase spans and the settings changes
  (``events``: the run's ``set`` actions with their step and values).

The **CSV** is the per-step table with ``phase``, ``test_loss`` and ``weight_norm_<pop>``
columns joined on step (and, for test loss, seed): a row gets a per-frame value measured at
a step it covers (the last such), else an empty field. The **events CSV** has one row per
changed setting (step, action, setting, value). The **JSON** document is
``{"run", "config", "columns", "rows", "series", "events"}``: ``rows`` is the same table as
the CSV (numbers; null where not measured), ``series`` the per-frame parts as they were
measured (test_loss, weight_norm, phases). The **zip** of one or more runs holds each run's
CSV, events CSV and JSON, named by run (``export_name``).

Everything streams: the table is read from its file in blocks and written out row by row,
so memory stays flat whatever the run's length; only the per-frame history (at most a few
thousand points per series) is held. Routes (a Blueprint under /api, behind the same
sign-in and access checks as the rest of the API):

    GET /api/runs/<id>/export/scalars.csv    the joined per-step table
    GET /api/runs/<id>/export/events.csv     the settings changes
    GET /api/runs/<id>/export/run.json       the whole document
    GET /api/export.zip?ids=A,B[&kind=all|csv|json]   a zip with each run's files
"""

from __future__ import annotations

import bisect
import dataclasses
import io
import json
import math
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, request

from app.api import _handle as api_errors
from app.service.base import Backend

#: history bins asked for the per-frame columns (the API's own maximum)
FRAME_POINTS = 100_000
#: runs in one zip at most
MAX_ZIP_RUNS = 64
BLOCK = 1 << 18  # bytes read and sent at a time
_NOT_FINITE = {"nan": "", "inf": "", "-inf": ""}
_RUN_KEYS = ("id", "status", "step", "created", "parent", "seeds", "phases",
             "learning_rates", "best_test_loss", "last_test_loss")


# ---- names ------------------------------------------------------------------------------------
def export_name(name: str, run_id: str, ext: str, panel: str = "") -> str:
    """A file name for a run's export: plasticity-<panel>-<run name>-<id>.<ext>, safe
    characters only ("dni · random fb" -> "dni_random-fb")."""
    words = [re.sub(r"[^A-Za-z0-9.+-]+", "-", w.strip()).strip("-")
             for w in (name or "").split("·")]
    stem = "_".join(w for w in words if w)[:80]
    parts = ["plasticity", panel, stem, run_id]
    return "-".join(p for p in parts if p) + f".{ext}"


def setup_line(name: str, config: Mapping[str, Any]) -> str:
    """The setup in one line, for the title of an exported image: the run's name, then
    rule, task, n, the key rates, seeds and phases ("dni-b · add · n 32 · lr 1e-3 ...")."""
    from app.dashboard.names import num

    rule_args = config.get("rule_args") or {}
    rates = [f"lr {num(config.get('lr'))}"] if config.get("lr") is not None else []
    rates += [f"{key} {num(value)}" for key, value in sorted(rule_args.items())
              if key.startswith("lr_") and isinstance(value, int | float)]
    from simulator.phases import PRESETS

    phases = str(config.get("phases", "all"))
    phases = next((name for name, text in PRESETS.items() if text == phases), phases)
    if len(phases) > 40:
        phases = phases[:39] + "…"
    seeds = config.get("seeds")
    seeds = ",".join(map(str, seeds[:4])) + ("…" if len(seeds) > 4 else "") \
        if isinstance(seeds, list) else seeds
    parts = [str(config.get("rule", "?")), str(config.get("task", "?")),
             f"n {config.get('n', '?')}", *rates,
             f"α {num(config['alpha'])}" if config.get("alpha") is not None else "",
             f"seeds {seeds}" if seeds is not None else "",
             f"phases {phases}", f"{num(config.get('steps'))} steps"]
    setup = " · ".join(p for p in parts if p)
    return setup if not name or name == config.get("rule") else f"{name} — {setup}"


# ---- one run's scalars ------------------------------------------------------------------------
@dataclasses.dataclass
class RunScalars:
    """What one run's export joins (module doc): its table's file and the per-frame parts."""

    run_id: str
    name: str
    info: dict[str, Any]
    config: dict[str, Any]
    csv_path: Path
    csv_size: int
    header: list[str]
    test_steps: list[int]
    test_values: list[list[float | None]]
    norm_steps: list[int]
    norms: dict[str, list[float | None]]
    spans: list[list[Any]]
    events: list[dict[str, Any]]

    @property
    def blocked(self) -> bool:
        return self.header[-1:] == ["block"]

    @property
    def columns(self) -> list[str]:
        """The joined table's columns: the file's, then phase, test_loss, weight_norm_<pop>
        (block, when the file has it, stays last)."""
        own = self.header[:-1] if self.blocked else self.header
        extra = ["phase", "test_loss", *(f"weight_norm_{p}" for p in self.norms)]
        return [*own, *extra, *(["block"] if self.blocked else [])]


def gather(backend: Backend, run_id: str, name: str | None = None) -> RunScalars:
    """A run's export sources (raises the backend's RunNotFound / Forbidden)."""
    from app.dashboard.names import names_by_id

    info = backend.get(run_id)
    run_id = str(info.get("id", run_id))
    if name is None:
        name = names_by_id([info])[run_id]
    path = Path(backend.export_csv(run_id))
    size = path.stat().st_size
    with open(path, "rb") as f:
        header = f.readline(1 << 16).decode("utf-8", "replace").strip().split(",")
    hist = backend.history(run_id, FRAME_POINTS)
    tests = hist.get("test_loss") or {}
    norms = hist.get("weight_norm") or {}
    norm_steps = list(hist.get("step") or [])
    keep = [i for i in range(len(norm_steps))
            if any(_finite(env["mean"][i]) for env in norms.values())]
    return RunScalars(
        run_id=run_id, name=name, info=info, config=dict(info.get("config") or {}),
        csv_path=path, csv_size=size, header=header,
        test_steps=[int(s) for s in tests.get("step") or []],
        test_values=[list(v) for v in tests.get("seeds") or []],
        norm_steps=[int(norm_steps[i]) for i in keep],
        norms={pop: [env["mean"][i] for i in keep] for pop, env in sorted(norms.items())},
        spans=[list(s) for s in hist.get("phases") or []],
        events=[dict(e) for e in hist.get("events") or []])


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def _text(x: Any) -> str:
    """A per-frame number as the CSV writes it: shortest exact float text, empty if none
    (a diverged value as "nan" would read "measured"; the file's own columns keep "nan")."""
    return repr(float(x)) if _finite(x) else ""


def complete_blocks(path: Path, size: int, block_size: int = BLOCK) -> Iterator[bytes]:
    """The file's first ``size`` bytes in blocks that end on a line break: complete lines
    only (the worker may be appending)."""
    left, tail = size, b""
    with open(path, "rb") as f:
        while left > 0:
            block = f.read(min(block_size, left))
            if not block:
                break
            left -= len(block)
            block = tail + block
            cut = block.rfind(b"\n") + 1
            tail = block[cut:]
            if cut:
                yield block[:cut]


def _lines(path: Path, size: int) -> Iterator[bytes]:
    """The file's complete lines within its first ``size`` bytes, without the header."""
    first = True
    for block in complete_blocks(path, size):
        lines = block.splitlines()
        if first and lines:
            lines, first = lines[1:], False
        yield from lines


def _last_in(steps: Sequence[int], lo: int, hi: int) -> int:
    """Index of the last of the sorted ``steps`` within [lo, hi], or -1."""
    i = bisect.bisect_right(steps, hi) - 1
    return i if i >= 0 and steps[i] >= lo else -1


def _schedule_phase(rs: RunScalars) -> Callable[[int], str] | None:
    """The phase at a step from the run's phase schedule, for steps older than the history's
    phase spans (it keeps the newest 4,096); None when the phases were changed mid-run (the
    config holds only the current schedule) or cannot be read."""
    from simulator.phases import parse_schedule

    text = rs.config.get("phases")
    if not isinstance(text, str) or any("phases" in e for e in rs.events):
        return None
    try:
        schedule = parse_schedule(text)
    except ValueError:
        return None
    return lambda t: schedule.at(t).name


def joined_rows(rs: RunScalars) -> Iterator[list[str]]:
    """The joined table's rows as text fields (``columns`` order; "" where not measured,
    numbers as the file or ``repr`` writes them)."""
    blocked = rs.blocked
    seeds = [int(s) for s in rs.info.get("seeds") or rs.config.get("seeds") or []]
    seed_index = {s: i for i, s in enumerate(seeds)}
    span_starts = [int(s[0]) for s in rs.spans]
    early = _schedule_phase(rs)
    pops = list(rs.norms)
    norm_text = [[_text(rs.norms[p][i]) for p in pops] for i in range(len(rs.norm_steps))]
    no_norms = [""] * len(pops)
    for line in _lines(rs.csv_path, rs.csv_size):
        fields = line.decode("ascii", "replace").split(",")
        if len(fields) != len(rs.header):
            continue
        try:
            step, seed = int(fields[0]), int(fields[1])
            block = max(1, int(fields[-1])) if blocked else 1
        except ValueError:
            continue
        last = step + block - 1
        j = bisect.bisect_right(span_starts, step) - 1  # the phase at the row's (first) step
        phase = str(rs.spans[j][2]) if j >= 0 and int(rs.spans[j][1]) > step else ""
        if not phase and early is not None and (not span_starts or step < span_starts[0]):
            phase = early(step)
        t = _last_in(rs.test_steps, step, last)
        test = ""
        if t >= 0:
            values = rs.test_values[t]
            k = seed_index.get(seed, -1)
            test = _text(values[k]) if 0 <= k < len(values) else ""
        n = _last_in(rs.norm_steps, step, last)
        own = fields[:-1] if blocked else fields
        yield [*own, phase, test, *(norm_text[n] if n >= 0 else no_norms),
               *([fields[-1]] if blocked else [])]


def _csv_field(value: str) -> str:
    if any(c in value for c in ',"\n\r'):
        return '"' + value.replace('"', '""') + '"'
    return value


def scalars_csv(rs: RunScalars) -> Iterator[bytes]:
    """The joined per-step table as CSV, in blocks of about 1 MiB."""
    phase = rs.columns.index("phase")
    out = [",".join(rs.columns)]
    size = 0
    for row in joined_rows(rs):
        row[phase] = _csv_field(row[phase])
        text = ",".join(row)
        out.append(text)
        size += len(text)
        if size > BLOCK:
            yield ("\n".join(out) + "\n").encode()
            out, size = [], 0
    if out:
        yield ("\n".join(out) + "\n").encode()


EVENT_COLUMNS = ("step", "action", "setting", "value")


def events_csv(rs: RunScalars) -> bytes:
    """One row per changed setting: step, action, setting, value."""
    lines = [",".join(EVENT_COLUMNS)]
    for event in rs.events:
        for key, value in event.items():
            if key in ("step", "action", "label"):  # label: the dashboard's mark, not a setting
                continue
            text = value if isinstance(value, str) else json.dumps(value)
            lines.append(",".join([str(event["step"]), _csv_field(str(event.get("action", ""))),
                                   _csv_field(str(key)), _csv_field(text)]))
    return ("\n".join(lines) + "\n").encode()


def _json(value: Any) -> str:
    return json.dumps(value, allow_nan=False, ensure_ascii=False,
                      default=lambda o: None, separators=(",", ":"))


def _clean(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def run_json(rs: RunScalars) -> Iterator[bytes]:
    """The whole document (module doc), streamed: ``rows`` row by row."""
    run = {key: rs.info.get(key) for key in _RUN_KEYS}
    run["name"] = rs.name
    run["setup"] = setup_line(rs.name, rs.config)
    series = {"test_loss": {"step": rs.test_steps, "seeds": run["seeds"],
                            "values": rs.test_values},
              "weight_norm": {"step": rs.norm_steps, **rs.norms},
              "phases": rs.spans}
    columns = rs.columns
    phase = columns.index("phase")
    yield ('{"run":' + _json(_clean(run)) + ',"config":' + _json(_clean(rs.config))
           + ',"columns":' + _json(columns) + ',"rows":[').encode()
    out: list[str] = []
    size, first = 0, True
    for row in joined_rows(rs):
        cells = [c if c and c not in _NOT_FINITE else "null" for c in row]
        cells[phase] = _json(row[phase]) if row[phase] else "null"
        text = ("" if first else ",") + "[" + ",".join(cells) + "]"
        first = False
        out.append(text)
        size += len(text)
        if size > BLOCK:
            yield "".join(out).encode()
            out, size = [], 0
    yield ("".join(out) + '],"series":' + _json(_clean(series)) + ',"events":'
           + _json(_clean(rs.events)) + "}").encode()


# ---- zips -------------------------------------------------------------------------------------
class _Pipe(io.RawIOBase):
    """An unseekable sink that zipfile writes into; ``take`` hands over what was written."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


KINDS = ("all", "csv", "json")


def run_files(rs: RunScalars, kind: str = "all") -> list[tuple[str, Iterable[bytes]]]:
    """One run's files in a zip, named by run: "all", its CSV, events CSV and JSON; "csv",
    the CSV and (when the run has settings changes) the events CSV; "json", the JSON."""
    files: list[tuple[str, Iterable[bytes]]] = []
    if kind in ("all", "csv"):
        files.append((export_name(rs.name, rs.run_id, "csv"), scalars_csv(rs)))
        if kind == "all" or rs.events:
            files.append((export_name(rs.name, rs.run_id, "events.csv"), [events_csv(rs)]))
    if kind in ("all", "json"):
        files.append((export_name(rs.name, rs.run_id, "json"), run_json(rs)))
    return files


def zip_stream(files: Iterable[tuple[str, Iterable[bytes]]]) -> Iterator[bytes]:
    """A zip of (name, chunks) built as it streams (deflated; nothing held but a block)."""
    sink = _Pipe()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, chunks in files:
            with zf.open(name, "w", force_zip64=True) as member:
                for chunk in chunks:
                    member.write(chunk)
                    if sum(map(len, sink.parts)) > BLOCK:
                        yield sink.take()
            yield sink.take()
    yield sink.take()


def zip_files(files: Mapping[str, Any]) -> bytes:
    """A zip (in memory) of {name in the zip: path on disk} (small files only)."""
    return b"".join(zip_stream((name, [Path(path).read_bytes()])
                               for name, path in files.items()))


# ---- routes -----------------------------------------------------------------------------------
exports = Blueprint("plasticity_exports", __name__, url_prefix="/api")

_IDS = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _attachment(body: Iterable[bytes], mimetype: str, filename: str) -> Response:
    return Response(body, mimetype=mimetype,
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


def _gather(run_id: str) -> RunScalars:
    from app.api import backend

    return gather(backend(), run_id)


@exports.get("/runs/<run_id>/export/scalars.csv")
def export_scalars(run_id: str) -> Response:
    rs = _gather(run_id)
    return _attachment(scalars_csv(rs), "text/csv", export_name(rs.name, rs.run_id, "csv"))


@exports.get("/runs/<run_id>/export/events.csv")
def export_events(run_id: str) -> Response:
    rs = _gather(run_id)
    return _attachment([events_csv(rs)], "text/csv",
                       export_name(rs.name, rs.run_id, "events.csv"))


@exports.get("/runs/<run_id>/export/run.json")
def export_json(run_id: str) -> Response:
    rs = _gather(run_id)
    return _attachment(run_json(rs), "application/json",
                       export_name(rs.name, rs.run_id, "json"))


def parse_ids(raw: str | None) -> list[str]:
    """``ids``: comma-separated run ids, 1 to MAX_ZIP_RUNS, each [A-Za-z0-9_-]{1,64}."""
    from app.api import BadRequest
    from simulator.settings import quote

    ids = [p for p in (raw or "").split(",") if p]
    allowed = f"1 to {MAX_ZIP_RUNS} run ids separated by commas"
    if not ids or len(ids) > MAX_ZIP_RUNS:
        raise BadRequest(f"ids: got {quote(raw or '')}; allowed: {allowed}", field="ids")
    for rid in ids:
        if not _IDS.match(rid):
            raise BadRequest(f"ids: got {quote(rid)}; allowed: {allowed}", field="ids")
    return list(dict.fromkeys(ids))


@exports.get("/export.zip")
def export_zip() -> Response:
    """One zip of every ticked run's files (404 naming the first unknown run, before any
    byte is sent)."""
    from app.api import BadRequest, backend
    from app.dashboard.names import names_by_id
    from simulator.settings import quote

    ids = parse_ids(request.args.get("ids"))
    kind = request.args.get("kind") or "all"
    if kind not in KINDS:
        raise BadRequest(f"kind: got {quote(kind)}; allowed: {', '.join(KINDS)}", field="kind")
    be = backend()
    infos = [be.get(rid) for rid in ids]
    named = names_by_id(infos)
    runs = [gather(be, str(info["id"]), named[str(info["id"])]) for info in infos]
    name = export_name(runs[0].name, runs[0].run_id, "zip") if len(runs) == 1 \
        else f"plasticity-{len(runs)}-runs.zip" if kind == "all" else f"runs-{kind}.zip"
    return _attachment(zip_stream(f for rs in runs for f in run_files(rs, kind)),
                       "application/zip", name)


@exports.errorhandler(Exception)
def _errors(exc: Exception) -> Response:
    """Errors answer like the rest of the API ("field: message" JSON)."""
    return api_errors(exc)


def add_openapi(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` (app.api's OpenAPI) with the export routes."""
    err = {"description": "error naming the field",
           "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    run_id = {"name": "run_id", "in": "path", "required": True, "schema": {"type": "string"}}

    def ok(mime: str, text: str) -> dict[str, Any]:
        schema = {"type": "string", "format": "binary"} if mime == "application/zip" else (
            {"type": "object"} if mime == "application/json" else {"type": "string"})
        return {"description": text, "content": {mime: {"schema": schema}}}

    def one(summary: str, op: str, mime: str, text: str) -> dict[str, Any]:
        return {"parameters": [run_id], "get": {
            "summary": summary, "operationId": op,
            "responses": {"200": ok(mime, text), "404": err}}}

    paths = document["paths"]
    paths["/api/runs/{run_id}/export/scalars.csv"] = one(
        "Every scalar per step: the history CSV joined on step with phase, test_loss (per "
        "seed, where measured) and weight_norm_<pop> (per frame)", "exportScalars", "text/csv",
        "CSV: step, seed, train_loss, rule losses, alignment..., phase, test_loss, "
        "weight_norm_<pop>..., block")
    paths["/api/runs/{run_id}/export/events.csv"] = one(
        "The run's settings changes (set actions)", "exportEvents", "text/csv",
        "CSV: step, action, setting, value")
    paths["/api/runs/{run_id}/export/run.json"] = one(
        "Every scalar as one JSON document", "exportRunJson", "application/json",
        "{run, config, columns, rows, series: {test_loss, weight_norm, phases}, events}")
    paths["/api/export.zip"] = {"get": {
        "summary": "A zip of several runs' exports, each file named by run",
        "operationId": "exportZip",
        "parameters": [
            {"name": "ids", "in": "query", "required": True, "description":
             f"1 to {MAX_ZIP_RUNS} run ids separated by commas", "schema": {"type": "string"}},
            {"name": "kind", "in": "query", "required": False, "description":
             "all (CSV, events CSV and JSON per run), csv or json",
             "schema": {"type": "string", "enum": list(KINDS), "default": "all"}}],
        "responses": {"200": ok("application/zip", "zip"), "400": err, "404": err}}}
    return document
