"""The one place that evaluates vector fields and invariants and computes ``dH/dx``.

Everything that needs the gradients of an invariant set (the tangent projection, the
level-set Newton projection, the dissipative field) goes through :func:`invariant_jacobian`,
so that grad-mode handling, shape checks and error messages are written once.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch

__all__ = [
    "call_field",
    "check_callable",
    "check_state",
    "difference_jacobian",
    "evaluate_invariants",
    "field_arity",
    "format_indices",
    "invariant_jacobian",
    "is_closed_form",
]


def check_callable(obj: object, name: str) -> None:
    """Raise a ``TypeError`` naming ``name`` unless ``obj`` is callable."""
    if not callable(obj):
        msg = f"`{name}` must be callable, got an object of type {type(obj).__name__}"
        raise TypeError(msg)


def check_state(x: object, name: str = "x") -> torch.Tensor:
    """Raise unless ``x`` is a tensor with at least one (the state) dimension."""
    if not isinstance(x, torch.Tensor):
        msg = f"`{name}` must be a torch.Tensor, got {type(x).__name__}"
        raise TypeError(msg)
    if x.dim() == 0:
        msg = f"`{name}` must have at least one dimension (the state), got a scalar"
        raise ValueError(msg)
    if not x.is_floating_point():
        msg = (f"`{name}` must be a floating-point tensor, got dtype {x.dtype}; convert it, "
               f"e.g. `{name}.to(torch.get_default_dtype())`, or to the model's dtype")
        raise TypeError(msg)
    return x


def field_arity(f: Callable) -> int:
    """Return 2 if ``f`` is called as ``f(t, x)`` (torchdiffeq's convention), 1 for ``f(x)``.

    Positional parameters without defaults are counted; a callable whose signature cannot be
    read (some builtins) is assumed to follow torchdiffeq's ``f(t, x)``.
    """
    target = f.forward if isinstance(f, torch.nn.Module) else f
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return 2
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return 2
    required = [p for p in params if p.kind in kinds and p.default is inspect.Parameter.empty]
    return 1 if len(required) == 1 else 2


def call_field(f: Callable, arity: int, t: torch.Tensor | float, x: torch.Tensor,
               name: str = "f") -> torch.Tensor:
    """Evaluate a vector field with either signature and check it returns ``x``'s shape."""
    out = f(x) if arity == 1 else f(t, x)
    if not isinstance(out, torch.Tensor):
        msg = f"`{name}` must return a torch.Tensor, got {type(out).__name__}"
        raise TypeError(msg)
    if out.shape != x.shape:
        msg = (f"`{name}(x)` must have the same shape as `x`: expected {tuple(x.shape)}, "
               f"got {tuple(out.shape)}")
        raise ValueError(msg)
    return out


def evaluate_invariants(H: Callable, x: torch.Tensor, name: str = "H") -> torch.Tensor:
    """Evaluate ``H(x)`` and return it with shape ``(..., m)``.

    A function returning ``(...,)`` (one value per state) is read as ``m = 1``.

    Raises:
        TypeError: ``H`` does not return a tensor, or returns an integer or boolean one.
        ValueError: the batch shape of ``H(x)`` differs from that of ``x``.
    """
    h = H(x)
    if not isinstance(h, torch.Tensor):
        msg = f"`{name}` must return a torch.Tensor, got {type(h).__name__}"
        raise TypeError(msg)
    if not h.is_floating_point():
        msg = (f"`{name}` must return floating-point values, got a tensor of dtype {h.dtype}: an "
               f"integer-valued `{name}` has no derivative in `x`, so nothing can be projected "
               "along it; compute it with differentiable torch operations on `x`, without "
               "rounding or casting to an integer type")
        raise TypeError(msg)
    batch = x.shape[:-1]
    if h.shape == batch:
        h = h.unsqueeze(-1)
    if h.dim() != x.dim() or h.shape[:-1] != batch:
        msg = (f"`{name}(x)` must have shape (..., m) or (...,) with the batch shape of `x`, "
               f"{tuple(batch)}; got {tuple(h.shape)} for `x` of shape {tuple(x.shape)}")
        raise ValueError(msg)
    return h


def is_closed_form(H: Callable) -> bool:
    """Whether ``H`` counts as a closed-form invariant: any callable but an ``nn.Module``.

    The Jacobian strategies choose by it (:func:`stacked_rows`, and the Newton projection's
    ``jacobian="auto"``): a closed-form ``H`` costs mostly fixed overhead per operation, so
    more arithmetic in fewer passes pays; a network's matrix products grow with the batch.
    """
    return not isinstance(H, torch.nn.Module)


def stacked_rows(H: Callable, m: int | None) -> int | None:
    """The ``m`` to hand :func:`invariant_jacobian`: ``m`` for closed-form ``H``, else ``None``.

    Stacked copies trade autograd overhead for arithmetic: ``m`` forward passes and one
    backward pass over ``m`` times the batch, against one forward and ``m`` backward passes
    row by row. That pays where each operation of ``H`` is cheap and its autograd bookkeeping
    is not, as for closed-form invariants (an arbitrary callable), and costs where ``H`` is a
    network (an ``nn.Module``), whose matrix products grow with the batch:
    ``python benchmarks/jacobian_cost.py`` prints both.
    """
    if m is None or m < 2 or not is_closed_form(H):
        return None
    return m


def invariant_jacobian(H: Callable, x: torch.Tensor, *, name: str = "H",
                       create_graph: bool | None = None, m: int | None = None,
                       audit: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Values and Jacobian of an invariant set, batched over leading dimensions.

    ``H`` is assumed to act on each state independently (as every network on batched input
    does), so row ``i`` of the Jacobian for all samples at once is the gradient of
    ``H_i(x).sum()``: one backward pass per invariant, no loop over the batch. When the
    caller passes ``m > 1``, ``H`` is instead evaluated once on ``m`` stacked copies of ``x``
    and copy ``i`` differentiated for row ``i``: a single backward pass over ``m`` times the
    batch, cheaper for closed-form invariants and dearer for networks (:func:`stacked_rows`
    chooses).

    The Jacobian is computed under :func:`torch.enable_grad` even when the caller is in
    ``torch.no_grad()`` mode (as ``odeint`` is during evaluation). The graph is kept
    (``create_graph=True``) only when the caller has gradients enabled, so that parameters of
    ``H`` -- and ``x`` itself, when it requires grad -- receive gradients through ``J``.

    A zero Jacobian must mean a critical point of ``H``, never an ``H`` that autograd cannot
    see through: an ``H`` whose output is not connected to ``x`` (``.detach()``, NumPy,
    ``.item()``) is an error, found for free on every call. With ``audit=True`` (a field's
    first call), rows that are exactly zero are also checked for an ``H`` that is piecewise
    constant (``torch.round``, ``floor``, ``sign``, which autograd differentiates as zero):
    a backward pass of NaN through the row leaves the gradient NaN wherever ``x`` enters
    through a differentiable operation, and zero where it does not.

    Args:
        H: the invariant set, ``H(x) -> (..., m)`` or ``(...,)``.
        x: states.
        name: the argument name used in error messages.
        create_graph: override whether to keep the graph; default: the caller's grad mode.
        m: the number of invariants, if known (enables the one-pass path for ``m > 1``).
        audit: also check that zero rows of ``J`` are critical points (costs a backward pass
            where a row is exactly zero; meant for a first call).

    Returns:
        ``(h, J)``: ``h`` of shape ``(..., m)`` and ``J = dH/dx`` of shape ``(..., m, n)``.

    Raises:
        ValueError: ``H(x)`` is not connected to ``x`` by autograd; with ``audit=True``, ``J``
            is zero at a state because ``H`` does not depend on ``x`` there through
            differentiable operations.
        TypeError: ``H`` does not return a floating-point tensor.

    Shapes:
        x: ``(..., n)``; h: ``(..., m)``; J: ``(..., m, n)``.
    """
    keep = torch.is_grad_enabled() if create_graph is None else create_graph
    one_pass = m is not None and m > 1
    with torch.enable_grad():
        base = x if (keep and x.requires_grad) else x.detach()
        xg = base.expand(m, *x.shape) if one_pass else base  # m copies: (m, ..., n)
        if not xg.requires_grad:
            xg = (xg.clone() if one_pass else xg).requires_grad_(True)
        h_all = evaluate_invariants(H, xg, name)
        if one_pass and h_all.shape[-1] != m:
            msg = f"`{name}` returned {h_all.shape[-1]} invariants where {m} were expected"
            raise ValueError(msg)
        h = h_all[0] if one_pass else h_all
        if not h_all.requires_grad:
            _raise_disconnected(name, "its output does not require grad")
        if one_pass:  # copy i's invariant i, all rows in one backward pass
            rows = torch.diagonal(h_all, dim1=0, dim2=-1)
            (g,) = torch.autograd.grad(rows.sum(), xg, retain_graph=keep or audit,
                                       create_graph=keep, allow_unused=True)
            if g is None:
                _raise_disconnected(name, "its output depends on parameters, not on `x`")
            jac = g.movedim(0, -2)
        else:
            n_inv = h.shape[-1]
            grads = []
            for i in range(n_inv):
                (g,) = torch.autograd.grad(h[..., i], xg, grad_outputs=torch.ones_like(h[..., i]),
                                           retain_graph=keep or audit or i < n_inv - 1,
                                           create_graph=keep, allow_unused=True)
                if g is None:
                    _raise_disconnected(name, "its output depends on parameters, not on `x`")
                grads.append(g)
            jac = torch.stack(grads, dim=-2)
        if audit:
            _audit_zero_rows(h_all, xg, jac, one_pass, name)
    return (h if keep else h.detach()), jac


def _raise_disconnected(name: str, why: str) -> None:
    msg = (f"`{name}(x)` is not connected to `x` by autograd ({why}), so d{name}/dx cannot be "
           "computed and the projection would silently do nothing. Build "
           f"`{name}` from differentiable torch operations on `x`: no `.detach()`, `.item()`, "
           "`.numpy()` or NumPy functions, and no `torch.tensor(...)` of its values")
    raise ValueError(msg)


# Autograd nodes of functions whose derivative torch defines as zero wherever it exists.
_ZERO_DERIVATIVE_NODES = ("RoundBackward", "FloorBackward", "CeilBackward", "TruncBackward",
                          "SignBackward", "SgnBackward")


def _audit_zero_rows(h_all: torch.Tensor, xg: torch.Tensor, jac: torch.Tensor,
                     one_pass: bool, name: str) -> None:
    """Raise where a zero row of ``J`` is not a critical point but a blind spot of autograd."""
    zero = (jac == 0).all(-1)  # (..., m)
    if not bool(zero.any()):
        return
    dead = torch.zeros_like(zero)
    for i in range(zero.shape[-1]):
        if not bool(zero[..., i].any()):
            continue
        out = h_all[i, ..., i] if one_pass else h_all[..., i]
        (probe,) = torch.autograd.grad(out, xg, grad_outputs=torch.full_like(out, math.nan),
                                       retain_graph=True, allow_unused=True)
        probe = probe[i] if one_pass else probe
        dead[..., i] = zero[..., i] & ~torch.isnan(probe).any(-1)
    if not bool(dead.any()):
        return
    ops = _zero_derivative_ops(h_all.grad_fn)
    cause = (f"it goes through {', '.join(f'torch.{op}' for op in ops)}, whose derivative "
             "autograd takes as zero" if ops else
             "part of it is detached from `x`, constant, or not differentiable there")
    states = dead.any(-1)
    msg = (f"d{name}/dx is zero at {int(states.sum())} of {states.numel()} state(s) (indices "
           f"{format_indices(states)}) without a critical point of `{name}`: "
           f"{cause}. The projection would leave the field unchanged there. Use a "
           f"differentiable `{name}` (no rounding, no detaching)")
    raise ValueError(msg)


def _zero_derivative_ops(fn: object) -> list[str]:
    """Names of the zero-derivative functions (``round``, ...) in an autograd graph."""
    seen, stack, found = set(), [fn], set()
    while stack and len(seen) < 100_000:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        kind = type(node).__name__
        if kind.startswith(_ZERO_DERIVATIVE_NODES):
            found.add(kind[:kind.index("Backward")].lower())
        stack.extend(nxt for nxt, _ in getattr(node, "next_functions", ()))
    return sorted(found)


def format_indices(mask: torch.Tensor, limit: int = 5) -> str:
    """The batch indices where ``mask`` is true, as text: ``[3, 7]``, ``[(0, 1)]``, ``+ 4 more``.

    Shapes:
        mask: the batch shape ``(...)``; a 0-d mask (one unbatched state) gives ``"()"``.
    """
    if mask.dim() == 0:
        return "()"
    idx = torch.nonzero(mask.detach().cpu())
    shown = [int(i[0]) if mask.dim() == 1 else tuple(int(v) for v in i) for i in idx[:limit]]
    more = f" + {idx.shape[0] - limit} more" if idx.shape[0] > limit else ""
    return f"{shown}{more}"


def difference_jacobian(H: Callable, x: torch.Tensor, *,
                        name: str = "H") -> tuple[torch.Tensor, torch.Tensor]:
    """Values and forward-difference Jacobian of an invariant set, in one call of ``H``.

    ``H`` is evaluated once, on ``x`` and its ``n`` shifted copies stacked as ``(..., n + 1,
    n)``; no graph is built. The steps follow SciPy's ``approx_derivative`` for two-point
    differences, ``sqrt(eps) * max(1, |x_j|)``, and each difference is divided by the step
    as represented, ``(x_j + h_j) - x_j``, so that rounding the shifted state adds no error of
    its own. The relative error is then about ``sqrt(eps)`` times the curvature of ``H`` over
    the scale of its gradient (below 1e-6 in float64 on Kepler's E and L, whose ``1/r``
    reaches 10: ``python benchmarks/jacobian_cost.py``). That is what a simplified Newton
    iteration needs (it converges with any Jacobian close to the true one; its residual is
    always measured on ``H`` itself), at the price of one evaluation of ``H`` on ``n + 1``
    times the batch instead of a forward and a backward pass.

    Args:
        H: the invariant set, acting on each state separately.
        x: states.
        name: the argument name used in error messages.

    Returns:
        ``(h, J)``: ``h = H(x)`` of shape ``(..., m)`` and ``J`` of shape ``(..., m, n)``,
        both without a graph.

    Shapes:
        x: ``(..., n)``; h: ``(..., m)``; J: ``(..., m, n)``.
    """
    n = x.shape[-1]
    with torch.no_grad():
        base = x.detach()
        step = torch.finfo(x.dtype).eps ** 0.5 * base.abs().clamp_min(1.0)
        step = (base + step) - base  # the step as represented
        eye = torch.eye(n, dtype=x.dtype, device=x.device)
        stacked = torch.cat([base.unsqueeze(-2), base.unsqueeze(-2) + eye * step.unsqueeze(-2)],
                            dim=-2)
        values = evaluate_invariants(H, stacked, name)  # (..., n + 1, m)
        h = values[..., 0, :]
        jac = (values[..., 1:, :] - h.unsqueeze(-2)) / step.unsqueeze(-1)  # (..., n, m)
    return h, jac.transpose(-1, -2)
