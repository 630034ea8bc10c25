/*
 * Plasticity Lab exports, composed in the browser (see app/dashboard/export.py):
 *   image:    one panel as PNG or SVG at 2x or 3x, with the setup as a title line on the
 *             exported image only (Plotly.toImage of a copy of the figure);
 *   slide:    every visible panel in one PNG, a grid of 1920x1080 CSS pixels drawn at 2x,
 *             the setup underneath (Plotly.toImage per graph, then a canvas);
 *   download: fetch a data export (the API's streamed CSV / JSON / zip) as a download.
 * Files are named by run and panel (export-meta, from the server). Nothing leaves the machine.
 */
(function () {
    "use strict";
    const plab = (window.plab = window.plab || {});
    const FONT = "Inter, 'Segoe UI', Helvetica, Arial, sans-serif";
    const TITLE_PX = 15;

    function graphDiv(gid) {
        const host = document.getElementById(gid);
        return host ? host.querySelector(".js-plotly-plot") : null;
    }

    function visible(el) {
        if (!el || !el.offsetParent) return false;
        const box = el.getBoundingClientRect();
        return box.width > 0 && box.height > 0;
    }

    function save(url, filename) {
        const a = document.createElement("a");
        a.href = url;
        a.download = filename;
        a.style.display = "none";
        document.body.appendChild(a);
        a.click();
        setTimeout(() => a.remove(), 0);
    }

    function say(text) {
        const el = document.getElementById("export-msg");
        if (el) el.textContent = text;
    }

    function escapeHtml(s) {
        return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
    }

    /* The graph's figure for Plotly.toImage (shallow copies, ``extra`` merged into the
     * layout): what is HTML on screen (plab.js) is Plotly's in the image, the legend
     * (meta.legend) and the colour bars of heatmaps marked meta.scale; no axis line on an
     * axis no trace with points uses (plab.emptyAxesOff). */
    function imageFigure(gd, extra) {
        const layout = Object.assign({}, gd.layout || {}, extra || {});
        if (((gd.layout || {}).meta || {}).legend) layout.showlegend = true;
        plab.emptyAxesOff(layout, gd.data);
        const data = (gd.data || []).map((t) => ((t.meta || {}).scale ? {...t, showscale: true} : t));
        return {data: data, layout: layout};
    }

    /* Lines of at most about ``width`` pixels, broken at " · ". */
    function wrap(lines, width) {
        const perLine = Math.max(20, Math.floor((width - 24) / (TITLE_PX * 0.55)));
        const out = [];
        lines.forEach((line) => {
            let cur = "";
            String(line).split(" · ").forEach((part) => {
                const next = cur ? cur + " · " + part : part;
                if (cur && next.length > perLine) {
                    out.push(cur);
                    cur = part;
                } else {
                    cur = next;
                }
            });
            if (cur) out.push(cur);
        });
        return out;
    }

    /* A copy of the graph's figure with the setup as title lines in a band added above it
     * (one annotation per line, placed in pixels from the plot area Plotly laid out). */
    function titled(gd, lines, width, height) {
        const fig = imageFigure(gd), layout = fig.layout;
        const size = gd._fullLayout._size;
        const wrapped = wrap(lines, width);
        const lineH = TITLE_PX + 6;
        const extra = wrapped.length ? wrapped.length * lineH + 12 : 0;
        const top = size.t + extra;
        layout.margin = Object.assign({}, layout.margin || {},
                                      {l: size.l, r: size.r, t: top, b: size.b});
        layout.width = width;
        layout.height = height + extra;
        layout.annotations = (layout.annotations || []).concat(wrapped.map((text, i) => ({
            text: escapeHtml(text), showarrow: false, xref: "paper", yref: "paper",
            x: (12 - size.l) / size.w, xanchor: "left",
            y: 1 + (top - 6 - i * lineH) / size.h, yanchor: "top", align: "left",
            font: {size: TITLE_PX, family: FONT, color: "#1f2937"},
        })));
        return {data: fig.data, layout: layout, extra: extra};
    }

    function panelImage(panel, format, scale, meta) {
        const gid = (meta.graphs || {})[panel];
        if (plab.flush) plab.flush(gid);  // updates it merged while out of view
        const gd = graphDiv(gid);
        if (!gd || !gd._fullLayout || !window.Plotly) {
            say("no " + panel + " plot to save yet");
            return Promise.resolve(null);
        }
        const width = Math.round(gd._fullLayout.width), height = Math.round(gd._fullLayout.height);
        const fig = titled(gd, meta.title || [], width, height);
        const name = ((meta.files || {})[panel] || ("plasticity-" + panel)) + "." + format;
        return saveImage({data: fig.data, layout: fig.layout}, format, scale, width,
                         height + fig.extra, name);
    }

    /* ``fig`` as a ``format`` file of width x height CSS pixels at ``scale``, named ``name`` */
    function saveImage(fig, format, scale, width, height, name) {
        return window.Plotly.toImage(fig, {format: format, scale: scale, width: width,
                                           height: height})
            .then((url) => {
                save(url, name);
                plab.lastExport = {name: name, width: width * scale, height: height * scale};
                say("saved " + name);
                return name;
            });
    }

    function loadImage(url) {
        return new Promise((resolve, reject) => {
            const img = new Image();
            img.onload = () => resolve(img);
            img.onerror = () => reject(new Error("image did not load"));
            img.src = url;
        });
    }

    function slide(meta) {
        const size = meta.slide_size || {width: 1920, height: 1080, scale: 2};
        const W = size.width, H = size.height, S = size.scale;
        const graphs = meta.graphs || {};
        if (plab.flush) Object.values(graphs).forEach(plab.flush);  // merged out of view
        const shown = Object.keys(graphs).map((p) => graphDiv(graphs[p]))
            .filter((gd) => gd && gd._fullLayout && visible(gd));
        const heads = shown.map((gd) => {
            const section = gd.closest("section");
            const h = section ? section.querySelector("h3") : null;
            return h ? h.textContent.trim() : "";
        });
        const HEAD = 36;
        if (!shown.length || !window.Plotly) {
            say("no visible panel to put on a slide");
            return Promise.resolve(null);
        }
        const lines = meta.title || [];
        const footer = Math.max(60, lines.length * 30 + 24);
        const cols = shown.length <= 1 ? 1 : shown.length <= 4 ? 2 : 3;
        const rows = Math.ceil(shown.length / cols);
        const cw = Math.floor(W / cols), ch = Math.floor((H - footer) / rows);
        return Promise.all(shown.map((gd) => window.Plotly.toImage(
            imageFigure(gd, {width: cw, height: ch - HEAD}),
            {format: "png", width: cw, height: ch - HEAD, scale: S}).then(loadImage)))
            .then((images) => {
                const canvas = document.createElement("canvas");
                canvas.width = W * S;
                canvas.height = H * S;
                const c = canvas.getContext("2d");
                c.fillStyle = "#ffffff";
                c.fillRect(0, 0, canvas.width, canvas.height);
                c.textBaseline = "top";
                images.forEach((img, i) => {
                    const x = (i % cols) * cw, y = Math.floor(i / cols) * ch;
                    c.fillStyle = "#1f2937";
                    c.font = "600 " + (18 * S) + "px " + FONT;
                    c.fillText(heads[i], (x + 16) * S, (y + 10) * S, (cw - 32) * S);
                    c.drawImage(img, x * S, (y + HEAD) * S, cw * S, (ch - HEAD) * S);
                });
                c.fillStyle = "#1f2937";
                c.font = (20 * S) + "px " + FONT;
                c.textBaseline = "top";
                lines.forEach((line, i) => {
                    c.fillText(line, 24 * S, (H - footer + 12 + i * 30) * S, (W - 48) * S);
                });
                return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
            })
            .then((blob) => {
                const name = (meta.slide || "plasticity-slide") + ".png";
                const url = URL.createObjectURL(blob);
                save(url, name);
                setTimeout(() => URL.revokeObjectURL(url), 60000);
                plab.lastExport = {name: name, width: W * S, height: H * S,
                                   panels: shown.length};
                say("saved " + name + " (" + shown.length + " panels)");
                return name;
            });
    }

    // The toolbar's camera: Plotly's own download would draw the figure as it is on screen,
    // without its legend or colour bars (HTML there, see plab.js); this one draws them, under
    // the same options (toImageButtonOptions: format, scale, file name)
    document.addEventListener("click", (ev) => {
        const btn = ev.target.closest && ev.target.closest(".modebar-btn[data-title^='Download plot']");
        const gd = btn && btn.closest(".js-plotly-plot");
        const html = gd && (((gd.layout || {}).meta || {}).legend ||
                            (gd.data || []).some((t) => (t.meta || {}).scale));
        if (!html || !window.Plotly) return;
        ev.preventDefault();
        ev.stopPropagation();
        const host = gd.closest(".dash-graph");
        if (plab.flush && host) plab.flush(host.id);
        const opts = (gd._context || {}).toImageButtonOptions || {};
        const format = opts.format || "png";
        saveImage(imageFigure(gd), format, opts.scale || 1,
                  Math.round(gd._fullLayout.width), Math.round(gd._fullLayout.height),
                  (opts.filename || "plasticity-plot") + "." + format)
            .catch((err) => say("export failed: " + err.message));
    }, true);

    plab.exportImage = panelImage;
    plab.exportSlide = slide;

    const ns = (window.dash_clientside = window.dash_clientside || {});
    Object.assign(ns, {
        plab_export: {
            image: function (_nImage, _nSlide, panel, format, scale, meta) {
                const dc = window.dash_clientside;
                const trigger = ((dc.callback_context || {}).triggered || [])[0] || {};
                meta = meta || {};
                const job = String(trigger.prop_id || "").startsWith("btn-slide")
                    ? slide(meta)
                    : panelImage(panel, format === "svg" ? "svg" : "png",
                                 scale === 3 ? 3 : 2, meta);
                job.catch((err) => say("export failed: " + err.message));
                return dc.no_update;
            },
            toolbar: function (meta) {
                const graphs = (meta || {}).graphs || {}, configs = (meta || {}).toolbar || {};
                // the camera button reads this when clicked: set it in place (a
                // Plotly.react with the new config would redraw every graph, and an empty
                // subplot logs NaN path errors)
                Object.keys(configs).forEach((panel) => {
                    const gd = graphDiv(graphs[panel]);
                    if (gd && gd._context) {
                        gd._context.toImageButtonOptions = Object.assign(
                            {}, configs[panel].toImageButtonOptions);
                    }
                });
                return window.dash_clientside.no_update;
            },
            download: function (link) {
                if (link && link.url) save(link.url, "");
                return window.dash_clientside.no_update;
            },
        },
    });
})();
