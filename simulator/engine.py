"""The engine: one run = config, network, task stream, rule, phase schedule, S seeds.

``Run.advance(k)`` runs k online-learning steps for all seeds as one batched tensor
computation and returns :class:`Telemetry` for those steps. ``Run.evaluate`` measures the
held-out loss with learning frozen. Runs checkpoint to a dict (``state_dict``) and can be
rebuilt from one, with the same or another rule ("continue from here with dni-b").
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from simulator.alignment import Passive, Shadow
from simulator.config import RunConfig
from simulator.cuda_graph import StepGraphs
from simulator.fused import plan as fused_plan
from simulator.losses import error_signal, loss_value
from simulator.network import Network, matvec, with_one
from simulator.phases import Schedule, parse_schedule
from simulator.rules import RULES, make_rule
from simulator.rules.base import Rank1, Rate, RuleOutput, StepContext, apply_update, rate_active
from simulator.settings import ConfigError, quote
from simulator.tasks import make_task

PREFETCH = 1024  # steps of task data generated at a time


def set_threads(threads: int | None = None) -> None:
    """One intra-op thread unless asked otherwise: with more, tiny ops spin-wait (1000x)."""
    threads = threads or int(os.environ.get("PLASTICITY_THREADS", "1"))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@dataclass
class Telemetry:
    """What happened during ``advance(k)``, steps ``start .. start + k - 1``.

    loss (k, S); phase index per step (k,); diagnostics name -> (k, S) (NaN where a rule had
    nothing to report, e.g. before its first target); with record="traces": V, U, r
    (k, S, n) and x, y, z (k, S, dim); weight_change: population -> W(end) - W(start)
    (S, a, b), the update each population received, summed; with record_updates=True also
    updates: population -> (k, S, a, b), the update -lr G applied at each step (zero where the
    phase froze the population), estimates: the rule's G (its estimate of dL/dW) at each
    step, and update_norms: population -> (k, S), ||G||.
    """

    start: int
    loss: Tensor
    phase: list[int]
    diagnostics: dict[str, Tensor]
    weight_change: dict[str, Tensor]
    V: Tensor | None = None
    U: Tensor | None = None
    r: Tensor | None = None
    x: Tensor | None = None
    y: Tensor | None = None
    z: Tensor | None = None
    updates: dict[str, Tensor] = field(default_factory=dict)
    estimates: dict[str, Tensor] = field(default_factory=dict)
    update_norms: dict[str, Tensor] = field(default_factory=dict)
    diverged_at: int | None = None
    alignment: Tensor | None = None  # (k, S) cosine with the exact gradient (Run(align=...))
    norm_ratio: Tensor | None = None  # (k, S) ||G_rule|| / ||G_exact||, W_rec block
    #: comparison rule -> (k, S) cosine of its passive update with the exact gradient
    compare: dict[str, Tensor] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return self.loss.shape[0]


#: a weight past this size (or not finite) ends a run as "diverged", in every rule: such a
#: run has stopped learning anything, though its loss may stay finite for a while
WEIGHT_BOUND = 1e4


def blown_up(pops: dict[str, Tensor]) -> tuple[str, float] | None:
    """(population, its largest |w|) of the first population past WEIGHT_BOUND or not
    finite; None when all are within bounds. One reduction per population."""
    for name, w in pops.items():
        size = float(w.detach().abs().amax()) if w.numel() else 0.0
        if not size <= WEIGHT_BOUND:  # also true for NaN
            return name, size
    return None


class Diverged(RuntimeError):
    """Raised by ``advance`` callers that want an exception; the run's status says it too."""


class Run:
    """One simulation run. Not thread-safe: drive it from one thread (a worker)."""

    def __init__(self, config: RunConfig, *, threads: int | None = None,
                 align: str | None = None, compile: bool | str = False,
                 cuda_graph: bool = False, ensemble: Sequence[int] | None = None,
                 fused: bool | None = None, alphas: Sequence[float] | None = None) -> None:
        set_threads(threads)
        #: the DNI family steps through simulator.fused's k-step loop where it applies
        #: (default; False, or PLASTICITY_FUSED=0: always the generic step)
        self.fused = (os.environ.get("PLASTICITY_FUSED", "1") != "0") if fused is None else fused
        self.config = config = config.validated()
        # ensemble: the seed of each slot of the batch axis, repeats allowed (a batched sweep,
        # simulator.sweep: members x seeds in one run, each member's rates a tensor in self.lr)
        seeds = self._seeds = list(config.seeds) if ensemble is None else list(ensemble)
        #: a non-finite loss stops the run (False: a sweep's batch keeps its other members going)
        self.halt_on_divergence = True
        self.task = make_task(config.task, config.task_args)
        self.schedule: Schedule = parse_schedule(config.phases)
        self.dtype = config.torch_dtype
        self.device = torch.device(config.device)
        # alphas: the leak of each slot (a batched sweep whose members differ in alpha)
        if alphas is not None:
            from simulator.rules import rule_class

            if len(alphas) != len(seeds) or not rule_class(config.rule).per_slot_alpha:
                raise ValueError("alphas: one per slot, for a rule with per_slot_alpha")
        alpha = (config.alpha if alphas is None else
                 torch.tensor(alphas, dtype=config.torch_dtype,
                              device=torch.device(config.device)).view(-1, 1))
        self.net, self.r = Network.init(config.n, self.task.n_in, self.task.n_out, alpha,
                                        seeds, self.dtype, self.device,
                                        config.w_rec_init, config.init_state)
        self.rule = make_rule(config.rule, self.net, self.task.n_out, config.rule_args, seeds)
        self.lr: dict[str, Rate] = {"basal": config.lr, "readout": config.lr,
                                    **self.rule.learning_rates()}
        self.stream = self.task.stream(seeds, "train")
        # align: an exact gradient computed beside the run (simulator.alignment), read-only;
        # the argument overrides config.align
        align = align if align is not None else config.align  # compare sets config.align
        self.shadow = None if align is None else Shadow(align, self.net, self.task.n_out, seeds)
        # compare: rules measured passively on this network (JMLR protocol), never applied
        self.passive = (Passive(config.compare, self.net, self.task.n_out, seeds)
                        if config.compare else None)
        # compile: the step captured by torch.compile (inductor, C++ wrapper), ~2x faster
        # for small networks, where per-op overhead dominates; the first steps compile (s)
        # compile="background": step eagerly at once while a twin run (same config, its own
        # tensors) compiles the step in a thread; the next advance() after it is ready
        # adopts the twin's tensors and steps compiled (_adopt_twin): no start-up price
        self._compiled_step = None
        self._twin: tuple[Run, Callable[..., Any]] | None = None
        self._twin_thread: threading.Thread | None = None
        self._learn_step_owner: Run | None = None  # the twin whose compiled step we use
        self.compile_note = ""
        if compile not in (False, True, "background"):
            raise ConfigError("compile", f"got {quote(compile)}; allowed: false, true, background")
        if compile:
            if not self.rule.compilable:
                allowed = ", ".join(n for n, c in RULES.items() if c.compilable)
                raise ConfigError("compile", f"rule {config.rule!r} keeps Python counters that "
                                             f"change every step; allowed for: {allowed}")
            if compile == "background":
                if self.shadow is None and self.passive is None and not cuda_graph:
                    self._start_twin_compile(threads)
            else:
                self._compiled_step = torch.compile(self._learn_step, dynamic=False,
                                                    options={"cpp_wrapper": True})
        # cuda_graph: the step replayed from captured CUDA graphs (simulator.cuda_graph): on a
        # GPU a small network's step is launch-bound, and a graph is one launch
        self._graphs: StepGraphs | None = None
        if cuda_graph:
            if self.device.type != "cuda":
                raise ConfigError("cuda_graph", f"needs device cuda; got {config.device!r}")
            if not self.rule.compilable or compile:
                allowed = ", ".join(n for n, c in RULES.items() if c.compilable)
                raise ConfigError("cuda_graph", f"allowed for rules {allowed}, without compile; "
                                                f"got rule {config.rule!r}"
                                                f"{' with compile' if compile else ''}")
            self._graphs = StepGraphs(self._learn_step, self.rule, self.populations, self.lr)
        self.t = 0
        self.status = "ready"
        self._xb = self._yb = torch.empty(0)
        self._i = 0

    # ---- the step compiled in the background -----------------------------------------------
    def _start_twin_compile(self, threads: int | None) -> None:
        twin = Run(self.config, threads=threads, ensemble=self._seeds)
        step = torch.compile(twin._learn_step, dynamic=False, options={"cpp_wrapper": True})

        @torch.no_grad()
        def work() -> None:
            try:
                twin._pops = twin.populations()
                ones = twin.r.new_ones(twin.net.seeds, 1)
                xs, ys = twin._data(2)
                for phase in twin.schedule.phases:  # one graph per phase; the first step of
                    r = twin.r  # a rule (no a~(t-1) yet) and a later one differ
                    for i in range(2):
                        r = step(r, xs[i], ys[i], phase.plastic, ones, 0, 0, None)[0]
                        twin.rule.after_update(i)
                self._twin = (twin, step)
            except Exception as err:  # the run stays eager, and says why
                self.compile_note = f"background compile failed, stepping eagerly: {err!r}"[:300]

        self._twin_thread = threading.Thread(target=work, name="compile-step", daemon=True)
        self._twin_thread.start()

    @property
    def compiled(self) -> bool:
        """Whether advance() steps through a compiled step (or will, from its next call)."""
        return self._compiled_step is not None or self._twin is not None

    def _adopt_twin(self) -> None:
        """Continue on the twin's tensors (its compiled step reads them): copy this run's
        weights and rule state into them and take them over, between two advance() calls."""
        assert self._twin is not None
        twin, step = self._twin
        self._twin = None
        twin.net.W.copy_(self.net.W)
        twin.net.W_out.copy_(self.net.W_out)
        twin.rule.load_state_dict(self.rule.state_dict())
        twin.lr.update(self.lr)
        self.net, self.rule, self.lr = twin.net, twin.rule, twin.lr
        self._learn_step_owner = twin
        self._compiled_step = step

    # ---- what a run holds ---------------------------------------------------------------
    @property
    def seeds(self) -> list[int]:
        """The seed of each slot of the batch axis (config.seeds unless an ensemble)."""
        return self._seeds

    def populations(self) -> dict[str, Tensor]:
        """Weights by synaptic sub-population, (S, post, pre) each, biases as last column."""
        return {"basal": self.net.W, "readout": self.net.W_out, **self.rule.populations()}

    def phase_at(self, t: int) -> str:
        return self.schedule.at(t).name

    # ---- changes mid-run ------------------------------------------------------------------
    def set_learning_rates(self, **rates: float) -> None:
        """Change learning rates without reset: lr (network), or a population's name."""
        for key, value in rates.items():
            pops = ("basal", "readout") if key == "lr" else (key,)
            for pop in pops:
                if pop not in self.lr:
                    raise ConfigError(key, f"unknown learning rate; allowed: lr, "
                                           f"{', '.join(self.lr)}")
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                0 <= value <= 10
            ):
                raise ConfigError(key, f"got {quote(value)}; allowed: a number in [0, 10]")
            for pop in pops:
                self.lr[pop] = float(value)

    def set_phases(self, text: str) -> None:
        self.schedule = parse_schedule(text)
        self.config = self.config.replace(phases=text)

    # ---- your own network and stream ------------------------------------------------------
    def _named_arrays(self) -> dict[str, Tensor]:
        """Views (S, ...) of everything load_arrays can set, by the conventional names."""
        net, n, n_in = self.net, self.net.n, self.net.n_in
        named = {"W_rec": net.W[:, :, :n], "W_in": net.W[:, :, n : n + n_in],
                 "b_rec": net.W[:, :, -1], "W_out": net.W_out[:, :, :n],
                 "b_out": net.W_out[:, :, -1]}
        named.update(self.rule.arrays())
        return named

    def _seed_index(self, seed_index: int) -> int:
        S = self.net.seeds
        if isinstance(seed_index, bool) or not isinstance(seed_index, int) or not (
            0 <= seed_index < S
        ):
            raise ConfigError("seed_index", f"got {str(seed_index)[:100]!r}; allowed: an "
                                            f"integer in [0, {S - 1}]")
        return seed_index

    @torch.no_grad()
    def load_arrays(self, arrays: dict[str, Any], seed_index: int = 0) -> None:
        """Set weights of seed ``seed_index`` from arrays (NumPy or torch) in the
        conventional shapes: W_rec (n, n), W_in (n, n_in), b_rec (n,), W_out (n_out, n),
        b_out (n_out,), plus the rule's own arrays (``state_arrays`` lists every name; for
        dni/dni-b: apical (n, n + n_out + 1) acting on [r; y*; 1], jacobian (n, n),
        feedback (n_out, n)). Names not given keep their values (except that before the first
        step a learned J~ follows a new W_rec, as it starts at W_rec); nothing changes unless
        every array is valid."""
        s = self._seed_index(seed_index)
        if not isinstance(arrays, dict):
            raise ConfigError("arrays", "must be a mapping of names to arrays")
        named = self._named_arrays()
        staged: dict[str, Tensor] = {}
        for name, value in arrays.items():
            if name not in named:
                raise ConfigError(f"arrays.{str(name)[:100]}",
                                  f"unknown array; allowed: {', '.join(named)}")
            expected = tuple(named[name].shape[1:])
            try:
                tensor = torch.as_tensor(value, dtype=torch.float64)
            except (TypeError, ValueError, RuntimeError):
                raise ConfigError(f"arrays.{name}", f"got {str(value)[:100]!r}; allowed: a "
                                                    f"numeric array of shape {expected}") from None
            if tuple(tensor.shape) != expected:
                raise ConfigError(f"arrays.{name}", f"got shape {tuple(tensor.shape)}; "
                                                    f"expected {expected}")
            if not bool(torch.isfinite(tensor).all()):
                raise ConfigError(f"arrays.{name}", "got non-finite values; allowed: finite")
            staged[name] = tensor
        for name, tensor in staged.items():
            named[name][s].copy_(tensor)
        self.rule.arrays_loaded(set(staged), self.net)

    def state_arrays(self, seed_index: int = 0) -> dict[str, Any]:
        """The arrays ``load_arrays`` takes, for seed ``seed_index``, as float64 NumPy copies."""
        s = self._seed_index(seed_index)
        return {name: w[s].detach().to("cpu", torch.float64).numpy().copy()
                for name, w in self._named_arrays().items()}

    def feed(self, x: Any, y: Any) -> None:
        """The next len(x) steps read input x (T, n_in) and target y (T, n_out), the same for
        every seed, or (T, S, n_in) / (T, S, n_out) per seed, instead of the task's stream
        (which resumes afterwards where it was)."""
        S, n_in, n_out = self.net.seeds, self.net.n_in, self.net.n_out
        out = []
        for name, value, width in (("x", x, n_in), ("y", y, n_out)):
            try:
                tensor = torch.as_tensor(value, dtype=torch.float64)
            except (TypeError, ValueError, RuntimeError):
                raise ConfigError(name, f"got {str(value)[:100]!r}; allowed: a numeric array "
                                        f"(T, {width}) or (T, {S}, {width})") from None
            if tensor.dim() == 2 and tensor.shape[1] == width:
                tensor = tensor.unsqueeze(1).expand(-1, S, -1)
            if tensor.dim() != 3 or tuple(tensor.shape[1:]) != (S, width):
                raise ConfigError(name, f"got shape {tuple(tensor.shape)}; expected "
                                        f"(T, {width}) or (T, {S}, {width})")
            out.append(tensor.to(self.dtype).to(self.device))
        if out[0].shape[0] != out[1].shape[0]:
            raise ConfigError("y", f"got {out[1].shape[0]} steps; expected as many as x "
                                   f"({out[0].shape[0]})")
        if self._i < self._xb.shape[0]:  # the prefetched task data comes after
            out = [torch.cat([out[0], self._xb[self._i :]]), torch.cat([out[1], self._yb[self._i :]])]
        self._xb, self._yb = out
        self._i = 0

    def reset_state(self, r: Any = None) -> None:
        """Set the network state r for the next step: zeros (the default), an (n,) array for
        every seed or an (S, n) array per seed. Rule state (traces...) is left as it is."""
        S, n = self.net.seeds, self.net.n
        if r is None:
            self.r = torch.zeros_like(self.r)
            return
        try:
            tensor = torch.as_tensor(r, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise ConfigError("r", f"got {str(r)[:100]!r}; allowed: a numeric array "
                                   f"({n},) or ({S}, {n})") from None
        if tensor.dim() == 1 and tensor.shape[0] == n:
            tensor = tensor.expand(S, n)
        if tuple(tensor.shape) != (S, n):
            raise ConfigError("r", f"got shape {tuple(tensor.shape)}; expected ({n},) or ({S}, {n})")
        self.r = tensor.to(self.dtype).to(self.device).clone()

    # ---- the step loop ----------------------------------------------------------------------
    def _data(self, k: int) -> tuple[Tensor, Tensor]:
        """The next k steps of task data, from a prefetched buffer on the run's device."""
        xs, ys = [], []
        while k > 0:
            if self._i >= self._xb.shape[0]:
                x, y = self.stream.next(max(PREFETCH, min(k, 65536)))
                self._xb = x.to(self.dtype).to(self.device)
                self._yb = y.to(self.dtype).to(self.device)
                self._i = 0
            take = min(k, self._xb.shape[0] - self._i)
            xs.append(self._xb[self._i : self._i + take])
            ys.append(self._yb[self._i : self._i + take])
            self._i += take
            k -= take
        return (xs[0], ys[0]) if len(xs) == 1 else (torch.cat(xs), torch.cat(ys))

    def _learn_step(self, r: Tensor, x: Tensor, y: Tensor, plastic: frozenset[str], ones: Tensor,
                    t: int, i: int, hook: Callable[[int, StepContext, RuleOutput], None] | None,
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, dict[str, Tensor]]:
        """One online step: forward pass, the rule, then W <- W - lr G for the plastic
        populations. Returns r(t), V(t), z(t), the rule's signal U(t) and its diagnostics."""
        net, alpha = self.net, self.net.alpha
        p = torch.cat([r, x, ones], 1)
        V = matvec(net.W, p)
        h = torch.tanh(V)
        r_new = net.leak_step(r, h)
        if self.rule.perturbs_state:  # node perturbation: noise on the state itself
            r_new = self.rule.perturb_state(r_new)
        gain = torch.addcmul(ones, h, h, value=-1.0)
        if net.leaky:
            gain = gain * alpha
        q = torch.cat([r_new, ones], 1)
        z = matvec(net.W_out, q)
        e = error_signal(self.task.loss, z, y)
        ctx = StepContext(t, net, p, V, gain, r, r_new, x, y, z, e, plastic, lr=self.lr,
                          loss_kind=self.task.loss)
        out = self.rule.step(ctx)
        if hook is not None:
            hook(i, ctx, out)
        lr_out = self.lr["readout"]
        if "readout" in plastic and isinstance(lr_out, float | int):  # the single-run path
            if lr_out:
                net.W_out.addcmul_(e.unsqueeze(2), q.unsqueeze(1), value=-lr_out)
        elif "readout" in plastic and rate_active(lr_out):  # per-member rates (a sweep batch)
            apply_update(net.W_out, Rank1(e, q), lr_out)
        pops = self._pops
        for name, update in out.updates.items():
            lr = self.lr[name]
            if name not in plastic or not rate_active(lr) or name in out.applied:
                continue
            apply_update(pops[name], update, lr)
        return r_new, V, z, out.signal, out.diagnostics

    @torch.no_grad()
    def advance(self, k: int, *, record: str = "traces", record_updates: bool = False) -> Telemetry:
        """Learn online for k steps. record: "traces" (V, U, r, x, y, z) or "scalars".

        A non-finite loss stops the run after the step it happened in: status becomes
        "diverged at step N" and telemetry.diverged_at = N; later calls do nothing.
        """
        if record not in ("traces", "scalars"):
            raise ConfigError("record", "allowed: traces, scalars")
        if self.status.startswith("diverged") and self.halt_on_divergence:
            raise Diverged(self.status)
        if self._twin is not None:  # the background compile is ready: switch, between calls
            self._adopt_twin()
        net, rule, kind = self.net, self.rule, self.task.loss
        S, n = net.seeds, net.n
        xs, ys = self._data(k)
        zs = xs.new_empty(k, S, net.n_out)
        traces = record == "traces"
        if traces:
            Vs, Us, rs = (xs.new_zeros(k, S, n) for _ in range(3))
        diags = {name: xs.new_full((k, S), float("nan")) for name in rule.diagnostic_names}
        pops = self._pops = self.populations()  # fixed for the call: updated in place
        if self._learn_step_owner is not None:  # the twin's compiled step reads its _pops
            self._learn_step_owner._pops = pops
        before = {name: w.clone() for name, w in pops.items()}
        upd_rec: dict[str, Tensor] = {}
        norm_rec: dict[str, Tensor] = {}
        if record_updates:
            upd_rec = {name: xs.new_zeros(k, *w.shape) for name, w in pops.items()}
            norm_rec = {name: xs.new_zeros(k, S) for name in pops}
        ones = xs.new_ones(S, 1)
        shadow, passive = self.shadow, self.passive
        if shadow is not None:
            shadow.begin(k, xs)
        if passive is not None:
            passive.begin(k, xs)
        def observe(i: int, ctx: StepContext, out: RuleOutput) -> None:
            """Sees each step's context and rule output before the weights change."""
            if shadow is not None:  # the exact gradient reads W(t)
                shadow.step(i, ctx, out)
                if passive is not None and shadow.exact_block is not None:
                    passive.step(i, ctx, shadow.exact_block)
            if record_updates:
                upd_rec["readout"][i] = ctx.e.unsqueeze(2) * with_one(ctx.r).unsqueeze(1)
                for name, update in out.updates.items():
                    upd_rec[name][i] = update.dense()
                    norm_rec[name][i] = update.norm()

        hook = observe if shadow is not None or record_updates else None
        step = self._compiled_step if self._compiled_step is not None and hook is None else None
        graphs = self._graphs if hook is None else None
        phases: list[int] = []
        r = self.r
        fused = (fused_plan(self) if self.fused and hook is None and step is None
                 and graphs is None else None)
        if fused is not None:
            phases = [self.schedule.index_at(self.t + i) for i in range(k)]
            z_parts, diag_parts, trace_parts = [], [], []
            i = 0
            while i < k:  # one fused call per stretch of one phase
                j = i + 1
                while j < k and phases[j] == phases[i]:
                    j += 1
                self.r = r
                self.t, t_call = self.t + i, self.t
                try:
                    r, z_seg, d_seg, tr_seg = fused(
                        self, xs[i:j], ys[i:j], self.schedule.phases[phases[i]].plastic, traces)
                finally:
                    self.t = t_call
                z_parts.append(z_seg)
                diag_parts.append(d_seg)
                if tr_seg is not None:
                    trace_parts.append(tr_seg)
                i = j
            zs = torch.cat(z_parts)
            for name in diags:
                if name in diag_parts[0]:
                    diags[name] = torch.cat([d[name] for d in diag_parts])
            if traces:
                Vs, Us, rs = (torch.cat([tr[c] for tr in trace_parts]) for c in range(3))
        for i in range(0 if fused is not None else k):
            t = self.t + i
            phase_index = self.schedule.index_at(t)
            phases.append(phase_index)
            plastic = self.schedule.phases[phase_index].plastic
            if graphs is not None:
                r_new, V, z, signal, diagnostics = graphs.step(r, xs[i], ys[i], plastic)
            elif step is not None:  # t and i are constants there, so nothing recompiles
                r_new, V, z, signal, diagnostics = step(r, xs[i], ys[i], plastic, ones, 0, 0, None)
            else:
                r_new, V, z, signal, diagnostics = self._learn_step(r, xs[i], ys[i], plastic, ones,
                                                                    t, i, hook)
            rule.after_update(t)
            if passive is not None:
                passive.after_update(t)
            zs[i] = z
            if traces:
                Vs[i] = V
                rs[i] = r_new
                if signal is not None:
                    Us[i] = signal
            for name, value in diagnostics.items():
                diags[name][i] = value
            r = r_new
        estimates: dict[str, Tensor] = {}
        if record_updates:
            norm_rec["readout"] = torch.linalg.vector_norm(upd_rec["readout"].flatten(2), dim=2)
            estimates = upd_rec
            upd_rec = {}
            for name, G in estimates.items():
                gate = torch.tensor([name in self.schedule.phases[j].plastic for j in phases],
                                    dtype=G.dtype, device=G.device)
                lr = self.lr[name]
                scale = -(lr.view(1, -1) if isinstance(lr, torch.Tensor) else lr) * gate.view(-1, 1)
                upd_rec[name] = G * scale.view(*scale.shape, *[1] * (G.dim() - 2))
        self.r = r
        start, self.t = self.t, self.t + k
        losses = loss_value(kind, zs, ys)
        telemetry = Telemetry(
            start, losses, phases, diags,
            {name: w - before[name] for name, w in pops.items()},
            updates=upd_rec, update_norms=norm_rec, estimates=estimates,
        )
        if shadow is not None:
            telemetry.alignment, telemetry.norm_ratio = shadow.finish()
        if passive is not None:
            telemetry.compare = passive.alignment
        if traces:
            telemetry.V, telemetry.U, telemetry.r = Vs, Us, rs
            telemetry.x, telemetry.y, telemetry.z = xs, ys, zs
        bad = ~torch.isfinite(losses).all(1)
        if bool(bad.any()):
            step = start + int(bad.nonzero()[0, 0])
            seeds = [self.seeds[j] for j in (~torch.isfinite(losses).all(0)).nonzero()[:, 0]]
            telemetry.diverged_at = step
            self.status = (f"diverged at step {step} (seeds {', '.join(map(str, seeds))}): "
                           "a learning rate is too large for this network; lower lr or the "
                           "rule's own rates (dni's apical step grows with n)")
        else:
            blown = blown_up(pops)
            if blown:
                name, size = blown
                step = start + k - 1
                telemetry.diverged_at = step
                self.status = (f"diverged at step {step}: the {name} weights reached "
                               f"|w| = {size:.3g} (bound {WEIGHT_BOUND:g}); lower lr or the "
                               "rule's own rates (dni's apical step grows with n)")
            else:
                self.status = "running"
        return telemetry

    @torch.no_grad()
    def evaluate(self, steps: int | None = None) -> Tensor:
        """Mean held-out loss per seed (S,), learning frozen, on a fixed test stream.

        Starts from a copy of the current state r and leaves the run untouched. The whole
        input drive W_in x + b is one matrix product; only the recurrence loops.
        """
        steps = self.config.test_steps if steps is None else steps
        if steps <= 0:
            return torch.full((self.net.seeds,), float("nan"))
        x, y = self.task.stream(self.seeds, "test").next(steps)
        x = x.to(self.dtype).to(self.device)
        y = y.to(self.dtype).to(self.device)
        net = self.net
        drive = torch.einsum("tsi,sni->tsn", x, net.W_in) + net.b
        r = self.r.clone()
        rs = torch.empty(steps, *r.shape, dtype=self.dtype, device=self.device)
        W_rec = net.W_rec
        for t in range(steps):
            h = torch.tanh(matvec(W_rec, r).add_(drive[t]))
            r = net.leak_step(r, h)
            rs[t] = r
        z = torch.einsum("tsn,son->tso", rs, net.readout) + net.W_out[:, :, -1]
        return loss_value(self.task.loss, z, y).mean(0).cpu()

    # ---- checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-for-bit (CPU tensors)."""
        return {
            "config": self.config.to_dict(), "t": self.t, "status": self.status,
            "ensemble": list(self._seeds),
            # a batch whose members differ in alpha: the leak of each slot
            "alphas": (self.net.alpha.reshape(-1).tolist()
                       if isinstance(self.net.alpha, torch.Tensor) else None),
            "r": self.r.cpu().clone(), "W": self.net.W.cpu().clone(),
            "W_out": self.net.W_out.cpu().clone(), "lr": dict(self.lr),
            "rule_name": self.config.rule, "rule": _cpu(self.rule.state_dict()),
            "stream": self.stream.state_dict(),
            "shadow": None if self.shadow is None else {
                "spec": self.shadow.spec, "exact": _cpu(self.shadow.exact.state_dict())},
            "compare": {} if self.passive is None else {
                name: _cpu(rule_state) for name, rule_state in self.passive.state_dict().items()},
            "prefetch": (self._xb[self._i :].cpu().clone(), self._yb[self._i :].cpu().clone()),
        }

    @classmethod
    @torch.no_grad()
    def from_state(cls, state: dict[str, Any], config: RunConfig | None = None,
                   *, threads: int | None = None) -> Run:
        """Rebuild a run from ``state_dict()``; with ``config``, continue under new settings
        (another rule keeps the network, the input stream and the step count, and starts its
        own state afresh)."""
        run = cls(config or RunConfig(**state["config"]), threads=threads,
                  ensemble=state.get("ensemble") if config is None else None,
                  alphas=state.get("alphas") if config is None else None)
        if run.net.W.shape != state["W"].shape or run.net.W_out.shape != state["W_out"].shape:
            raise ConfigError("n", "a branch must keep the network size and the task")
        run.t = state["t"]
        run.r = state["r"].to(run.dtype).to(run.device)
        run.net.W.copy_(state["W"])
        run.net.W_out.copy_(state["W_out"])
        run.stream.load_state_dict(state["stream"])
        run._xb = state["prefetch"][0].to(run.dtype).to(run.device)
        run._yb = state["prefetch"][1].to(run.dtype).to(run.device)
        run._i = 0
        continuing = config is None or config == RunConfig(**state["config"]).validated()
        if state["rule_name"] == run.config.rule:
            run.rule.load_state_dict(state["rule"])
        shadow = state.get("shadow")
        if run.shadow is not None and shadow and shadow["spec"] == run.shadow.spec:
            run.shadow.exact.load_state_dict(shadow["exact"])  # alignment continues exactly
        if run.passive is not None:
            run.passive.load_state_dict(state.get("compare") or {})
        if continuing:  # keep rates changed mid-run; a branch takes its config's rates
            run.lr.update({k: v for k, v in state["lr"].items() if k in run.lr})
        status = str(state.get("status", ""))
        run.status = status if status.startswith("diverged") else (
            "ready" if run.t == 0 else "running")
        return run


def _cpu(state: dict[str, Any]) -> dict[str, Any]:
    """A rule's state dict with its tensors on the CPU (checkpoints are device-free)."""
    return {k: v.cpu() if isinstance(v, Tensor) else v for k, v in state.items()}
