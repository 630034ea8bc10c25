/* The Experiments page (app/dashboard/experiments.py): PNG/SVG export of a view at the size its
   graph's config names (toImageButtonOptions: 1280 x 720 at scale 2). Loaded by the main
   dashboard too; it only defines a clientside namespace. */
window.dash_clientside = Object.assign({}, window.dash_clientside, {
    plabxp: {
        image: function (n, id) {
            const none = window.dash_clientside.no_update;
            if (!n) { return none; }
            const holder = document.getElementById("xp-" + id.view);
            const plot = holder && holder.querySelector(".js-plotly-plot");
            if (!plot || !window.Plotly) { return none; }
            const options = Object.assign({}, (plot._context || {}).toImageButtonOptions || {},
                                          {format: id.fmt});
            window.Plotly.downloadImage(plot, options);
            return n;
        }
    }
});
