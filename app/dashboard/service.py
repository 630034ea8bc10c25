"""The dashboard's access to the run service: the backend, a flask-caching cache for what
every client shares (presets, finished runs' histories) and the live channels (app.live)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from app import live
from app.dashboard import figures, presets, urlstate
from app.dashboard.controls import is_terminal, seed_options
from app.service.base import Backend, RunNotFound


class Service:
    """The dashboard's access to the backend, with flask-caching for shareable things."""

    def __init__(self, backend: Backend, cache: Any) -> None:
        self.backend = backend
        self.cache = cache
        self.align = True  # runs ask for alignment through RunConfig.align
        self.max_runs = getattr(getattr(backend, "settings", None), "max_runs", None)
        self._presets = cache.memoize(timeout=3600)(self._presets_uncached)
        self._finished_history = cache.memoize(timeout=3600)(self._history_uncached)
        #: the live channels (app.live): frames are read with the server's own rights; each
        #: poll is checked against the caller's (see _register_live_route)
        self.hub = live.LiveHub(getattr(backend, "inner", backend))

    def presets(self) -> list[dict[str, Any]]:
        return self._presets(self.max_runs)

    @staticmethod
    def _presets_uncached(max_runs: int | None) -> list[dict[str, Any]]:
        """Presets whose setup is valid here (a task family that needs a name is left out)."""
        return [p for p in presets.presets(max_runs) if not urlstate.validate(p["setup"])]

    def _history_uncached(self, run_id: str, status: str, step: int) -> dict[str, Any]:
        return self.backend.history(run_id, max_points=figures.HISTORY_POINTS)

    def history(self, info: Mapping[str, Any]) -> dict[str, Any]:
        """Whole-run overview; cached (shared by every client) once the run has ended."""
        if is_terminal(info.get("status", "")):
            return self._finished_history(info["id"], info.get("status", ""), info.get("step", 0))
        return self.backend.history(info["id"], max_points=figures.HISTORY_POINTS)

    def infos(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        out = []
        for rid in ids:
            try:
                out.append(self.backend.get(rid))
            except RunNotFound:
                continue
        return out

    def create(self, config: dict[str, Any], *, start: bool, units: Sequence[int], align: bool,
               seed_index: int = 0) -> str:
        config = dict(config)
        kwargs: dict[str, Any] = {}
        if align:
            config["align"] = "auto"
        n = int(config.get("n", 32))
        view = {"units": [u for u in units if 0 <= u < n] or [0],
                "seed_index": figures.clamp_seed_index(seed_index,
                                                       len(seed_options(config.get("seeds"))))}
        return self.backend.create(config, start=start, view=view, **kwargs)

