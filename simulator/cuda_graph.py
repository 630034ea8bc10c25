"""The engine's learning step replayed from captured CUDA graphs: ``Run(cuda_graph=True)``.

A step of a small network is a few dozen tiny kernels, and on a GPU each launch costs more
than the kernel itself. Captured once and replayed as one graph, a step costs one launch.
Capture records kernels, not Python, so three things are arranged here:

- fixed addresses: x(t), y(t), r(t-1) and the constant ones column go through buffers
  owned by this object; the engine already updates every weight in place;
- state the rule rebinds in Python (``self.a_prev = a``) is copied back, inside the graph,
  into the tensor it held before capture, so the next replay reads the new value there;
- whatever Python decides inside the step (which populations are plastic, the learning
  rates, the rule's settings, which weight tensors exist) is part of a graph's key: a
  change captures a new graph, so a replay never runs a stale decision.

Each key's first step runs eagerly on a side stream (CUDA's advice before capture: lazy
library set-up happens outside the graph), its second step is captured there and replayed.
A rule whose tensors appear or disappear during a step (DNI's first step has no a~(t-1))
is stepped eagerly until its state has settled. Only rules marked ``compilable`` (all state
in tensors, no per-step Python counters) may use this.
"""

from __future__ import annotations

import gc
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

StepOutput = tuple[Tensor, Tensor, Tensor, Tensor | None, dict[str, Tensor]]
#: the engine's step: (r, x, y, plastic, ones, t, i, hook) -> r(t), V(t), z(t), U(t), diagnostics
StepFn = Callable[..., StepOutput]


def _tensor_attrs(obj: object) -> dict[str, Tensor | None]:
    """The rule's attributes that hold a tensor, or None (state not yet set)."""
    return {k: v for k, v in vars(obj).items() if v is None or isinstance(v, Tensor)}


def _weak(method: Callable) -> Callable[[], Callable | None]:
    """A weak reference to a bound method (a strong one to a plain function)."""
    if hasattr(method, "__self__"):
        return weakref.WeakMethod(method)  # type: ignore[arg-type]
    return lambda: method


def _alive(ref: Callable[[], Callable | None]) -> Callable:
    target = ref()
    if target is None:
        raise RuntimeError("the run these CUDA graphs belong to no longer exists")
    return target


def _copy_back(rule: object, before: dict[str, Tensor | None]) -> None:
    """Put values the step rebound (``self.a_prev = a``) into the tensors held before it,
    so a rule's state keeps one address for the whole run; new state (None before) stays."""
    for k, old in before.items():
        new = getattr(rule, k, None)
        if old is not None and isinstance(new, Tensor) and new is not old and \
                new.shape == old.shape and new.dtype == old.dtype:
            old.copy_(new)
            setattr(rule, k, old)


class StepGraphs:
    """Captured CUDA graphs of one run's step, one per key, least recently used dropped."""

    def __init__(self, step: StepFn, rule: object, populations: Callable[[], dict[str, Tensor]],
                 learning_rates: dict[str, float], capacity: int = 8) -> None:
        # weak references to the run's methods: no run <-> graphs cycle, so a dropped run and
        # its graphs are freed at once, not by a garbage collection that could fall inside
        # another run's capture (freeing a graph there invalidates the capture)
        self._step_ref = _weak(step)
        self._populations_ref = _weak(populations)
        self._rule = rule
        self._lr = learning_rates  # the engine's dict, read at every step (changes mid-run)
        self._capacity = capacity
        self._graphs: OrderedDict[tuple, tuple[torch.cuda.CUDAGraph, StepOutput]] = OrderedDict()
        self._warmed: set[tuple] = set()
        self._stream: torch.cuda.Stream | None = None
        self._r = self._x = self._y = self._ones = torch.empty(0)
        self.captures = 0  # graphs captured so far (tests and benchmarks read it)
        self.replays = 0

    def _step(self, *args: Any) -> StepOutput:
        return _alive(self._step_ref)(*args)

    def _populations(self) -> dict[str, Tensor]:
        return _alive(self._populations_ref)()

    def key(self, plastic: frozenset[str]) -> tuple:
        """Everything Python decides inside the step (computed every step: keep it cheap;
        the dicts' keys are fixed for a run, so their values in order identify them)."""
        args = getattr(self._rule, "args", {})
        return (plastic, tuple(self._lr.values()), tuple(args.values()),
                tuple(w.data_ptr() for w in self._populations().values()))

    def _buffers(self, r: Tensor, x: Tensor, y: Tensor) -> None:
        """Fixed-address inputs, (re)made only when a shape changes."""
        if self._r.shape != r.shape or self._r.dtype != r.dtype:
            self._graphs.clear()
            self._r = torch.empty_like(r)
            self._ones = r.new_ones(r.shape[0], 1)
        if self._x.shape != x.shape:
            self._graphs.clear()
            self._x, self._y = torch.empty_like(x), torch.empty_like(y)

    def step(self, r: Tensor, x: Tensor, y: Tensor, plastic: frozenset[str]) -> StepOutput:
        """One learning step, replayed when a graph for this key exists. Returns what the
        engine's step returns; r(t) is this object's buffer and V, z, U and the diagnostics
        are the graph's outputs: valid until the next call, so copy what you keep."""
        self._buffers(r, x, y)
        if r is not self._r:  # the run's state came from an eager step or a checkpoint
            self._r.copy_(r)
        self._x.copy_(x)
        self._y.copy_(y)
        key = self.key(plastic)
        entry = self._graphs.get(key)
        if entry is None:
            if key not in self._warmed:
                return self._eager(plastic, warm=key)
            entry = self._capture(plastic)
            if entry is None:  # the rule's state was still settling: try again next step
                return self._eager(plastic, warm=None)
            self._graphs[key] = entry
            while len(self._graphs) > self._capacity:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
        graph, (_, V, z, U, diagnostics) = entry
        graph.replay()
        self.replays += 1
        return self._r, V, z, U, diagnostics

    def _side_stream(self) -> torch.cuda.Stream:
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=self._r.device)
        return self._stream

    def _eager(self, plastic: frozenset[str], warm: tuple | None) -> StepOutput:
        """A real step, run eagerly on the side stream (the warm-up before a capture)."""
        side, main = self._side_stream(), torch.cuda.current_stream(self._r.device)
        side.wait_stream(main)
        before = _tensor_attrs(self._rule)
        with torch.cuda.stream(side):
            r_new, V, z, U, diagnostics = self._step(self._r, self._x, self._y, plastic,
                                                     self._ones, 0, 0, None)
            self._r.copy_(r_new)
            _copy_back(self._rule, before)  # keep the addresses every graph reads
        main.wait_stream(side)
        if warm is not None:
            self._warmed.add(warm)
        return self._r, V, z, U, diagnostics

    def _capture(self, plastic: frozenset[str]) -> tuple[torch.cuda.CUDAGraph, StepOutput] | None:
        """Capture one step; None (nothing captured, nothing changed) if the rule's tensor
        state changes shape or appears during the step."""
        before = _tensor_attrs(self._rule)
        graph = torch.cuda.CUDAGraph()
        collecting = gc.isenabled()
        gc.disable()  # no collection (of other runs' graphs) while capturing
        try:
            with torch.cuda.graph(graph, stream=self._side_stream(),
                                  capture_error_mode="thread_local"):
                out = self._step(self._r, self._x, self._y, plastic, self._ones, 0, 0, None)
                after = _tensor_attrs(self._rule)
                settled = after.keys() == before.keys() and all(
                    (old is None) == (after[k] is None)
                    and (old is None or (old.shape == after[k].shape
                                         and old.dtype == after[k].dtype))
                    for k, old in before.items())
                if settled:
                    _copy_back(self._rule, before)  # rebound in Python: carried back in the graph
                    self._r.copy_(out[0])
        finally:
            if collecting:
                gc.enable()
        for k in after.keys() - before.keys():
            delattr(self._rule, k)
        for k, old in before.items():  # Python side as before the capture; the graph holds the rest
            setattr(self._rule, k, old)
        if not settled:
            return None
        self.captures += 1
        return graph, out

    def state(self) -> dict[str, Any]:
        return {"captures": self.captures, "replays": self.replays, "graphs": len(self._graphs)}
