"""A fused k-step loop for the DNI family (dni, dni-b): single runs without a start-up price.

At n = 32 with one seed a DNI-b step is a few dozen tiny tensor operations, and the generic
engine step (:meth:`simulator.engine.Run._learn_step`: a StepContext, Rank1 objects, one
Python-level dispatch per op, per-step telemetry writes) spends nearly all its time on
per-op overhead. This module writes the same equations as ONE function over k steps, with
the vectors kept as (S, 1, d) rows so that no view is taken inside the loop, the updates
as in-place ``baddbmm_`` and the telemetry stacked once at the end, and scripts it with
TorchScript (a few hundredths of a second, no inductor compile, no C++ toolchain), which
runs the loop without the Python interpreter between ops.

Same equations, same order (the authors' sequential order of :mod:`simulator.rules.dni`):
the J~ update, the apical target with the updated J~ and the apical update, U(t) from the
updated A and the basal update, the readout delta rule; the first step's apical rule with
a~(-1) = [r(-1); y(0); 1] and q(-1) = 0; the frozen copy refreshed after step t when
(t + 1) % refresh == 0. Equal to the generic step to rounding (float64: 1e-12 over
thousands of steps, tests/test_speed_fused.py, also when a run switches mid-way).

The engine uses it by default when it applies (:func:`applies`): a DNI-family rule in
sequential order, a scalar leak alpha, no per-step hook (alignment shadow, passive
comparison, recorded updates) and no compiled or CUDA-graph step. Anything else takes
the generic step. ``Run(fused=False)`` (or ``PLASTICITY_FUSED=0``) turns it off.
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from simulator.engine import Run

#: population order of the ``learn`` flags and the rates
POPULATIONS = ("basal", "readout", "apical", "jacobian")


def _dni_loop(r: Tensor, xs: Tensor, ys: Tensor, W: Tensor, W_out: Tensor, A: Tensor,
              A_frozen: Tensor, J: Optional[Tensor], B: Optional[Tensor],  # noqa: UP045
              a_prev: Optional[Tensor], q_prev: Optional[Tensor],  # noqa: UP045
              learn: list[bool], rates: list[float],
              rate_t: list[Optional[Tensor]],  # noqa: UP045
              alpha: float, tanh_label: bool, cross_entropy: bool, refresh: int, t0: int,
              traces: bool) -> list[Tensor]:
    """k DNI-family steps. Vectors are rows (S, 1, d); xs (k, S, 1, n_in), ys (k, S, 1, n_out).
    Returns [r, a_prev, q_prev, z (k,S,1,o), apical residual (k,S,1,n), J~ residual
    (k,S,1,n) or empty, V, U, r (k,S,1,n) each when traces]."""
    k = xs.shape[0]
    S = r.shape[0]
    n = r.shape[2]
    ones = torch.ones(S, 1, 1, dtype=r.dtype, device=r.device)
    WT = W.transpose(1, 2)
    W_recT = W[:, :, :n]  # J(t)^T g = (g gain) W_rec: a row times W_rec, no transpose
    W_outT = W_out.transpose(1, 2)
    readout = W_out[:, :, :n]
    AT = A.transpose(1, 2)
    A_frozenT = A_frozen.transpose(1, 2)
    zs: list[Tensor] = []
    apical_res: list[Tensor] = []
    jac_res: list[Tensor] = []
    Vs: list[Tensor] = []
    Us: list[Tensor] = []
    rs: list[Tensor] = []
    learn_basal, learn_out, learn_apical, learn_jac = learn[0], learn[1], learn[2], learn[3]
    for i in range(k):
        y = ys[i]
        p = torch.cat([r, xs[i], ones], 2)
        V = torch.bmm(p, WT)
        h = torch.tanh(V)
        gain = torch.addcmul(ones, h, h, value=-1.0)
        if alpha != 1.0:
            r_new = torch.lerp(r, h, alpha)
            gain = gain * alpha
        else:
            r_new = h
        q = torch.cat([r_new, ones], 2)
        z = torch.bmm(q, W_outT)
        e = torch.softmax(z, -1).sub_(y) if cross_entropy else z - y
        a = torch.cat([r_new, y, ones], 2)
        if a_prev is None:
            a_prev = torch.cat([r, y, ones], 2)
        if q_prev is None:
            q_prev = torch.zeros_like(r)
        if J is not None:  # (2) the J~ delta rule, applied before the apical target reads it
            j_residual = torch.bmm(r, J.transpose(1, 2)).sub_(r_new)
            jac_res.append(j_residual)
            if learn_jac:
                post = j_residual.transpose(1, 2)
                lr_j = rate_t[3]
                if lr_j is not None:
                    J.baddbmm_(post * lr_j, r, alpha=-1.0)
                else:
                    J.baddbmm_(post, r, alpha=-rates[3])
        g = torch.bmm(a, A_frozenT)  # (3) the apical delta rule
        if tanh_label:
            g = torch.tanh(g)
        if J is None:
            back = torch.bmm(g * gain, W_recT)
            if alpha != 1.0:
                back = back.add_(g, alpha=1.0 - alpha)
        else:
            back = torch.bmm(g, J)
        residual = torch.bmm(a_prev, AT) - (q_prev + back)
        apical_res.append(residual)
        if learn_apical:
            lr_a = rate_t[2]
            if lr_a is not None:
                A.baddbmm_(residual.transpose(1, 2) * lr_a, a_prev, alpha=-1.0)
            else:
                A.baddbmm_(residual.transpose(1, 2), a_prev, alpha=-rates[2])
        U = torch.bmm(a, AT)  # (4) U(t) from the updated A; q(t) with the readout before
        q_next = torch.bmm(e, readout) if B is None else torch.bmm(e, B.transpose(1, 2))
        if learn_out:
            lr_o = rate_t[1]
            if lr_o is not None:
                W_out.baddbmm_(e.transpose(1, 2) * lr_o, q, alpha=-1.0)
            else:
                W_out.baddbmm_(e.transpose(1, 2), q, alpha=-rates[1])
        if learn_basal:
            lr_b = rate_t[0]
            if lr_b is not None:
                W.baddbmm_((U * gain).transpose(1, 2) * lr_b, p, alpha=-1.0)
            else:
                W.baddbmm_((U * gain).transpose(1, 2), p, alpha=-rates[0])
        if (t0 + i + 1) % refresh == 0:
            A_frozen.copy_(A)
        zs.append(z)
        if traces:
            Vs.append(V)
            Us.append(U)
            rs.append(r_new)
        a_prev = a
        q_prev = q_next
        r = r_new
    assert a_prev is not None and q_prev is not None
    empty = torch.empty(0, dtype=r.dtype, device=r.device)
    out = [r, a_prev, q_prev, torch.stack(zs), torch.stack(apical_res),
           torch.stack(jac_res) if J is not None else empty]
    if traces:
        out += [torch.stack(Vs), torch.stack(Us), torch.stack(rs)]
    return out


def _balance(numerator: Tensor, denominator: Tensor, eps: float) -> Tensor:
    """simulator.rules.family.balance, op for op."""
    exact = (numerator > 0) & (denominator > 0)
    return torch.where(exact, numerator / denominator.clamp(min=eps),
                       (numerator + eps) / (denominator + eps)).sqrt_()


def _uoro_loop(r: Tensor, xs: Tensor, ys: Tensor, nus: Tensor, W: Tensor, W_out: Tensor,
               s_tilde: Tensor, theta: Tensor, learn: list[bool], rates: list[float],
               rate_t: list[Optional[Tensor]],  # noqa: UP045
               alpha: float, cross_entropy: bool, eps: float, traces: bool) -> list[Tensor]:
    """k UORO steps (simulator.rules.uoro) with the engine's forward pass, readout delta
    rule and basal update; rows (S, 1, d) as in _dni_loop, nus (k, S, 1, n) the signs.
    theta~ (S, n, m) is updated in place. Returns [r, s~, z (k,S,1,o), influence norm
    (k,S), then V, U (the credit), r (k,S,1,n) when traces]."""
    k = xs.shape[0]
    S = r.shape[0]
    n = r.shape[2]
    ones = torch.ones(S, 1, 1, dtype=r.dtype, device=r.device)
    WT = W.transpose(1, 2)
    W_recT = W[:, :, :n].transpose(1, 2)
    W_outT = W_out.transpose(1, 2)
    readout = W_out[:, :, :n]
    zs: list[Tensor] = []
    influence: list[Tensor] = []
    Vs: list[Tensor] = []
    Us: list[Tensor] = []
    rs: list[Tensor] = []
    s = s_tilde
    for i in range(k):
        y = ys[i]
        nu = nus[i]
        p = torch.cat([r, xs[i], ones], 2)
        V = torch.bmm(p, WT)
        h = torch.tanh(V)
        gain = torch.addcmul(ones, h, h, value=-1.0)
        if alpha != 1.0:
            r_new = torch.lerp(r, h, alpha)
            gain = gain * alpha
        else:
            r_new = h
        q = torch.cat([r_new, ones], 2)
        z = torch.bmm(q, W_outT)
        e = torch.softmax(z, -1).sub_(y) if cross_entropy else z - y
        Js = torch.bmm(s, W_recT).mul_(gain)  # J(t) s~
        if alpha != 1.0:
            Js = Js.add_(s, alpha=1.0 - alpha)
        nu_gain = nu * gain
        vnorm = torch.linalg.vector_norm(torch.cat([Js, nu_gain, nu], 1), dim=2)  # (S, 3)
        numerators = torch.stack([torch.linalg.vector_norm(theta.flatten(1), dim=1),
                                  vnorm[:, 1] * torch.linalg.vector_norm(p.flatten(1), dim=1)],
                                 1)
        rho = _balance(numerators, vnorm[:, 0::2], eps)  # (S, 2)
        rho0 = rho[:, 0:1].unsqueeze(2)
        rho1 = rho[:, 1:2].unsqueeze(2)
        s = Js.mul_(rho0).add_(nu * rho1)
        theta.div_(rho0)
        theta.baddbmm_((nu_gain / rho1).transpose(1, 2), p)
        credit = torch.bmm(e, readout)  # c = W_out^T e, the readout before its update
        scale = (credit * s).sum(2, keepdim=True)  # (S, 1, 1)
        influence.append(torch.linalg.vector_norm(s.flatten(1), dim=1)
                         * torch.linalg.vector_norm(theta.flatten(1), dim=1))
        if learn[1]:
            lr_o = rate_t[1]
            if lr_o is not None:
                W_out.baddbmm_(e.transpose(1, 2) * lr_o, q, alpha=-1.0)
            else:
                W_out.baddbmm_(e.transpose(1, 2), q, alpha=-rates[1])
        if learn[0]:
            lr_b = rate_t[0]
            grad = theta * scale
            if lr_b is not None:
                W.sub_(grad * lr_b)
            else:
                W.add_(grad, alpha=-rates[0])
        zs.append(z)
        if traces:
            Vs.append(V)
            Us.append(credit)
            rs.append(r_new)
        r = r_new
    out = [r, s, torch.stack(zs), torch.stack(influence)]
    if traces:
        out += [torch.stack(Vs), torch.stack(Us), torch.stack(rs)]
    return out


def _kernl_loop(r: Tensor, r_pert: Tensor, zeta: Tensor, xs: Tensor, ys: Tensor,
                zetas: Tensor, W: Tensor, W_out: Tensor, K: Tensor, e_trace: Tensor,
                Omega: Tensor, Gamma: Tensor, B: Optional[Tensor],  # noqa: UP045
                learn: list[bool], rates: list[float],
                rate_t: list[Optional[Tensor]],  # noqa: UP045
                alpha: float, sigma: float, cross_entropy: bool, traces: bool) -> list[Tensor]:
    """k KeRNL steps (simulator.rules.kernl, perturb=before, order=sequential) with the
    engine's forward pass, readout and basal updates; rows (S, 1, d); zetas (k, S, 1, n) the
    draws of the k steps, zeta the one to add before the first. K, e_trace in place; Omega
    and Gamma (S, 1, n) are returned. Returns [r, r~, zeta, Omega, Gamma, z, perturbation
    loss (k,S), kernel decay (k,S), then V, U (the credit), r when traces]."""
    k = xs.shape[0]
    S = r.shape[0]
    n = r.shape[2]
    ones = torch.ones(S, 1, 1, dtype=r.dtype, device=r.device)
    WT = W.transpose(1, 2)
    W_outT = W_out.transpose(1, 2)
    readout = W_out[:, :, :n]
    beta = K[:, :, :n]
    gamma = K[:, :, n:].transpose(1, 2)  # (S, 1, n)
    zs: list[Tensor] = []
    pert: list[Tensor] = []
    decay: list[Tensor] = []
    Vs: list[Tensor] = []
    Us: list[Tensor] = []
    rs: list[Tensor] = []
    for i in range(k):
        y = ys[i]
        x = xs[i]
        p = torch.cat([r, x, ones], 2)
        V = torch.bmm(p, WT)
        h = torch.tanh(V)
        gain = torch.addcmul(ones, h, h, value=-1.0)
        if alpha != 1.0:
            r_new = torch.lerp(r, h, alpha)
            gain = gain * alpha
        else:
            r_new = h
        q = torch.cat([r_new, ones], 2)
        z = torch.bmm(q, W_outT)
        e = torch.softmax(z, -1).sub_(y) if cross_entropy else z - y
        kappa = (1.0 - gamma).clamp_(min=0.0)  # (S, 1, n), gamma before this step's update
        s_in = r_pert + sigma * zeta  # the perturbed copy, its noise added before the step
        h_pert = torch.tanh(torch.bmm(torch.cat([s_in, x, ones], 2), WT))
        r_pert = torch.lerp(s_in, h_pert, alpha) if alpha != 1.0 else h_pert
        zeta = zetas[i]
        Gamma = Gamma.mul_(kappa).sub_(Omega)
        Omega = Omega.mul_(kappa).add_(zeta)
        eps = torch.bmm(Omega, beta.transpose(1, 2)).sub_((r_pert - r_new).div_(sigma))
        pert.append(eps.square().mean(2).squeeze(1))
        decay.append(kappa.mean(2).squeeze(1))
        if learn[3]:
            d_gamma = torch.bmm(eps, beta).mul_(Gamma)  # (S, 1, n)
            lr_k = rate_t[3]
            if lr_k is not None:
                beta.baddbmm_(eps.transpose(1, 2) * lr_k, Omega, alpha=-1.0)
                gamma.sub_(d_gamma * lr_k)
            else:
                beta.baddbmm_(eps.transpose(1, 2), Omega, alpha=-rates[3])
                gamma.add_(d_gamma, alpha=-rates[3])
        e_trace.mul_(kappa.transpose(1, 2)).baddbmm_(gain.transpose(1, 2), p)
        feedback = torch.bmm(e, readout) if B is None else torch.bmm(e, B.transpose(1, 2))
        credit = torch.bmm(feedback, beta)  # beta^T q with the updated beta
        if learn[1]:
            lr_o = rate_t[1]
            if lr_o is not None:
                W_out.baddbmm_(e.transpose(1, 2) * lr_o, q, alpha=-1.0)
            else:
                W_out.baddbmm_(e.transpose(1, 2), q, alpha=-rates[1])
        if learn[0]:
            grad = e_trace * credit.transpose(1, 2)
            lr_b = rate_t[0]
            if lr_b is not None:
                W.sub_(grad * lr_b)
            else:
                W.add_(grad, alpha=-rates[0])
        zs.append(z)
        if traces:
            Vs.append(V)
            Us.append(credit)
            rs.append(r_new)
        r = r_new
    out = [r, r_pert, zeta, Omega, Gamma, torch.stack(zs), torch.stack(pert), torch.stack(decay)]
    if traces:
        out += [torch.stack(Vs), torch.stack(Us), torch.stack(rs)]
    return out


def _script(fn: Any) -> Any:
    """``fn`` scripted by TorchScript (deprecated upstream but present); the plain Python
    function where scripting is unavailable (same numbers, slower)."""
    if os.environ.get("PLASTICITY_FUSED_SCRIPT", "1") == "0":
        return fn
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.jit.script(fn)
    except Exception:
        return fn


_LOOP: Any = None
_UORO_LOOP: Any = None
_KERNL_LOOP: Any = None


def loop() -> Any:
    """The DNI-family loop, scripted on first use (a few hundredths of a second)."""
    global _LOOP
    if _LOOP is None:
        _LOOP = _script(_dni_loop)
    return _LOOP


def uoro_loop() -> Any:
    global _UORO_LOOP
    if _UORO_LOOP is None:
        _UORO_LOOP = _script(_uoro_loop)
    return _UORO_LOOP


def kernl_loop() -> Any:
    global _KERNL_LOOP
    if _KERNL_LOOP is None:
        _KERNL_LOOP = _script(_kernl_loop)
    return _KERNL_LOOP


def applies(run: Run) -> bool:
    """Whether ``run``'s step can take a fused loop (see the module docstring)."""
    return plan(run) is not None


def plan(run: Run) -> Any:
    """The fused advance for ``run`` (advance_fused or advance_uoro), or None."""
    from simulator.rules.dni import DNI
    from simulator.rules.kernl import KeRNL
    from simulator.rules.uoro import UORO

    rule = run.rule
    if not isinstance(run.net.alpha, float | int) or rule.perturbs_state:
        return None

    def own(cls: type) -> bool:  # the class's step, not a subclass's or a wrapped one (a tap)
        return (isinstance(rule, cls) and getattr(rule.step, "__func__", None) is cls.step
                and getattr(rule.after_update, "__func__", None) is cls.after_update)

    if own(DNI) and rule.args["order"] == "sequential":
        return advance_fused
    if own(UORO):
        return advance_uoro
    if own(KeRNL) and rule.args["perturb"] == "before" and rule.args["order"] == "sequential":
        return advance_kernl
    return None


def _rates(run: Run, plastic: frozenset[str]) -> tuple[list[bool], list[float],
                                                      list[Tensor | None]]:
    """Per population of POPULATIONS: whether it learns this stretch, its scalar rate (or
    0.0) and its per-slot rate tensor (S, 1, 1) (or None)."""
    learn, rates, rate_t = [], [], []
    for name in POPULATIONS:
        rate = run.lr.get(name, 0.0)
        if isinstance(rate, Tensor):
            active = bool((rate != 0).any())
            rates.append(0.0)
            rate_t.append(rate.view(-1, 1, 1))
        else:
            active = bool(rate)
            rates.append(float(rate))
            rate_t.append(None)
        learn.append(name in plastic and active)
    return learn, rates, rate_t


def advance_kernl(run: Run, xs: Tensor, ys: Tensor, plastic: frozenset[str], traces: bool,
                  ) -> tuple[Tensor, Tensor, dict[str, Tensor], tuple[Tensor, Tensor, Tensor]
                             | None]:
    """advance_fused for KeRNL (perturb=before, order=sequential): the noise drawn first,
    in the rule's order (the first draw before the first step)."""
    rule, net = run.rule, run.net
    learn, rates, rate_t = _rates(run, plastic)
    if rule.zeta is None:
        rule.zeta = rule.noise.next()
    r_pert = run.r if rule.r_pert is None else rule.r_pert
    zetas = torch.stack([rule.noise.next() for _ in range(xs.shape[0])]).unsqueeze(2)
    out = kernl_loop()(run.r.unsqueeze(1), r_pert.unsqueeze(1), rule.zeta.unsqueeze(1),
                       xs.unsqueeze(2), ys.unsqueeze(2), zetas, net.W, net.W_out, rule.K,
                       rule.e, rule.Omega.unsqueeze(1), rule.Gamma.unsqueeze(1), rule.B, learn,
                       rates, rate_t, float(net.alpha), float(rule.args["sigma"]),
                       run.task.loss == "cross_entropy", traces)
    r, r_pert, zeta, Omega, Gamma, zs, pert, decay = out[:8]
    rule.r_pert, rule.zeta = r_pert.squeeze(1), zeta.squeeze(1)
    rule.Omega, rule.Gamma = Omega.squeeze(1), Gamma.squeeze(1)
    trace = (out[8].squeeze(2), out[9].squeeze(2), out[10].squeeze(2)) if traces else None
    return (r.squeeze(1), zs.squeeze(2), {"perturbation_loss": pert, "kernel_decay": decay},
            trace)


def advance_uoro(run: Run, xs: Tensor, ys: Tensor, plastic: frozenset[str], traces: bool,
                 ) -> tuple[Tensor, Tensor, dict[str, Tensor], tuple[Tensor, Tensor, Tensor]
                            | None]:
    """advance_fused for UORO: the signs for the k steps drawn first, in order."""
    from simulator.rules.family import EPS

    rule, net = run.rule, run.net
    learn, rates, rate_t = _rates(run, plastic)
    k = xs.shape[0]
    nus = torch.stack([rule.nu.next() for _ in range(k)]).unsqueeze(2)
    out = uoro_loop()(run.r.unsqueeze(1), xs.unsqueeze(2), ys.unsqueeze(2), nus, net.W,
                      net.W_out, rule.s_tilde.unsqueeze(1), rule.theta_tilde, learn, rates,
                      rate_t, float(net.alpha), run.task.loss == "cross_entropy", EPS, traces)
    r, s_last, zs, influence = out[:4]
    rule.s_tilde = s_last.squeeze(1)
    trace = (out[4].squeeze(2), out[5].squeeze(2), out[6].squeeze(2)) if traces else None
    return r.squeeze(1), zs.squeeze(2), {"influence_norm": influence}, trace


def advance_fused(run: Run, xs: Tensor, ys: Tensor, plastic: frozenset[str], traces: bool,
                  ) -> tuple[Tensor, Tensor, dict[str, Tensor], tuple[Tensor, Tensor, Tensor]
                             | None]:
    """Steps run.t .. run.t + k - 1 of one phase (``plastic``) through the fused loop, in
    place on run's tensors. Returns r(t+k-1), z (k, S, n_out), diagnostics (k, S) and the
    traces (V, U, r) or None. The caller advances run.t and run.r."""
    rule, net = run.rule, run.net
    learn, rates, rate_t = _rates(run, plastic)
    a_prev = None if rule.a_prev is None else rule.a_prev.unsqueeze(1)
    q_prev = None if rule.q_prev is None else rule.q_prev.unsqueeze(1)
    out = loop()(run.r.unsqueeze(1), xs.unsqueeze(2), ys.unsqueeze(2), net.W, net.W_out,
                 rule.A, rule.A_frozen, rule.J, rule.B, a_prev, q_prev, learn, rates, rate_t,
                 float(net.alpha), rule.tanh_label, run.task.loss == "cross_entropy",
                 int(rule.args["refresh"]), run.t, traces)
    r, a_last, q_last, zs, apical, jac = out[:6]
    rule.a_prev, rule.q_prev = a_last.squeeze(1), q_last.squeeze(1)
    diags = {"apical_loss": apical.squeeze(2).square().mean(2)}
    if rule.J is not None:
        diags["jacobian_loss"] = jac.squeeze(2).square().mean(2)
    trace = (out[6].squeeze(2), out[7].squeeze(2), out[8].squeeze(2)) if traces else None
    return r.squeeze(1), zs.squeeze(2), diags, trace
