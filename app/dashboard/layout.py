"""The page: a header with the transport, a control panel built from the simulator's
registries (tasks, rules and their settings, phases, network), the live panels, and the
run table. No callbacks here; ids are the contract with callbacks.py, assets/ and tests.

Field ids are pattern-matching dicts ``{"type": "field", "key": KEY}`` (every one has a
``value``) with a message beside each, ``{"type": "msg", "key": KEY}``. KEY is
``n``/``alpha``/``lr``/``seeds``/``steps``, ``task_args.<task>.<name>`` or
``rule_args.<rule>.<name>``.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from dash import dash_table, dcc, html
from dash.dash_table.Format import Format, Scheme

from app.dashboard import figures, urlstate
from app.dashboard import panels as registry
from app.dashboard.export import export_bar
from app.dashboard.rulefacts import live_form_settings
from simulator.alignment import comparable_rules
from simulator.phases import POPULATIONS
from simulator.phases import PRESETS as PHASE_PRESETS
from simulator.rules import RULES
from simulator.settings import Setting
from simulator.tasks import TASKS

MAX_PHASE_ROWS = 6
#: the run table, the chips' steps/s and stale messages refresh this often (ms); status changes
#: come at once, with the live answers. Every tick re-renders Dash's store for every component
#: of the page: at 1 s it cost the live plots 10% of the main thread at max speed.
SLOW_CLOCK_MS = 5000
SPEEDS = urlstate.SPEEDS  # steps per second; 0: as fast as possible
#: keys index SPEEDS; narrate (100/s, slow around events) sits beside 100/s
SPEED_LABELS = {0: "10/s", 1: "30/s", 2: "100/s", 6: "narrate", 3: "300/s", 4: "1k/s",
                5: "max"}
#: paced for teaching: 100 steps/s (a preset may set its own; ``speed=`` in the URL)
DEFAULT_SPEED = urlstate.speed_index(urlstate.DEFAULT_SPEED)
#: titles, tab labels and notes come from the panel modules (app.dashboard.panels)
PANEL_TITLES = {p.NAME: p.TITLE for p in registry.PANELS}
TAB_LABELS = {p.NAME: p.TAB for p in registry.PANELS}
NOTES = {p.NAME: list(p.NOTES) for p in registry.PANELS}


# ---------------------------------------------------------------------------------------------
# small builders
# ---------------------------------------------------------------------------------------------
def field_id(key: str) -> dict[str, str]:
    return {"type": "field", "key": key}


def msg_id(key: str) -> dict[str, str]:
    return {"type": "msg", "key": key}


def labelled(label: str, control: Any, key: str | None = None, hint: str = "",
             badge: str = "") -> html.Div:
    """A row: label (with a hover help), the control, and the message slot beside it."""
    children: list[Any] = [html.Label([label, html.Span(badge, className="badge") if badge else None],
                                      title=hint, className="field-label")]
    children.append(control)
    if key is not None:
        children.append(html.Div(id=msg_id(key), className="field-msg", role="alert"))
    return html.Div(children, className="field-row", title=hint)


def setting_control(s: Setting, key: str, value: Any) -> Any:
    """Two choices: a segmented toggle; more: a dropdown; bool: a switch; else a text field
    (text, so that a bad value reaches validation and gets its message)."""
    if s.choices and len(s.choices) == 2:
        return dcc.RadioItems(id=field_id(key), options=list(s.choices), value=str(value),
                              inline=True, className="toggle")
    if s.choices:
        return dcc.Dropdown(id=field_id(key), options=list(s.choices), value=str(value),
                            clearable=False, className="dropdown")
    if s.kind is bool:
        return dcc.Checklist(id=field_id(key), options=[{"label": "", "value": "on"}],
                             value=["on"] if str(value).lower() == "true" else [],
                             className="switch")
    return dcc.Input(id=field_id(key), type="text", value=urlstate.text(value), debounce=0.35,
                     className="text-input", autoComplete="off", spellCheck=False)


def settings_block(settings: tuple[Setting, ...], prefix: str, live: dict[str, str] | None = None
                   ) -> list[html.Div]:
    rows = []
    ordered = sorted(settings, key=lambda s: 0 if s.choices and len(s.choices) == 2 else 1)
    for s in ordered:
        badge = "live" if live and s.name in live else ""
        rows.append(labelled(s.name, setting_control(s, f"{prefix}.{s.name}", s.default),
                             f"{prefix}.{s.name}", f"{s.help} ({s.allowed()})", badge))
    return rows


def section(title: str, children: list[Any], sid: str, hint: str = "") -> html.Details:
    return html.Details([html.Summary([title, html.Span(hint, className="summary-hint")]),
                         html.Div(children, className="section-body")],
                        open=True, id=f"section-{sid}", className="section")


# ---------------------------------------------------------------------------------------------
# the control panel
# ---------------------------------------------------------------------------------------------
def preset_buttons(items: list[dict[str, Any]]) -> html.Div:
    return html.Div([html.Button(p["title"], id={"type": "preset", "id": p["id"]},
                                 title=p["blurb"], className="preset", n_clicks=0)
                     for p in items], className="preset-grid", id="presets")


def task_section() -> html.Details:
    blocks = []
    for name, cls in TASKS.items():
        blocks.append(html.Div([html.Div(cls.summary, className="summary"),
                                *settings_block(cls.settings, f"task_args.{name}")],
                               id={"type": "task-block", "task": name}, className="task-block",
                               style={"display": "block" if name == "add" else "none"}))
    chooser = dcc.Dropdown(id="task", options=[{"label": n, "value": n} for n in TASKS],
                           value="add", clearable=False, className="dropdown")
    return section("Task", [labelled("task", chooser, "task"), *blocks], "task")


def rule_section() -> html.Details:
    options = [{"label": html.Span([html.B(name), html.Span(f" — {cls.summary}",
                                                              className="rule-summary")]),
                "value": name} for name, cls in RULES.items()]
    picker = dcc.Checklist(id="rules", options=options, value=["dni-b"], className="rule-list")
    blocks = []
    for name, cls in RULES.items():
        if not cls.settings:
            continue
        blocks.append(html.Div([html.H4(name), *settings_block(cls.settings, f"rule_args.{name}",
                                                               live_form_settings(name))],
                               id={"type": "rule-block", "rule": name}, className="rule-block",
                               style={"display": "none"}))
    return section("Rules", [
        html.Div("Tick one rule, or several for a race: one run per rule with the same seed, "
                 "input stream and initial weights.", className="hint"),
        picker, html.Div(id=msg_id("rules"), className="field-msg", role="alert"), *blocks,
    ], "rules", "one or a race")


def phase_row(i: int) -> html.Div:
    return html.Div([
        dcc.Input(id={"type": "ph-name", "i": i}, type="text", value="", placeholder="name",
                  className="text-input ph-name", debounce=0.35),
        dcc.Input(id={"type": "ph-steps", "i": i}, type="text", value="100", placeholder="steps",
                  className="text-input ph-steps", debounce=0.35),
        dcc.Checklist(id={"type": "ph-pops", "i": i}, options=list(POPULATIONS),
                      value=list(POPULATIONS), inline=True, className="ph-pops"),
    ], id={"type": "ph-row", "i": i}, className="ph-row",
        style={"display": "grid" if i == 0 else "none"})


def phase_section() -> html.Details:
    presets = [{"label": f"{k}: {v}", "value": k} for k, v in PHASE_PRESETS.items()]
    return section("Phases", [
        html.Div("A cycle of phases; in each, only the ticked sub-populations learn. "
                 "Shaded on every time plot.", className="hint"),
        dcc.Dropdown(id="phase-preset", options=presets, placeholder="load a schedule…",
                     className="dropdown"),
        html.Div([html.Span("phase name", className="ph-h"), html.Span("steps", className="ph-h")],
                 className="ph-head"),
        html.Div([phase_row(i) for i in range(MAX_PHASE_ROWS)], id="phase-rows"),
        html.Div([html.Button("+ phase", id="ph-add", n_clicks=0, className="small"),
                  html.Button("− phase", id="ph-remove", n_clicks=0, className="small")],
                 className="row-buttons"),
        html.Code(id="phase-string", className="schedule"),
        html.Div(id=msg_id("phases"), className="field-msg", role="alert"),
        dcc.Checklist(id="phase-race", options=[{"label": " also race against no phases "
                                                 "(every population learns every step)",
                                                 "value": "on"}],
                      value=[], className="check"),
        html.Span("live", className="badge", title="the schedule changes mid-run without reset"),
    ], "phases", "live")


def network_section(align_supported: bool) -> html.Details:
    rows = []
    hints = {"n": "recurrent units", "alpha": "leak α: r ← (1−α) r + α tanh(V)",
             "lr": "network learning rate (basal W and readout)",
             "seeds": "one seed, a list 0,3,7 or a range 0-4 (an ensemble)",
             "steps": "training steps (the run finishes there)"}
    for key in urlstate.CORE_FIELDS:
        value = urlstate.DEFAULT_SETUP[key]
        control = dcc.Input(id=field_id(key), type="text", value=value, debounce=0.35,
                            className="text-input", autoComplete="off", spellCheck=False)
        rows.append(labelled(key, control, key, hints[key], "live" if key == "lr" else ""))
    align_hint = ("runs an exact gradient (RTRL, or BPTT for large n) beside each rule and "
                  "plots the cosine between them; slows the run")
    rows.append(html.Div(dcc.Checklist(
        id="align", options=[{"label": " measure alignment with the exact gradient",
                              "value": "on", "disabled": not align_supported}],
        value=[], className="check"), title=align_hint if align_supported else
        "the run service does not offer alignment yet"))
    compare_hint = ("the JMLR protocol: each chosen rule computes its update on the same "
                    "network every step without applying it; the alignment panel shows each "
                    "one's cosine with the exact gradient (turns alignment on; slows the run)")
    rows.append(labelled("compare", dcc.Dropdown(
        id="compare", multi=True, value=[], placeholder="passive comparison rules…",
        options=[{"label": name, "value": name} for name in comparable_rules()],
        className="compare-select"), "compare", compare_hint))
    rows.append(html.Div(id="cost-estimate", className="cost-estimate",
                         title="estimated from each rule's formulas (simulator.cost); runs over "
                               "this server's budgets are refused"))
    rows.append(html.Div(id="restart-hint", className="restart-hint"))
    return section("Network", rows, "network")


def controls(preset_items: list[dict[str, Any]], align_supported: bool) -> html.Aside:
    return html.Aside([
        section("Presets", [preset_buttons(preset_items)], "presets", "one click"),
        task_section(),
        rule_section(),
        network_section(align_supported),
        phase_section(),
    ], id="controls", className="controls")


# ---------------------------------------------------------------------------------------------
# header, panels, table
# ---------------------------------------------------------------------------------------------
def header() -> html.Header:
    transport = html.Div([
        html.Button("↺", id="btn-reset", n_clicks=0, className="tbtn",
                    title="Reset: new run(s) from the controls at step 0 (key r)"),
        html.Button("▶", id="btn-play", n_clicks=0, className="tbtn play",
                    title="Play / pause (space)"),
        html.Button("■", id="btn-stop", n_clicks=0, className="tbtn",
                    title="Stop: end the runs on screen (they stay in the table; ↺ starts anew)"),
        html.Button("Step", id="btn-step", n_clicks=0, className="tbtn text",
                    title="Step (s or →): advance a few steps, then pause"),
        html.Div(dcc.Input(id="step-k", type="number", value=10, min=1, max=100000,
                           className="num"), title="steps per Step", className="step-k"),
        html.Div([html.Span("speed", className="tlabel"),
                  dcc.RadioItems(id="speed", options=[{"label": v, "value": k}
                                                      for k, v in SPEED_LABELS.items()],
                                 value=DEFAULT_SPEED, inline=True, className="toggle dark")],
                 className="speed-box", title="steps per second (max: as fast as the CPU runs; "
                                              "narrate: 100/s, slowed to 10/s around phase "
                                              "switches and setting changes)"),
        html.Div([html.Div(dcc.Input(id="ff-to", type="number", placeholder="ff to", min=1,
                                     className="num ff"), title="fast-forward to this step"),
                  html.Button("FF »", id="btn-ff", n_clicks=0, className="tbtn text",
                              title="Fast-forward: no drawing until that step, then live")],
                 className="ff-box"),
        html.Span(className="spinner", title="working: the other controls wait"),
    ], className="transport", id="transport")
    return html.Header([
        html.Div([html.Span("Plasticity", className="brand-a"), html.Span(" Lab", className="brand-b")],
                 className="brand", title="Marschall, Cho & Savin (2019): local plasticity rules "
                                          "for recurrent networks"),
        transport,
        html.Div(id="live-status", className="live-status", children="no run yet"),
        html.Div(id="transport-msg", className="transport-msg", role="alert"),
        html.Div([
            html.Span(id="perf-meter", className="perf", children="idle",
                      title="panel updates per second and lag from simulation to screen"),
            html.A("Experiments", href="/experiments/", className="hbtn", id="experiments-link",
                   title="grids of runs: many seeds and settings, summarised"),
            dcc.Clipboard(id="copy-link", title="copy a link to this setup", className="clip"),
            html.Button("Notes", id="btn-notes", n_clicks=0, className="hbtn notes-btn",
                        title="presenter mode: show or hide the panel's notes (n)"),
            html.Button("Presenter", id="btn-present", n_clicks=0, className="hbtn",
                        title="presenter mode: large fonts, controls hidden, one panel (p; "
                              "1-6 pick the panel; Esc leaves)"),
        ], className="header-right"),
    ], className="header")


def panel(component: ModuleType) -> html.Section:
    """One panel's section: its title and tools (the panel module's layout fragment), its
    graph and its notes."""
    name, graph_id = component.NAME, component.GRAPH
    lines = component.NOTES
    return html.Section([
        html.Div([html.H3(component.TITLE),
                  html.Div(component.tools(), className="panel-tools")],
                 className="panel-head"),
        html.Div([
            html.Div(dcc.Graph(id=graph_id, figure=_empty_figure(component), responsive=True,
                               config={"displaylogo": False, "responsive": True,
                                       "showSendToCloud": False, "showEditInChartStudio": False,
                                       "modeBarButtonsToRemove": ["lasso2d", "select2d"],
                                       "toImageButtonOptions": {"format": "png", "scale": 2,
                                                                "filename": f"plasticity-{name}"}},
                               className="graph"), className="graph-box"),
            html.Div([html.P(lines[0]), html.P(lines[1], className="look-for")],
                     className="note", id=f"note-{name}"),
        ], className="panel-body"),
    ], className="panel", id=f"panel-{name}", **{"data-panel": name})


def _empty_figure(component: ModuleType) -> dict[str, Any]:
    return component.figure(figures.make_view([], epoch=0), {}, {}, {})


def panels() -> html.Main:
    """The panel grid (one section per registered panel), its tabs and picker, the run table."""
    tabs = html.Div([html.Button([html.Span(str(i + 1), className="tab-key"), p.TAB],
                                 id=f"panel-key-{p.NAME}", n_clicks=0, className="tab",
                                 **{"data-panel": p.NAME})
                     for i, p in enumerate(registry.PANELS)], className="panel-tabs",
                    id="panel-tabs")
    panel_pick = dcc.Checklist(id="panels", options=[{"label": f" {p}", "value": p}
                                                     for p in registry.NAMES],
                               value=list(registry.NAMES), inline=True, className="check inline")
    return html.Main([
        html.Div([tabs, html.Div([html.Span("panels:", className="tlabel"), panel_pick],
                                 className="panel-pick")], className="panels-bar"),
        html.Div([panel(p) for p in registry.PANELS], className="panel-grid", id="panel-grid"),
        export_bar(),
        run_table(),
    ], className="main", id="main")


LOSS_FORMAT = Format(precision=4, scheme=Scheme.fixed).to_plotly_json()
TABLE_COLUMNS = [
    {"id": "id", "name": "run"}, {"id": "rule", "name": "run name"}, {"id": "task", "name": "task"},
    {"id": "status", "name": "status"}, {"id": "step", "name": "step", "type": "numeric"},
    # numbers, not text, so that sorting puts 0.45 before 0.6
    {"id": "best", "name": "best test", "type": "numeric", "format": LOSS_FORMAT},
    {"id": "last", "name": "last test", "type": "numeric", "format": LOSS_FORMAT},
    {"id": "phases", "name": "phases"}, {"id": "setup", "name": "n · α · lr · seeds"},
    {"id": "parent", "name": "branched from"},
]


def run_table() -> html.Section:
    buttons = html.Div([
        html.Button("Show", id="tbl-open", n_clicks=0, title="show the ticked runs (live controls "
                                                              "then drive them)"),
        html.Button("Overlay", id="tbl-overlay", n_clicks=0,
                    title="add the ticked runs to the plots"),
        html.Button("CSV", id="tbl-csv", n_clicks=0,
                    title="every scalar per step: train and test loss, rule losses, weight "
                          "norms, alignment, phase (several runs: a zip, one file each)"),
        html.Button("JSON", id="tbl-json", n_clicks=0,
                    title="every scalar, the settings changes and the config (re-runnable)"),
        html.Button("Branch", id="tbl-branch", n_clicks=0,
                    title="a new run from the latest checkpoint, with the control panel's rule, "
                          "rates and phases"),
        html.Button("Delete", id="tbl-delete", n_clicks=0, className="danger",
                    title="delete the ticked runs and their files (click twice)"),
        dcc.Store(id="delete-armed"),
        html.Span(id="table-msg", className="table-msg", role="alert"),
    ], className="table-buttons")
    table = dash_table.DataTable(
        id="run-table", columns=TABLE_COLUMNS, data=[], row_selectable="multi",
        selected_row_ids=[], page_size=8, sort_action="native",
        style_as_list_view=True,
        style_table={"overflowX": "auto"},
        style_cell={"fontFamily": figures.FONT, "fontSize": "13px", "padding": "6px 8px",
                    "textAlign": "left", "border": "none", "maxWidth": "240px",
                    "overflow": "hidden", "textOverflow": "ellipsis"},
        style_header={"fontWeight": "600", "background": "#f4f5f8",
                      "borderBottom": "1px solid #dde0e6"},
        style_data_conditional=[
            {"if": {"filter_query": "{live} = 1"}, "backgroundColor": "#eef5ff"},
            {"if": {"filter_query": '{status} contains "diverged" || {status} contains "failed"'},
             "color": "#b42318"},
        ],
    )
    return html.Section([html.Div([html.H3("Runs"), buttons], className="panel-head"), table],
                        className="runs", id="runs")


def stores() -> list[Any]:
    return [
        dcc.Location(id="url", refresh=False),
        dcc.Store(id="setup-store"),
        dcc.Store(id="live-store", data={"runs": [], "group": [], "variants": {}, "n": 0}),
        dcc.Store(id="view-store"),
        dcc.Store(id="cursor-store"),
        dcc.Store(id="rebuild-req"),
        dcc.Store(id="autostart"),
        dcc.Store(id="url-query"),
        dcc.Store(id="phase-count", data=1),
        dcc.Store(id="present-store", data=False),
        dcc.Store(id="focus-store", data="loss"),
        html.Div(id="url-sink", style={"display": "none"}),
        html.Div(id="present-sink", style={"display": "none"}),
        html.Div(id="tick-sink", style={"display": "none"}),
        # status changes come with the live answers (app/live.py, assets/plab.js: status-tick);
        # the clock refreshes what moves between them: steps/s, the run table, messages
        dcc.Store(id="status-tick"),
        dcc.Interval(id="slow-clock", interval=SLOW_CLOCK_MS),
        dcc.Download(id="download"),
    ]


def build_layout(preset_items: list[dict[str, Any]], *, align_supported: bool) -> html.Div:
    return html.Div([
        *stores(),
        header(),
        html.Div([controls(preset_items, align_supported), panels()], className="body"),
        html.Footer(["Keys: space play/pause · s step · r reset · p presenter · n notes · 1–5 panel · "
                     "l log-y · f full screen. Marschall, Cho & Savin (2019), ",
                     html.I("Using local plasticity rules to train recurrent neural networks"),
                     "."], className="footer"),
    ], id="root")


def field_keys() -> list[str]:
    """Every field key in layout order (the order ALL-pattern callbacks see them)."""
    keys = []
    for name, cls in TASKS.items():
        keys += [f"task_args.{name}.{s.name}" for s in
                 sorted(cls.settings, key=lambda s: 0 if s.choices and len(s.choices) == 2 else 1)]
    for name, cls in RULES.items():
        keys += [f"rule_args.{name}.{s.name}" for s in
                 sorted(cls.settings, key=lambda s: 0 if s.choices and len(s.choices) == 2 else 1)]
    return keys + list(urlstate.CORE_FIELDS)
