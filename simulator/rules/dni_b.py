"""DNI-b: the paper's biologically plausible DNI (Marschall, Cho & Savin 2019).

The same three local rules as :mod:`simulator.rules.dni`, with the choices that make them
local: fixed random feedback (feedback alignment), a learned Jacobian J~ and a tanh label.
"""

from __future__ import annotations

from simulator.rules.dni import DNI, SETTINGS, with_defaults


class DNIB(DNI):
    name = "dni-b"
    summary = "the paper's local rule: apical synthetic gradient, learned J~, random feedback"
    settings = with_defaults(SETTINGS, feedback="random", jacobian="learned", label="tanh")
