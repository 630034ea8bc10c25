/*
 * Plasticity Lab dashboard: the client half of the live loop, keyboard shortcuts and the
 * performance meter. Served by Dash as it is (no build step).
 *
 * The live loop (see app/dashboard/callbacks.py):
 *   the server's show() callback rebuilds the figures and writes view-store and cursor-store;
 *   plab.follow (a clientside callback) hands both to the loop here, which then, with exactly
 *   one request in flight, GETs _plab/live/<view key>?since=N: no items when nothing is new, else
 *   the items after N, shared by every client of the same view (app/live.py). Each answer
 *   says when the run's next frame is expected (X-Plab-Next, ms, counted from the answer):
 *   the loop polls just after it (at most every 20 ms on the dashboard, 100 ms on a viewer
 *   link; 1 s when nothing new arrived for 3 s), so most polls bring a frame and few are
 *   empty; a small worker keeps that clock and fetches, so a redraw in progress does not make
 *   a poll late. It merges the items' per-graph ops into pending updates (the items of a poll
 *   that came back before the graphs on screen drew the last ones wait for them) and draws
 *   them, the first graph at the next animation frame and each further one in a task of its
 *   own (so the next poll goes out between two redraws): one Plotly.react per graph with only
 *   the new points appended, heatmap contents swapped and phase shading extended (or, for the
 *   loss plot, when points were only appended to lines, their paths set alone). Graphs out of
 *   view keep merging and are drawn when they come into view (or are exported).
 *   Items also carry each run's newest step (the status chips' counters, set here) and, on a
 *   change, the runs' status: then status-tick makes Dash refresh the chips, the play button
 *   and the run table once; no clock polls them.
 * Items are accepted only for the figures on screen (same epoch) and in order (since=N), so
 * a stale or duplicate item can never draw twice.
 */
(function () {
    "use strict";
    const plab = (window.plab = window.plab || {});
    const STATS_WINDOW_MS = 5000;
    plab.activeAt = 0;             // frames came, or were asked for: polls are fast for 3 s
    plab.paintLog = [];            // {t, gid, lag} for every graph redraw with new data
    plab.applied = 0;
    plab.dropped = 0;
    plab.quick = 0;                // redraws of lines alone (quickLines), and Plotly's full ones
    plab.full = 0;

    function graphDiv(gid) {  // the Plotly div inside a dcc.Graph
        const host = document.getElementById(gid);
        return host ? host.querySelector(".js-plotly-plot") : null;
    }

    function sameCursors(a, b) {
        a = a || {};
        b = b || {};
        const ka = Object.keys(a), kb = Object.keys(b);
        if (ka.length !== kb.length) return false;
        return ka.every((k) => a[k] === b[k]);
    }

    // ---- pending updates per graph, merged until the graph is drawn -------------------------
    plab.pending = {};
    plab.onScreen = {};
    plab.hidden = {};          // display:none (a panel switched off, or presenter mode)
    let observer = null;

    function watch(gid) {
        if (!("IntersectionObserver" in window)) return;
        if (!observer) {
            observer = new IntersectionObserver((entries) => {
                for (const e of entries) {
                    plab.onScreen[e.target.id] = e.isIntersecting;
                    plab.hidden[e.target.id] = e.boundingClientRect.width === 0;
                    const gd = e.isIntersecting ? graphDiv(e.target.id) : null;
                    if (gd) setTimeout(() => drawOverlays(gd), 0);  // shown: its legend too
                }
                schedule();
            });
        }
        const host = document.getElementById(gid);
        if (host && !host.dataset.plabWatched) {
            host.dataset.plabWatched = "1";
            plab.onScreen[gid] = true;  // until the observer says otherwise
            observer.observe(host);
        }
    }

    function mergeExtend(a, b) {
        for (let j = 0; j < b.idx.length; j++) {
            const i = b.idx[j];
            const restart = !!(b.restart && b.restart[j]);
            let k = a.idx.indexOf(i);
            if (k < 0) {
                a.idx.push(i); a.x.push([]); a.y.push([]); a.max.push(b.max[j]);
                a.restart.push(false); a.tail.push(false);
                k = a.idx.length - 1;
            }
            if (restart) { a.x[k] = []; a.y[k] = []; a.restart[k] = true; }
            const xs = a.x[k], ys = a.y[k];
            if (a.tail[k] && xs.length) { xs.pop(); ys.pop(); }  // superseded provisional point
            a.tail[k] = !!(b.tail && b.tail[j]);
            for (let n = 0; n < b.x[j].length; n++) { xs.push(b.x[j][n]); ys.push(b.y[j][n]); }
            const max = b.max[j];
            if (max && xs.length > max) { xs.splice(0, xs.length - max); ys.splice(0, ys.length - max); }
        }
    }

    function mergeInto(gid, epoch, ops, wall, recv) {
        let p = plab.pending[gid];
        if (!p || p.epoch !== epoch) {
            p = plab.pending[gid] = {epoch: epoch, extend: null, set: {}, spans: [], wall: null, recv: recv};
        }
        if (ops.extend) {
            if (!p.extend) p.extend = {idx: [], x: [], y: [], max: [], restart: [], tail: []};
            mergeExtend(p.extend, ops.extend);
        }
        if (ops.set) for (const s of ops.set) p.set[s.i] = s;
        if (ops.titles) p.titles = ops.titles;
        if (ops.axes) p.axes = Object.assign(p.axes || {}, ops.axes);  // e.g. the loss y-range
        if (ops.spans) p.spans = p.spans.concat(ops.spans);
        if (ops.heat) mergeHeat(p, ops.heat);
        if (ops.patch) mergePatch(p, ops.patch);
        if (wall) p.wall = Math.max(p.wall || 0, wall);
        p.recv = recv;
    }

    // the circuit panel (app/dashboard/panels/circuit.py): "heat" appends columns to a
    // heatmap (z per row, keeping the last max), "patch" sets trace properties by trace name
    // (the neuron's colours, the arrows' widths and labels); the newest wins
    function mergeHeat(p, heat) {
        p.heat = p.heat || {};
        for (const h of heat) {
            const a = p.heat[h.i];
            if (!a || a.z.length !== h.z.length) { p.heat[h.i] = {...h, x: h.x.slice(), z: h.z.map((r) => r.slice())}; continue; }
            a.x = a.x.concat(h.x);
            for (let r = 0; r < h.z.length; r++) a.z[r] = a.z[r].concat(h.z[r]);
            a.zmin = h.zmin; a.zmax = h.zmax; a.max = h.max;
        }
    }

    function mergePatch(p, patch) {
        p.patch = p.patch || {};
        for (const [name, props] of Object.entries(patch.traces || {})) {
            p.patch[name] = mergeProps(p.patch[name] || {}, props);
        }
    }

    // one level deep, as the patches are written (line, marker, textfont are objects)
    function mergeProps(old, props) {
        const out = {...old};
        for (const [k, v] of Object.entries(props)) {
            out[k] = v && typeof v === "object" && !Array.isArray(v) && old[k] ? {...old[k], ...v} : v;
        }
        return out;
    }

    function applyHeat(gd, heat) {
        for (const key of Object.keys(heat)) {
            const h = heat[key], tr = gd.data[h.i];
            if (!tr || tr.type !== "heatmap") continue;
            const x = (tr.x || []).concat(h.x);
            const rows = h.z.length;
            const z = [];
            for (let r = 0; r < rows; r++) {
                const old = (tr.z && tr.z[r]) || new Array((tr.x || []).length).fill(null);
                z.push(old.concat(h.z[r]));
            }
            const cut = Math.max(0, x.length - (h.max || x.length));
            tr.x = x.slice(cut);
            tr.z = z.map((row) => row.slice(cut));
            tr.y = Array.from({length: rows}, (_, r) => r);
            if (h.zmin !== undefined) { tr.zmin = h.zmin; tr.zmax = h.zmax; }
        }
    }

    function applyPatch(gd, patch) {
        gd.data = gd.data.map((tr) => (patch[tr.name] ? mergeProps(tr, patch[tr.name]) : tr));
    }

    // traces whose last drawn point is provisional (a loss block still filling)
    const tails = new WeakMap();

    // append op's points to gd.data; returns the indices of the traces that changed
    function extend(gd, op) {
        const changed = [];
        for (let j = 0; j < op.idx.length; j++) {
            const trace = gd.data[op.idx[j]];
            if (!trace) continue;
            const restart = !!(op.restart && op.restart[j]);
            if (restart) { trace.x = []; trace.y = []; }
            const xs = trace.x || (trace.x = []);
            const ys = trace.y || (trace.y = []);
            const popped = !!tails.get(trace) && xs.length > 0;
            if (popped) { xs.pop(); ys.pop(); }
            tails.set(trace, !!(op.tail && op.tail[j]));
            const nx = op.x[j], ny = op.y[j];
            for (let k = 0; k < nx.length; k++) { xs.push(nx[k]); ys.push(ny[k]); }
            const max = op.max[j];
            if (max && xs.length > max) {
                xs.splice(0, xs.length - max);
                ys.splice(0, ys.length - max);
            }
            if (restart || popped || nx.length) changed.push(op.idx[j]);
        }
        return changed;
    }

    function firstX(gd) {
        // left edge of a scrolling window: the smallest step still drawn
        let lo = Infinity;
        for (const tr of gd.data) {
            if (tr.type !== "scatter" || !tr.x) continue;
            for (let k = 0; k < tr.x.length; k++) {
                if (tr.x[k] !== null && tr.x[k] !== undefined) { lo = Math.min(lo, tr.x[k]); break; }
            }
        }
        return lo;
    }

    function shade(gd, spans, meta) {
        const shape = meta.shade;
        if (!shape) return;
        const shapes = (gd.layout.shapes || []).slice();
        const fixed = shapes.filter((s) => !(s.name || "").startsWith("phase:"));
        let phases = shapes.filter((s) => (s.name || "").startsWith("phase:"));
        const colors = meta.phase_colors || {};
        for (const [start, stop, name] of spans) {
            if (!colors[name]) continue;  // not a phase of the current schedule
            const last = phases[phases.length - 1];
            if (last && last.name === "phase:" + name && last.x1 >= start - 0.5) {
                last.x1 = Math.max(last.x1, stop - 0.5);
                continue;
            }
            phases.push({
                type: "rect", name: "phase:" + name, layer: "below", line: {width: 0},
                fillcolor: colors[name],
                xref: shape.xref, yref: "paper", x0: start - 0.5, x1: stop - 0.5,
                y0: shape.y0, y1: shape.y1,
            });
        }
        if (meta.window) {
            const lo = firstX(gd);
            // clipped to the window: a span reaching back before it would stretch the
            // axis's autorange and squash the window into its right end
            phases = phases.filter((s) => s.x1 >= lo).map((s) => ({...s, x0: Math.max(s.x0, lo - 0.5)}));
        }
        if (phases.length > 400) phases = phases.slice(phases.length - 400);
        gd.layout.shapes = fixed.concat(phases);
    }

    // On a phone the loss plot's reference labels would keep their right margin (128 px at
    // presenter type: a third of the screen): there they go inside the plot, at its right edge
    // (they are the tick labels of the loss plot's right-hand reference axis).
    function fitPhone(gd) {
        if (!document.body.classList.contains("phone") || !gd.layout) return false;
        const refs = gd.layout.yaxis2;
        if (!refs || refs.overlaying !== "y" || refs.ticklabelposition === "inside") return false;
        gd.layout.yaxis2 = Object.assign({}, refs, {ticklabelposition: "inside"});
        gd.layout.margin = Object.assign({}, gd.layout.margin, {r: 12});
        return true;
    }

    // ---- lines alone: a frame that only appends points to lines -------------------------------
    // Plotly redraws a whole figure for any change to its data: the loss plot's defaults, its
    // three axes and every trace, 11-16 ms ten times a second. A graph marked meta.quick (the
    // loss plot) whose frame only appends points to lines (and uniform markers), on axes that
    // keep their ranges, has only those paths and markers to change: they are set here from
    // the axes Plotly laid out (c2p). Its step axis grows in round steps (quickRange) so that
    // it keeps its range between them; any other change (the y-range's next grid step, phase
    // shading, a mark, a new figure) is Plotly's full redraw. Hover reads Plotly's calcdata,
    // which lags meanwhile: a pointer over the graph redraws it in full, at once and at every
    // frame while it stays.
    const ROUND = [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10];

    function roundUp(v) {  // the smallest of 1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8 x 10^k >= v
        const mag = Math.pow(10, Math.floor(Math.log10(v)));
        return ROUND.map((m) => m * mag).find((r) => r >= v * (1 - 1e-12));
    }

    // A range the user set (zoom, pan) stays until the next figure (uirevision) or until the
    // user autoscales: plotly_relayout comes from the user's edits only (plab never relayouts)
    function watchUserRange(gd) {
        if (gd._plabRangeWatch || typeof gd.on !== "function") return;
        gd._plabRangeWatch = true;
        gd.on("plotly_relayout", (edit) => {
            const keys = Object.keys(edit || {})
                .filter((k) => /^[xy]axis\d*\.(range|autorange)/.test(k));
            if (!keys.length) return;
            const reset = keys.every((k) => !/range\[|\.range$/.test(k) && edit[k] === true);
            gd._plabUserRange = reset ? undefined : (gd.layout || {}).uirevision;
        });
    }

    function userRanged(gd, layout) {
        watchUserRange(gd);
        return gd._plabUserRange !== undefined && gd._plabUserRange === layout.uirevision;
    }

    // The step axis of a meta.quick figure: [0, the round number at or above its last step],
    // or the runs' length (meta.quick.xmax) when that is nearer. True when it changed.
    function quickRange(gd, data, layout) {
        const quick = (layout.meta || {}).quick;
        if (!quick || userRanged(gd, layout)) return false;
        let last = 0;
        for (const t of data) {
            const xs = t.x || [];
            const v = xs[xs.length - 1];
            if ((t.xaxis || "x") === "x" && typeof v === "number" && v > last) last = v;
        }
        if (!(last > 0)) return false;
        const top = quick.xmax >= last ? Math.min(roundUp(last), quick.xmax) : roundUp(last);
        const ax = layout.xaxis || {};
        const r = ax.range;
        if (ax.autorange === false && r && r[0] === 0 && r[1] === top) return false;
        layout.xaxis = Object.assign({}, ax, {range: [0, top], autorange: false});
        return true;
    }

    // the trace's points in the subplot's pixels; a missing or unplottable point (null, or <= 0
    // on a log axis) ends a segment, as in Plotly's lines (connectgaps false)
    function pixels(xa, ya, xs, ys) {
        const pts = [];
        let segments = 0, pen = false;
        for (let k = 0; k < xs.length; k++) {
            const x = xs[k], y = ys[k];
            const px = x === null || x === undefined ? NaN : xa.c2p(x);
            const py = y === null || y === undefined ? NaN : ya.c2p(y);
            if (!isFinite(px) || !isFinite(py)) { pen = false; continue; }
            if (!pen) segments += 1;
            pen = true;
            // far outside the plot (a diverged raw loss on a linear axis): clamped, as Plotly does
            pts.push([px, Math.max(-1e5, Math.min(1e5, py))]);
        }
        return {pts: pts, segments: segments};
    }

    function linePath(pts) {
        return "M" + pts.map((p) => p[0].toFixed(2) + "," + p[1].toFixed(2)).join("L");
    }

    function axisOf(fl, id, letter) {  // "x2" -> fullLayout.xaxis2
        return fl[letter + "axis" + String(id || letter).slice(1)];
    }

    // The new drawing of one changed trace (index i), or null when Plotly must redraw it: a
    // scatter of lines and/or uniform markers, on axes with a fixed range, drawn by Plotly
    // as one line path (and one marker per point)
    function quickTrace(gd, groups, i) {
        const t = gd.data[i], ft = gd._fullData[i], fl = gd._fullLayout;
        if (!t || !ft || ft.index !== i || ft.type !== "scatter") return null;
        if (ft.visible === "legendonly") return {skip: true};
        const lines = ft.mode === "lines" || ft.mode === "lines+markers";
        const markers = ft.mode === "markers" || ft.mode === "lines+markers";
        if (ft.visible !== true || !(lines || markers) || ft.fill !== "none") return null;
        if (lines && ft.line.shape !== "linear") return null;
        const mk = ft.marker || {};
        if (markers && [mk.color, mk.size, mk.symbol, mk.opacity].some(Array.isArray)) return null;
        const xa = axisOf(fl, ft.xaxis, "x"), ya = axisOf(fl, ft.yaxis, "y");
        if (!xa || !ya) return null;
        // an autoranged axis would take a new range with the new points: Plotly's redraw
        if ([xa, ya].some((ax) => (gd.layout[ax._name] || {}).autorange !== false)) return null;
        const g = groups.get(i);
        if (!g) return null;
        const paths = g.querySelectorAll("path.js-line");
        const dots = markers ? g.querySelectorAll(".points > path.point") : [];
        const {pts, segments} = pixels(xa, ya, t.x || [], t.y || []);
        if (lines && (paths.length !== 1 || segments !== 1)) return null;
        if (markers && !dots.length) return null;  // a first marker: Plotly draws it
        return {path: lines ? paths[0] : null, dots: dots, pts: markers ? pts : null,
                d: lines ? linePath(pts) : null};
    }

    // Draw the traces whose points changed (trace indices) without Plotly; false, with nothing
    // drawn, when any of them needs Plotly's redraw
    function quickLines(gd, changed) {
        if (!gd._fullLayout || !gd._fullData || gd._plabPointer) return false;
        const groups = new Map();
        gd.querySelectorAll(".scatterlayer > .trace").forEach((g) => {
            const cd = g.__data__;
            const tr = cd && cd[0] && cd[0].trace;
            if (tr) groups.set(tr.index, g);
        });
        const todo = [];
        for (const i of changed) {
            const plan = quickTrace(gd, groups, i);
            if (!plan) return false;
            if (!plan.skip) todo.push(plan);
        }
        for (const plan of todo) {
            if (plan.path) plan.path.setAttribute("d", plan.d);
            if (plan.pts) placeDots(plan.dots, plan.pts);
        }
        gd._plabStale = true;
        watchPointer(gd);
        return true;
    }

    function placeDots(dots, pts) {  // one marker per point: copies of the last, or fewer
        const nodes = Array.from(dots);
        const last = nodes[nodes.length - 1];
        while (nodes.length < pts.length) {
            nodes.push(last.parentNode.appendChild(last.cloneNode(true)));
        }
        while (nodes.length > pts.length) nodes.pop().remove();
        nodes.forEach((node, k) => node.setAttribute("transform",
            "translate(" + pts[k][0].toFixed(2) + "," + pts[k][1].toFixed(2) + ")"));
    }

    function watchPointer(gd) {
        if (gd._plabPointerWatch) return;
        gd._plabPointerWatch = true;
        gd.addEventListener("pointerenter", () => {
            gd._plabPointer = true;
            if (gd._plabStale && gd.data && gd.layout) {  // hover's points brought up to date
                gd._plabStale = false;
                gd.layout.datarevision = (gd.layout.datarevision || 0) + 1;
                react(gd, gd.data, gd.layout);
            }
        });
        gd.addEventListener("pointerleave", () => { gd._plabPointer = false; });
    }

    // ---- new figures for graphs out of view: drawn when they come into view ------------------
    // Dash draws every new figure at once (a play, a rebuild): the three panels below the fold
    // of a 1920x1080 screen took ~130 ms of the first frames of those in view. A graph out of
    // view keeps the new figure aside (gd._plabDeferred; live items of its epoch merge into
    // its pending update, as for any graph out of view) and draws it when it comes into view
    // or is exported (plab.flush); until then Plotly keeps the figure it drew (data, layout
    // and calcdata agree, so a resize meanwhile is safe). Dash calls the global Plotly.react;
    // plab's own redraws go to the original.
    let plotlyReact = null;

    function react(gd, data, layout, config) {
        wrapPlotly();
        return plotlyReact.call(window.Plotly, gd, data, layout, config);
    }

    function epochOf(gd) {  // of the figure the graph shows or will show when in view
        const layout = gd._plabDeferred ? gd._plabDeferred.layout : gd.layout;
        return ((layout || {}).meta || {}).epoch;
    }

    // A new view's figures carry what following its channel takes (meta.follow, as in
    // view-store and cursor-store): the first poll goes out while Dash is still drawing them,
    // not after the callbacks that view-store triggers (100-300 ms later)
    function followEarly(layout) {
        const f = (layout.meta || {}).follow;
        if (!f || !f.live || (plab.state && plab.state.epoch >= f.epoch)) return;
        plab.view = {live: f.live, epoch: f.epoch, runs: f.runs || []};
        startFollowing(f.epoch, f.cursors);
    }

    function wrapPlotly() {
        const P = window.Plotly;
        if (!P || P.__plabWrapped) return;
        plotlyReact = P.react;
        P.__plabWrapped = true;
        P.react = function (gd, data, layout, config) {
            let fig = {data: data, layout: layout, config: config};
            if (data && !Array.isArray(data) && Array.isArray(data.data)) fig = data;  // dcc.Graph
            const host = gd && gd.closest ? gd.closest(".dash-graph") : null;
            const gid = host ? host.id : null;
            if (fig.layout) followEarly(fig.layout);
            if (gid && gd._fullLayout && Array.isArray(fig.data) && fig.layout &&
                    plab.onScreen[gid] === false) {
                gd._plabDeferred = {data: fig.data, layout: fig.layout, config: fig.config};
                const epoch = (fig.layout.meta || {}).epoch;
                const p = plab.pending[gid];
                if (!p || p.epoch !== epoch) {
                    plab.pending[gid] = {epoch: epoch, extend: null, set: {}, spans: [],
                                         wall: null, recv: Date.now()};
                }
                return Promise.resolve(gd);
            }
            if (gd) delete gd._plabDeferred;  // this figure supersedes the one set aside
            if (gd && fig.layout && Array.isArray(fig.data)) {
                quickRange(gd, fig.data, fig.layout);  // a meta.quick figure's step axis
                gd._plabStale = false;
            }
            // its legend once drawn (plab's own redraws draw theirs in draw())
            return Promise.resolve(plotlyReact.apply(this, arguments)).then((drawn) => {
                if (gid) drawOverlays(gd);
                return drawn;
            });
        };
        setTimeout(() => plab.drawOverlays(), 0);  // figures drawn before plotly.js was wrapped
    }
    plab.wrapPlotly = wrapPlotly;
    // before Dash draws its first figures (plotly.js loads before the assets; else soon after)
    (function wrapSoon(tries) {
        wrapPlotly();
        if (!plotlyReact && tries > 0) setTimeout(() => wrapSoon(tries - 1), 50);
    })(100);

    // ---- legends: HTML, drawn when the traces change -----------------------------------------
    // Plotly redraws its legend at every redraw (2-3 ms a graph, ten times a second); figures
    // come with showlegend false and meta.legend, and the legend is drawn here in HTML, where
    // Plotly would put it (layout.legend), only when the traces' names, colours, visibility
    // or the plot's size change. Clicking an entry hides or shows its legend group, as in
    // Plotly. Exports turn Plotly's legend back on (assets/export.js).
    const DASHES = {dot: "2,3", dash: "6,4", longdash: "10,4", dashdot: "6,3,2,3",
                    longdashdot: "10,3,2,3"};

    function legendEntries(gd) {
        const out = [];
        (gd.data || []).forEach((t, i) => {
            if (t.showlegend === false || t.visible === false) return;
            const line = t.line || {};
            out.push({i: i, name: String(t.name || ""), color: line.color || "#444",
                      dash: DASHES[line.dash] || "", width: Math.min(line.width || 2, 3),
                      off: t.visible === "legendonly"});
        });
        return out;
    }

    function legendItem(e) {
        const item = document.createElement("span");
        item.className = "plab-legend-item" + (e.off ? " off" : "");
        item.dataset.trace = String(e.i);
        item.title = e.off ? "show" : "hide";
        const ns = "http://www.w3.org/2000/svg";
        const svg = document.createElementNS(ns, "svg");
        svg.setAttribute("width", "24");
        svg.setAttribute("height", "10");
        const line = document.createElementNS(ns, "line");
        for (const [k, v] of Object.entries({x1: 1, y1: 5, x2: 23, y2: 5, stroke: e.color,
                                              "stroke-width": e.width})) {
            line.setAttribute(k, String(v));
        }
        if (e.dash) line.setAttribute("stroke-dasharray", e.dash);
        svg.appendChild(line);
        item.appendChild(svg);
        item.appendChild(document.createTextNode(e.name));  // text, never markup
        return item;
    }

    function onLegendClick(ev) {
        const item = ev.target.closest(".plab-legend-item");
        const gd = ev.currentTarget.parentElement;
        if (!item || !gd || !gd.data) return;
        const t = gd.data[+item.dataset.trace];
        if (!t) return;
        const show = t.visible === "legendonly";
        gd.data.forEach((u, k) => {
            if (u === t || (t.legendgroup && u.legendgroup === t.legendgroup)) {
                u.visible = show ? true : "legendonly";
            }
        });
        gd.layout.datarevision = (gd.layout.datarevision || 0) + 1;
        Promise.resolve(react(gd, gd.data, gd.layout)).then(() => drawLegend(gd));
    }

    /* No axis line on an axis that no trace with points uses: Plotly draws the lines of an
     * empty subplot from NaN when a figure is drawn afresh or re-margined (a console error;
     * the figures avoid it the same way). Replaces those axes in ``layout``. */
    plab.emptyAxesOff = function (layout, data) {
        const used = new Set();
        (data || []).forEach((t) => {
            if ((t.x || t.z || []).length) {
                used.add("xaxis" + String(t.xaxis || "x").slice(1));
                used.add("yaxis" + String(t.yaxis || "y").slice(1));
            }
        });
        Object.keys(layout).forEach((key) => {
            if (/^[xy]axis\d*$/.test(key) && !used.has(key) && layout[key].showline !== false) {
                layout[key] = Object.assign({}, layout[key], {showline: false});
            }
        });
        return layout;
    };

    // a graph in view and displayed (the observer's view of it; a layout read otherwise)
    function shown(gd) {
        const host = gd.closest(".dash-graph");
        if (host && host.dataset.plabWatched) return plab.onScreen[host.id] !== false && !plab.hidden[host.id];
        return !!gd.offsetWidth;
    }

    function drawLegend(gd) {
        const meta = (gd.layout || {}).meta || {};
        let box = gd.querySelector(":scope > .plab-legend");
        const size = (gd._fullLayout || {})._size;
        if (!meta.legend || !size) {
            if (box) box.remove();
            return;
        }
        const entries = legendEntries(gd);
        const leg = gd.layout.legend || {};
        const sig = JSON.stringify([entries, size.l, size.t, size.w, size.h, leg]);
        // unchanged: nothing to do and nothing read from the page (a layout read after
        // Plotly's redraw would force the browser's layout, at every redraw)
        if (box && box.dataset.sig === sig) return;
        // hidden (display: none) or out of view: drawn when it comes into view (the observer)
        if (!shown(gd)) return;
        if (!box) {
            box = document.createElement("div");
            box.className = "plab-legend";
            box.addEventListener("click", onLegendClick);
            gd.appendChild(box);
        }
        box.dataset.sig = sig;
        box.replaceChildren(...entries.map(legendItem));
        const font = leg.font || {};
        box.style.fontSize = (font.size || 11) + "px";
        if (font.family) box.style.fontFamily = font.family;
        const y = leg.y === undefined ? 1.02 : leg.y;
        box.style.left = Math.round(size.l + (leg.x || 0) * size.w) + "px";
        box.style.top = Math.round(size.t + (1 - y) * size.h) + "px";
        box.style.maxWidth = Math.round(size.w) + "px";
        box.style.transform = leg.yanchor === "bottom" ? "translateY(-100%)" : "";
        // a legend that wraps to more rows than its margin holds (a race of long names)
        // makes room, as Plotly's does: a larger margin, once per change
        if (!box.offsetHeight) return;
        const top = box.offsetTop - (leg.yanchor === "bottom" ? box.offsetHeight : 0);
        const over = {t: -top + 2, b: top + box.offsetHeight - gd._fullLayout.height + 2};
        const margin = Object.assign({}, gd.layout.margin || {});
        let grow = false;
        for (const side of ["t", "b"]) {
            if (over[side] > 0) { margin[side] = (margin[side] || 0) + over[side]; grow = true; }
        }
        if (grow) {
            gd.layout.margin = margin;
            plab.emptyAxesOff(gd.layout, gd.data);
            Promise.resolve(react(gd, gd.data, gd.layout)).then(() => drawLegend(gd));
        }
    }

    // ---- colour bars: HTML, drawn when their range changes -----------------------------------
    // Plotly redraws a colour bar at every redraw (6-7 ms each, ten times a second); heatmaps
    // marked meta.scale come with showscale false and their bar is drawn here where Plotly
    // would put it (trace.colorbar: x, y, len, thickness, title), from the trace's zmin, zmax
    // and colorscale, only when those or the plot's size change. Exports turn Plotly's back
    // on (assets/export.js).
    function niceTicks(lo, hi) {
        const span = hi - lo;
        if (!(span > 0) || !isFinite(span)) return [lo];
        const raw = span / 4, mag = Math.pow(10, Math.floor(Math.log10(raw)));
        const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw * (1 - 1e-9));
        const out = [];
        for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) {
            out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
        }
        return out;
    }

    function tickText(v) {
        return String(Number(v.toPrecision(4))).replace("-", "\u2212");  // Plotly's minus
    }

    function scaleBox(t, size, k) {
        const cb = t.colorbar || {};
        const len = cb.len === undefined ? 1 : cb.len, yc = cb.y === undefined ? 0.5 : cb.y;
        const pad = cb.ypad === undefined ? 10 : cb.ypad;
        const top = size.t + (1 - yc - len / 2) * size.h + pad;
        const height = Math.max(10, len * size.h - 2 * pad);
        const box = document.createElement("div");
        box.className = "plab-scale";
        box.dataset.trace = String(k);
        box.style.left = Math.round(size.l + (cb.x === undefined ? 1.02 : cb.x) * size.w +
                                    (cb.xpad === undefined ? 10 : cb.xpad)) + "px";
        box.style.top = Math.round(top) + "px";
        box.style.height = Math.round(height) + "px";
        const bar = document.createElement("div");
        bar.className = "plab-scale-bar";
        bar.style.width = (cb.thickness || 12) + "px";
        bar.style.background = "linear-gradient(to top, " + (t.colorscale || []).map(
            (c) => c[1] + " " + (100 * c[0]).toFixed(2) + "%").join(", ") + ")";
        box.appendChild(bar);
        const ticks = document.createElement("div");
        ticks.className = "plab-scale-ticks";
        const font = cb.tickfont || {};
        ticks.style.fontSize = (font.size || 10) + "px";
        const lo = +t.zmin, hi = +t.zmax;
        for (const v of niceTicks(lo, hi)) {
            const tick = document.createElement("span");
            tick.style.top = (100 * (hi - v) / (hi - lo || 1)).toFixed(2) + "%";
            tick.textContent = tickText(v);
            ticks.appendChild(tick);
        }
        box.appendChild(ticks);
        const title = ((cb.title || {}).text) || "";
        if (title) {
            const head = document.createElement("div");
            head.className = "plab-scale-title";
            head.style.fontSize = (((cb.title || {}).font || {}).size || 11) + "px";
            head.textContent = title;  // text, never markup
            box.appendChild(head);
        }
        return box;
    }

    function drawScales(gd) {
        const size = (gd._fullLayout || {})._size;
        const marked = [];
        (gd.data || []).forEach((t, k) => {
            if (t.type === "heatmap" && (t.meta || {}).scale && t.visible !== false &&
                    (t.z || []).length) marked.push([t, k]);
        });
        if (!marked.length || !size) {
            if (gd.dataset.plabScales) {
                gd.querySelectorAll(":scope > .plab-scale").forEach((b) => b.remove());
                delete gd.dataset.plabScales;
            }
            return;
        }
        const sig = JSON.stringify([marked.map(([t]) => [t.zmin, t.zmax, t.colorscale, t.colorbar]),
                                    size.l, size.t, size.w, size.h]);
        if (gd.dataset.plabScales === sig || !shown(gd)) return;  // as in drawLegend
        gd.dataset.plabScales = sig;
        const old = gd.querySelectorAll(":scope > .plab-scale");
        old.forEach((b) => b.remove());
        marked.forEach(([t, k]) => gd.appendChild(scaleBox(t, size, k)));
    }

    // what a graph shows in HTML over Plotly's drawing
    function drawOverlays(gd) {
        drawLegend(gd);
        drawScales(gd);
    }

    plab.drawOverlays = function () {
        document.querySelectorAll(".js-plotly-plot").forEach(drawOverlays);
    };
    window.addEventListener("resize", () => setTimeout(plab.drawOverlays, 300));

    function fitPhones() {
        document.querySelectorAll(".js-plotly-plot").forEach((gd) => {
            if (fitPhone(gd)) react(gd, gd.data, gd.layout);
        });
    }

    function draw(gid) {
        const p = plab.pending[gid];
        delete plab.pending[gid];
        const gd = graphDiv(gid);
        if (!p || !gd) return;
        let config;
        if (gd._plabDeferred) {  // a new figure set aside while out of view: drawn now
            ({data: gd.data, layout: gd.layout, config: config} = gd._plabDeferred);
            delete gd._plabDeferred;
        }
        if (!gd.data || !gd.layout) return;
        const meta = gd.layout.meta || {};
        if (meta.epoch !== p.epoch) return;  // the figure was replaced meanwhile
        const t0 = performance.now();
        // only points appended (a line-only redraw may do), nothing else
        const appendOnly = !!p.extend && !config && !p.titles && !p.spans.length && !p.axes &&
            !p.heat && !p.patch && !Object.keys(p.set).length;
        const changed = p.extend ? extend(gd, p.extend) : [];
        for (const key of Object.keys(p.set)) {
            const s = p.set[key];
            const tr = gd.data[s.i];
            if (!tr) continue;
            tr.z = s.z;
            if (s.zmin !== undefined) { tr.zmin = s.zmin; tr.zmax = s.zmax; }
        }
        if (p.titles) {
            // block titles of the weight-change heatmap: the tick labels of its top axis
            gd.layout.xaxis = Object.assign({}, gd.layout.xaxis, {
                tickvals: p.titles.map((t) => t.x), ticktext: p.titles.map((t) => t.text)});
        }
        if (p.spans.length) shade(gd, p.spans, meta);
        for (const ax of Object.keys(p.axes || {})) gd.layout[ax] = Object.assign({}, gd.layout[ax], p.axes[ax]);
        if (p.heat) applyHeat(gd, p.heat);
        if (p.patch) applyPatch(gd, p.patch);
        const refit = fitPhone(gd);
        const grown = quickRange(gd, gd.data, gd.layout);
        if (meta.quick && appendOnly && !refit && !grown && quickLines(gd, changed)) {
            plab.quick += 1;
            recordPaint(gid, p.wall, performance.now() - t0, p.recv);
            return;
        }
        plab.full += 1;
        gd._plabStale = false;
        gd.layout.datarevision = (gd.layout.datarevision || 0) + 1;
        let done;
        try {
            done = react(gd, gd.data, gd.layout, config);
        } catch (err) {
            console.error("plab draw", gid, err);
            return;
        }
        const dur = performance.now() - t0;
        Promise.resolve(done).then(() => {
            recordPaint(gid, p.wall, dur, p.recv);
            drawOverlays(gd);  // only when its traces or ranges changed (cheap checks)
        });
    }

    // Draw pending graphs from requestAnimationFrame, within a time budget per frame, so that
    // the page stays responsive however fast frames arrive; graphs scrolled out of view (or
    // hidden) keep merging and are drawn once when they come into view (IntersectionObserver)
    // or are exported (plab.flush): a redraw nobody sees cost the visible panels 10% of the
    // main thread at max speed.
    const FRAME_BUDGET_MS = 16;

    // draw a graph's pending updates now (before an export reads gd.data)
    plab.flush = function (gid) {
        if (plab.pending[gid]) draw(gid);
    };
    let scheduled = false;

    function schedule(now) {
        if (scheduled) return;
        scheduled = true;
        // the first graph at the next animation frame; the rest in tasks of their own, so the
        // live loop's next poll (a timer) goes out between two redraws, not after all of them
        if (now) setTimeout(loop, 0);
        else window.requestAnimationFrame(loop);
    }

    function loop() {
        scheduled = false;
        const t0 = performance.now();
        // on screen per IntersectionObserver (hidden panels do not intersect; no layout reads
        // here); graphs out of view wait until they come into view
        const ready = Object.keys(plab.pending).filter((gid) => !plab.hidden[gid] &&
            plab.onScreen[gid] !== false);
        // oldest first, so every panel gets its turn
        ready.sort((a, b) => plab.pending[a].recv - plab.pending[b].recv);
        for (const gid of ready) {
            if (performance.now() - t0 > FRAME_BUDGET_MS) break;
            draw(gid);
        }
        if (drawing()) schedule(true);
        else if (held.length) release();  // the next poll's items, now that these are drawn
    }

    function recordPaint(gid, wall, dur, recv) {
        const now = Date.now();
        plab.paintLog.push({t: now, gid: gid, lag: wall ? now - wall * 1000 : null, dur: dur,
                            client: recv ? now - recv : null});
        const cut = now - 60000;
        while (plab.paintLog.length && plab.paintLog[0].t < cut) plab.paintLog.shift();
    }

    function median(xs) {
        if (!xs.length) return null;
        const s = xs.slice().sort((a, b) => a - b);
        const m = s.length >> 1;
        return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
    }

    // Updates per second per graph and median lag over the last few seconds (bench/, meter).
    plab.stats = function (windowMs) {
        windowMs = windowMs || STATS_WINDOW_MS;
        const now = Date.now();
        const recent = plab.paintLog.filter((p) => p.t >= now - windowMs);
        const byGraph = {};
        for (const p of recent) (byGraph[p.gid] = byGraph[p.gid] || []).push(p);
        const out = {graphs: {}, applied: plab.applied, dropped: plab.dropped};
        for (const gid of Object.keys(byGraph)) {
            const ps = byGraph[gid];
            out.graphs[gid] = {
                ups: ps.length / (windowMs / 1000),
                lag_ms: median(ps.map((p) => p.lag).filter((v) => v !== null)),
                draw_ms: median(ps.map((p) => p.dur)),
                client_ms: median(ps.map((p) => p.client).filter((v) => v !== null)),
            };
        }
        const shown = Object.keys(out.graphs).filter((g) => plab.onScreen[g] !== false);
        const ups = (shown.length ? shown : Object.keys(out.graphs)).map((g) => out.graphs[g].ups);
        out.ups = ups.length ? median(ups) : 0;
        out.lag_ms = median(recent.map((p) => p.lag).filter((v) => v !== null));
        return out;
    };

    function meter() {
        const el = document.getElementById("perf-meter");
        if (!el) return;
        const s = plab.stats(3000);
        el.textContent = s.ups
            ? `${s.ups.toFixed(1)} updates/s · lag ${Math.round(s.lag_ms || 0)} ms`
            : "idle";
    }
    setInterval(meter, 1000);

    // ---- the live loop: GET _plab/live/<key>, one request in flight ---------------------------
    const POLL_MS = 20;        // the dashboard: a late frame is fetched within 20 ms
    const VIEWER_POLL_MS = 100;  // a viewer link (#root.viewer): at most 10 polls/s
    const SLACK_MS = 8;        // after the expected frame: the worker's pipe and the read
    const IDLE_MS = 1000;      // after 3 s without new frames (paused or finished runs)
    plab.view = null;
    plab.state = null;         // {epoch, cursors, seq}: the last shared item applied
    plab.polls = 0;
    plab.notModified = 0;
    plab.updates = 0;
    plab.rtts = [];
    let pumping = false;
    let woken = false;     // the last wait ended by plab.wake (a new view): poll at once
    let sentAt = null;     // when the last poll went out

    let livePrefix = null;  // Dash's path prefix, read once (the config never changes)

    function liveUrl(key) {
        if (livePrefix === null) {
            let prefix = "/";
            try {
                const cfg = JSON.parse(document.getElementById("_dash-config").textContent);
                prefix = cfg.requests_pathname_prefix || cfg.url_base_pathname || "/";
            } catch (err) { /* default prefix */ }
            livePrefix = prefix.replace(/\/?$/, "/") + "_plab/live/";
        }
        return livePrefix + encodeURIComponent(key);
    }

    // ---- the polls' clock: a worker, so that a poll goes out on time while the page draws ----
    // On the page's own timer a poll went out a median 30 ms late at max speed (a timer waits
    // for the redraw running then), late enough that the next frame had come too: the two
    // came as one item, one update for two frames (7-12 of 120 frames over 12 s). A tiny
    // worker (a Blob: CSP worker-src 'self' blob:) waits and fetches instead, and reads the
    // JSON off the page's thread; the page still decides what to fetch and when, and falls
    // back to its own timer and fetch where a worker cannot start.
    // One poll's GET: {status, ok, sent, nextAt, body}. The page's fallback calls it; the
    // worker runs the same function (its source is part of the worker's).
    async function fetchAnswer(url) {
        const sent = Date.now();
        const res = await fetch(url, {cache: "no-store", credentials: "same-origin"});
        const hint = res.headers.get("X-Plab-Next");
        const out = {status: res.status, ok: res.ok, sent: sent,
                     nextAt: hint === null ? null : Date.now() + (+hint)};
        if (res.ok && res.status !== 304) out.body = await res.json();
        return out;
    }

    const FETCH_WORKER = `"use strict";
${fetchAnswer.toString()}
const timers = new Map();
self.onmessage = (e) => {
    const m = e.data;
    if (m.cancel) {  // not sent yet: never sent (sent: the page drops its answer)
        clearTimeout(timers.get(m.cancel));
        timers.delete(m.cancel);
        return;
    }
    timers.set(m.id, setTimeout(async () => {
        timers.delete(m.id);
        try {
            self.postMessage({id: m.id, ...(await fetchAnswer(m.url))});
        } catch (err) {
            self.postMessage({id: m.id, error: String(err)});
        }
    }, Math.max(0, m.at - Date.now())));
};`;
    let fetcher;  // the worker; null: none (the page's own timer)
    let fetchSeq = 0;
    const fetches = new Map();  // id -> resolve

    function fetchWorker() {
        if (fetcher !== undefined) return fetcher;
        fetcher = null;
        if (!("Worker" in window) || !window.Blob || !window.URL) return fetcher;
        try {
            const src = URL.createObjectURL(new Blob([FETCH_WORKER], {type: "text/javascript"}));
            fetcher = new Worker(src);
            fetcher.onmessage = (e) => {
                const done = fetches.get(e.data.id);
                fetches.delete(e.data.id);
                if (done) done(e.data);
            };
            fetcher.onerror = () => {  // it could not start: the page's timer from now on
                fetcher = null;
                for (const done of fetches.values()) done({error: "poll worker failed"});
                fetches.clear();
            };
        } catch (err) {
            fetcher = null;
        }
        return fetcher;
    }

    // where the polls' clock runs: "worker", or "page" (no worker could start)
    plab.pollClock = () => (fetchWorker() ? "worker" : "page");

    // wait until ``at`` (plab.wake ends the wait early: true)
    function sleepUntil(at) {
        return new Promise((resolve) => {
            const timer = setTimeout(() => resolve(false), Math.max(0, at - Date.now()));
            plab.wake = () => { clearTimeout(timer); resolve(true); };
        }).finally(() => { plab.wake = null; });
    }

    // GET url at ``at``: {status, ok, body, nextAt, sent}, or null when plab.wake came first
    async function liveFetch(url, at) {
        const worker = fetchWorker();
        // a poll due now (a new view, a click on play) goes out from here: the main thread
        // is running anyway, and the worker's turn came up to 300 ms later while the page drew
        // the new figures (its thread starved of the 2 cores' time)
        if (worker && at <= Date.now()) return fetchAnswer(url);
        if (!worker) {
            if (await sleepUntil(at)) return null;
            return fetchAnswer(url);
        }
        const id = ++fetchSeq;
        const answer = await new Promise((resolve) => {
            fetches.set(id, resolve);
            // a new view: poll for it at once, not after the worker's reply (a task, which
            // would wait for Dash drawing the new figures); a late answer to this one is dropped
            plab.wake = () => {
                fetches.delete(id);
                worker.postMessage({cancel: id});
                resolve({cancelled: true});
            };
            worker.postMessage({id: id, url: new URL(url, window.location.href).href, at: at});
        }).finally(() => { plab.wake = null; });
        if (answer.error) throw new Error(answer.error);
        return answer.cancelled ? null : answer;
    }

    // One poll of the view's shared channel (app/live.py), at ``at``: 304 when nothing is new;
    // else the items after the last one applied, handed to accept() (drawn a frame of a run
    // per redraw; a late client merges what waited and skips ahead).
    async function tickOnce(at) {
        const view = plab.view, state = plab.state;
        if (document.hidden || !view || !state || !view.runs || !view.runs.length || !view.live ||
                state.epoch !== view.epoch) {
            woken = await sleepUntil(at);
            return false;
        }
        let url = liveUrl(view.live) + "?since=" + state.seq;
        if (state.seq < 0) url += "&c=" + encodeURIComponent(JSON.stringify(state.cursors));
        // no If-None-Match: "nothing new" comes as {seq, items: []} on a kept-alive
        // connection (waitress closes it after a 304; app/live.py LiveHub.respond)
        const res = await liveFetch(url, at);
        woken = !res;
        if (!res) return false;  // woken (a new view) before it went out
        sentAt = res.sent;
        plab.polls += 1;
        // the hint counts from the answer; the loop waits from when it has drawn, later
        plab.nextAt = res.nextAt;
        if (res.status === 304) { plab.notModified += 1; return false; }
        if (!res.ok) throw new Error("live " + res.status);
        const body = res.body;
        plab.rtts.push({rtt: Date.now() - res.sent, sent: res.sent});
        if (plab.rtts.length > 200) plab.rtts.shift();
        if (plab.state !== state || state.epoch !== view.epoch) { plab.dropped += 1; return false; }
        if (body.resync) { rebuild(Date.now(), 1000); return false; }
        if (!(body.items || []).length && body.seq === state.seq) { plab.notModified += 1; return false; }
        return accept(body);
    }

    // the status chips' step counters (app/dashboard/controls.py status_chips) follow the
    // frames; the rest of a chip changes with the run's status
    const STEP_FORMAT = new Intl.NumberFormat("en-US");
    function showSteps(steps) {
        for (const rid of Object.keys(steps)) {
            const el = document.querySelector('.chip-step[data-run="' + CSS.escape(rid) + '"]');
            if (el) el.textContent = STEP_FORMAT.format(steps[rid]) + "/" + (el.dataset.target || "");
        }
    }

    function rebuild(now, every) {  // figures from the run's history again (show())
        if (now - (plab.lastRebuild || 0) > every && window.dash_clientside &&
                window.dash_clientside.set_props) {
            plab.lastRebuild = now;
            window.dash_clientside.set_props("rebuild-req", {data: now});
        }
    }

    // The items of a poll that came back while graphs on screen still had the last ones to
    // draw wait for them (the draw loop releases them): merged at once, the graph drawn last
    // (the weight-change plot) showed two frames as one update whenever a poll came back
    // before its turn. A release takes the waiting items up to the first that has a frame
    // of a run already taken (items of other runs share the redraw): two frames of one run
    // (a worker that fell behind and caught up; app/live.py frame_groups makes them items
    // of their own) are drawn one after the other, each its own update. A page that falls
    // behind still catches up: once an item has waited CATCH_UP_MS (a little more than the
    // 100 ms between a run's frames at 10 frames/s, so the next frame is here too), whatever
    // waited is merged and drawn once; nothing waits on a redraw more than HOLD_MAX_MS.
    const HOLD_MAX_MS = 1000, CATCH_UP_MS = 120;
    let held = [];  // [{epoch, item, recv}], oldest first

    function drawing() {  // graphs on screen with an update still to draw
        return Object.keys(plab.pending).some((gid) => plab.onScreen[gid] !== false &&
                                                       !plab.hidden[gid]);
    }

    function accept(body) {
        const state = plab.state;
        const items = body.items || [];
        for (const item of items) {
            for (const gid of Object.keys(item.graphs || {})) {
                const gd = graphDiv(gid);
                if (!gd || !gd.layout || epochOf(gd) !== state.epoch) {
                    plab.dropped += 1;  // figures of this epoch not on screen yet: fetch again
                    return false;
                }
            }
        }
        const recv = Date.now();
        let fresh = false, cursors = state.cursors;
        for (const item of items) {
            cursors = Object.assign({}, cursors, item.to);
            if (item.has_frames) fresh = true;
            held.push({epoch: state.epoch, item: item, recv: recv});
        }
        plab.state = {epoch: state.epoch, cursors: cursors, seq: body.seq};
        if (fresh) { plab.activeAt = recv; plab.updates += 1; }
        if (held.length && (!drawing() || recv - held[0].recv > HOLD_MAX_MS)) release();
        return fresh;
    }

    function nextBatch() {  // the held items one redraw shows (see above)
        if (Date.now() - held[0].recv > CATCH_UP_MS) return held.length;
        const runs = new Set();
        let k = 0;
        for (; k < held.length; k++) {
            const mine = Object.keys(held[k].item.steps || {});
            if (k && mine.some((rid) => runs.has(rid))) break;
            mine.forEach((rid) => runs.add(rid));
        }
        return k;
    }

    function release() {  // merge the next batch into the graphs' pending updates; draw them
        const batch = held.splice(0, nextBatch());
        let status = 0;
        for (const b of batch) {
            if (!plab.state || b.epoch !== plab.state.epoch) continue;  // a new view since
            const item = b.item;
            if (item.steps) showSteps(item.steps);
            if (item.status) status = b.recv;
            for (const gid of Object.keys(item.graphs || {})) {
                watch(gid);
                mergeInto(gid, b.epoch, item.graphs[gid], item.wall, b.recv);
            }
            if (item.rebuild) rebuild(b.recv, 5000);  // at most one history back-fill per 5 s
            if (item.wall) plab.lastWall = Math.max(plab.lastWall || 0, item.wall);
            plab.applied += 1;
        }
        if (status && window.dash_clientside && window.dash_clientside.set_props) {
            // a run's status changed: the chips, the play button and the run table refresh
            // (app/dashboard/view_callbacks.py), once per change, not on a clock
            window.dash_clientside.set_props("status-tick", {data: status});
        }
        schedule();
    }

    async function pump() {
        if (pumping) return;
        pumping = true;
        let at = Date.now();  // when the next poll goes out
        while (true) {
            const root = document.getElementById("root");
            const viewer = !!root && root.classList.contains("viewer");
            let wait = plab.pollMs = viewer ? VIEWER_POLL_MS : POLL_MS;
            let after = 0;  // from the answer: the server's hint of the next frame
            plab.nextAt = null;
            woken = false;
            sentAt = null;
            try {
                // a new view wakes the loop (plab.wake) rather than waiting out an idle pause
                await tickOnce(at);
            } catch (err) {
                console.warn("plab tick", err);
                wait = 1000;
            }
            if (plab.nextAt !== null && wait < 1000) after = plab.nextAt + SLACK_MS - Date.now();
            if (Date.now() - plab.activeAt > 3000) { wait = Math.max(wait, IDLE_MS); after = 0; }
            if (!plab.view || !plab.view.runs || !plab.view.runs.length) { wait = 250; after = 0; }
            // polls at least ``wait`` apart (from when the last one went out); at once when woken
            const t0 = sentAt === null ? Date.now() : sentAt;
            at = woken ? Date.now() : Date.now() + Math.max(after, wait - (Date.now() - t0));
        }
    }

    function startFollowing(epoch, cursors) {
        plab.state = {epoch: epoch, cursors: cursors || {}, seq: -1};
        held = [];
        for (const gid of Object.keys(plab.pending)) {
            if (plab.pending[gid].epoch !== epoch) delete plab.pending[gid];
        }
        pollSoon();  // and fast for a while after a change
        pump();
    }

    function pollSoon() {  // poll at once, and fast for the next 3 s
        plab.activeAt = Date.now();
        if (plab.wake) plab.wake();
    }

    // A click that sets the runs going (play, step, fast-forward) polls at once and fast: an
    // idle page (no frames for 3 s: the runs were ready or paused) polls once a second, and
    // the first frames after play waited up to that second more.
    document.addEventListener("click", function (ev) {
        if (ev.target && ev.target.closest && ev.target.closest("#btn-play, #btn-step, #btn-ff")) {
            pollSoon();
        }
    }, true);

    const ns = (window.dash_clientside = window.dash_clientside || {});
    ns.plab = {
        // a new view (figures rebuilt) or its cursors: follow them from now on
        follow: function (view, cursor) {
            plab.view = view || null;
            // (already followed from its figures: the items applied since stay applied)
            if (cursor && view && cursor.epoch === view.epoch &&
                    !(plab.state && plab.state.epoch === view.epoch)) {
                startFollowing(view.epoch, cursor.cursors);
            }
            wrapPlotly();
            // every graph watched from the start: Dash's next figures for those out of view wait
            document.querySelectorAll(".dash-graph[id]").forEach((host) => watch(host.id));
            pump();
            setTimeout(fitPhones, 400);  // the figures Dash is rendering now
            return window.dash_clientside.no_update;
        },

        // setup -> URL without reloading (dcc.Location never notices, so no loops)
        url: function (query) {
            if (typeof query !== "string") return window.dash_clientside.no_update;
            const next = window.location.pathname + (query ? "?" + query : "");
            if (next !== window.location.pathname + window.location.search) {
                window.history.replaceState(null, "", next);
            }
            return window.location.href;
        },

        // presenter mode and the full-screen panel are CSS classes on the page root
        present: function (on, focus) {
            // a viewer link on a phone: one panel at a time, large type (presenter mode)
            const root = document.getElementById("root");
            const phone = !!root && root.classList.contains("viewer") &&
                window.matchMedia("(max-width: 760px)").matches;
            document.body.classList.toggle("phone", phone);
            if (phone && !on && !plab.phoneStarted && window.dash_clientside.set_props) {
                plab.phoneStarted = true;
                window.dash_clientside.set_props("present-store", {data: true});
            }
            document.body.classList.toggle("presenting", !!on);
            document.querySelectorAll(".panel").forEach((el) => {
                el.classList.toggle("panel-focus", !!on && el.dataset.panel === focus);
            });
            document.querySelectorAll(".tab").forEach((el) => {
                el.classList.toggle("active", el.dataset.panel === focus);
            });
            setTimeout(() => window.dispatchEvent(new Event("resize")), 60);
            if (phone) setTimeout(fitPhones, 400);
            return on ? "presenting" : "";
        },
    };

    // On a phone: swipe left/right over the panel to show the next/previous one (its tab).
    let touch = null;
    document.addEventListener("touchstart", function (ev) {
        const t = ev.touches && ev.touches[0];
        touch = t && document.body.classList.contains("phone") ? {x: t.clientX, y: t.clientY} : null;
    }, {passive: true});
    document.addEventListener("touchend", function (ev) {
        const t = ev.changedTouches && ev.changedTouches[0];
        if (!touch || !t) return;
        const dx = t.clientX - touch.x, dy = t.clientY - touch.y;
        touch = null;
        if (Math.abs(dx) < 60 || Math.abs(dx) < 2 * Math.abs(dy)) return;
        const tabs = Array.from(document.querySelectorAll("#panel-tabs .tab"));
        const at = tabs.findIndex((el) => el.classList.contains("active"));
        const next = tabs[(Math.max(at, 0) + (dx < 0 ? 1 : tabs.length - 1)) % tabs.length];
        if (next) next.click();
    }, {passive: true});

    // Keyboard shortcuts: space play/pause, s or → step, r reset, p presenter, 1-6 panels,
    // l log-y, f full screen, Esc leaves presenter mode.
    const KEYS = {
        " ": "btn-play", "k": "btn-play", "s": "btn-step", "ArrowRight": "btn-step",
        "r": "btn-reset", "p": "btn-present", "n": "btn-notes",
    };
    // presenter mode's notes come on demand: a class on the body, no round trip
    document.addEventListener("click", function (ev) {
        if (ev.target && ev.target.closest && ev.target.closest("#btn-notes")) {
            document.body.classList.toggle("show-notes");
            setTimeout(() => window.dispatchEvent(new Event("resize")), 60);
        }
    });
    const CLICK = {"l": "#log-y input"};
    document.addEventListener("keydown", function (ev) {
        const tag = (ev.target && ev.target.tagName) || "";
        if (/INPUT|TEXTAREA|SELECT/.test(tag) || (ev.target && ev.target.isContentEditable)) return;
        if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
        let id = KEYS[ev.key];
        if (ev.key === "Escape" && document.body.classList.contains("presenting")) id = "btn-present";
        // digit k: the k-th panel tab (the tabs follow the panel registry, app/dashboard/panels)
        const tab = /^[1-9]$/.test(ev.key) && document.querySelectorAll("#panel-tabs .tab")[+ev.key - 1];
        if (tab) id = tab.id;
        if (ev.key === "f") {
            if (document.fullscreenElement) document.exitFullscreen();
            else if (document.documentElement.requestFullscreen) document.documentElement.requestFullscreen();
            return;
        }
        if (CLICK[ev.key]) {
            const box = document.querySelector(CLICK[ev.key]);
            if (box) box.click();
            return;
        }
        if (!id) return;
        const el = document.getElementById(id);
        if (el) {
            ev.preventDefault();
            el.click();
        }
    });
})();
