"""The one JSON encoder of the app's answers (the REST API and the live path).

A diverged run holds NaN and inf, which JSON does not have: they become null. orjson does that
by itself and encodes a frames page (~50 kB) in about a quarter of json.dumps' time, which sets
the server's capacity under polling; anything orjson does not know (a rare custom object) goes
through the standard encoder after :func:`simulator.settings.finite`.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from simulator.settings import finite

_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def dumps(payload: Any) -> bytes:
    """Compact JSON bytes, NaN and inf as null."""
    try:
        return orjson.dumps(payload, option=_OPTIONS)
    except TypeError:
        return json.dumps(finite(payload), allow_nan=False, separators=(",", ":"),
                          default=str).encode()
