"""Read learned invariants out: a sparse symbolic formula, and how many laws the data holds.

A learned invariant ``H_theta`` is a network; :func:`symbolic_readout` turns it into a short
polynomial by sparse regression on a library of monomials (pysindy's ``PolynomialLibrary`` and
sequentially thresholded least squares, ``STLSQ``), up to the affine freedom every learned
invariant has. :func:`estimate_num_invariants` answers the question the ConCerNet paper leaves
open -- how many independent conserved quantities are there? -- from the trajectories alone.

Import these from here: ``from concernet_ode.discovery import symbolic_readout``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import sympy
import torch
from torch import nn

from ._jacobian import invariant_jacobian
from .data import TrajectoryData
from .models import InvariantNet
from .training import fit_invariants

__all__ = ["InvariantCount", "SymbolicReadout", "estimate_num_invariants", "symbolic_readout"]


@dataclass(frozen=True)
class SymbolicReadout:
    """A sparse polynomial read out of an invariant, and how well it fits.

    Attributes:
        expression: the polynomial, with no constant term and scaled so that its largest
            coefficient is ``+1`` (an invariant is defined only up to ``a * H + b``).
        r2: coefficient of determination of the sparse fit (before rescaling; 1 is exact).
        coefficients: the monomials kept and their coefficients in ``expression``.
    """

    expression: sympy.Expr
    r2: float
    coefficients: dict[str, float]

    def __str__(self) -> str:
        return f"{self.expression}  (R^2 = {self.r2:.6f})"


def _as_numpy(value: object, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double().numpy()
    if isinstance(value, np.ndarray):
        return value.astype(np.float64)
    msg = f"`{name}` must be a torch.Tensor or a numpy array, got {type(value).__name__}"
    raise TypeError(msg)


def _values(fn: object, x: object) -> np.ndarray:
    """``fn(x)`` (or ``fn`` itself when it already holds values) as a float64 vector."""
    if callable(fn) and not isinstance(fn, (torch.Tensor, np.ndarray)):
        xt = x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
        with torch.no_grad():
            out = fn(xt)
        y = _as_numpy(out, "fn(x)")
    else:
        y = _as_numpy(fn, "fn")
    n = len(x)
    if y.shape not in ((n,), (n, 1)):
        msg = (f"`fn` must give one value per state, shape ({n},) or ({n}, 1); got "
               f"{y.shape}. For one of several invariants pass e.g. `lambda x: H(x)[..., k]`")
        raise ValueError(msg)
    return y.reshape(n)


def _check_readout_args(x: np.ndarray, names: Sequence[str], max_degree: object,
                        threshold: object) -> None:
    if x.ndim != 2:
        msg = f"`x` must have shape (N, n), got {x.shape}"
        raise ValueError(msg)
    if isinstance(names, str) or len(names) != x.shape[1]:
        msg = f"`names` must be a sequence of {x.shape[1]} names (one per state), got {names!r}"
        raise ValueError(msg)
    if isinstance(max_degree, bool) or not isinstance(max_degree, int) or max_degree < 1:
        msg = f"`max_degree` must be an int >= 1, got {max_degree!r}"
        raise ValueError(msg)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not (
            0 <= threshold < 1):
        msg = f"`threshold` must be a number in [0, 1), got {threshold!r}"
        raise ValueError(msg)
    if not np.isfinite(x).all():
        msg = "`x` contains NaN or infinite values"
        raise ValueError(msg)


def _monomial(powers: Sequence[int], symbols: Sequence[sympy.Symbol]) -> sympy.Expr:
    return sympy.Mul(*(s**int(k) for s, k in zip(symbols, powers, strict=True) if k))


def symbolic_readout(fn: Callable | torch.Tensor | np.ndarray, x: torch.Tensor | np.ndarray,
                     *, names: Sequence[str], max_degree: int = 3, threshold: float = 0.05,
                     alpha: float = 1e-6, digits: int = 4) -> SymbolicReadout:
    """Fit a sparse polynomial to an invariant, up to scale and offset.

    The values ``y = fn(x)`` are regressed on every monomial of the states of degree 1 to
    ``max_degree`` (pysindy's ``PolynomialLibrary``) by sequentially thresholded least squares
    (pysindy's ``STLSQ``). Both ``y`` and the library columns are first standardised (zero
    mean, unit variance), which does three things: the constant term drops out, so the fit is
    blind to the offset of ``H``; the coefficients are in units of "standard deviations of
    ``y`` per standard deviation of a monomial", so ``threshold`` means the same for any scale
    of ``H`` or of the states; and the scale of ``H`` drops out. The coefficients are mapped
    back to the raw monomials and rescaled so the largest one in magnitude is ``+1``.

    Args:
        fn: the invariant -- a callable (e.g. an ``InvariantNet`` with one output) applied to
            ``x`` as a tensor under ``torch.no_grad()``, or its values at ``x``.
        x: states at which ``fn`` is read, spread over the region of interest (e.g. all points
            of some trajectories).
        names: one symbol name per state coordinate, e.g. ``("q", "p")``.
        max_degree: highest total degree of the monomials.
        threshold: STLSQ's cutoff on standardised coefficients; a monomial explaining less
            than this fraction of a standard deviation of ``y`` is dropped.
        alpha: STLSQ's ridge penalty, small: it only tames nearly collinear monomials.
        digits: significant digits kept in the coefficients of ``expression``.

    Returns:
        A :class:`SymbolicReadout` with the expression, the ``R^2`` of the sparse fit and the
        coefficients by monomial name.

    Raises:
        TypeError: ``x`` or the values are neither tensors nor numpy arrays.
        ValueError: bad shapes, ``names``, ``max_degree`` or ``threshold``; ``fn(x)`` is
            constant; or no monomial survives the threshold.

    Shapes:
        x: ``(N, n)``; ``fn(x)``: ``(N,)`` or ``(N, 1)``.

    Example:
        >>> import torch
        >>> x = torch.randn(500, 2, dtype=torch.float64)
        >>> readout = symbolic_readout(lambda x: 3 * (x**2).sum(-1) - 1, x, names=("q", "p"))
        >>> print(readout.expression)
        p**2 + q**2
    """
    xs = _as_numpy(x, "x")
    _check_readout_args(xs, names, max_degree, threshold)
    y = _values(fn, x)
    y_std = y.std()
    if not np.isfinite(y).all() or y_std <= np.finfo(np.float64).eps * max(1.0, abs(y).max()):
        msg = "`fn(x)` is constant or not finite on `x`: there is nothing to read out"
        raise ValueError(msg)
    import pysindy  # deferred: importing pysindy takes about a second

    library = pysindy.PolynomialLibrary(degree=max_degree, include_bias=False).fit(xs)
    theta = np.asarray(library.transform(xs), dtype=np.float64)
    col_mean, col_std = theta.mean(0), theta.std(0)
    col_std[col_std == 0] = 1.0  # a constant monomial (a constant state) cannot be selected
    ys = (y - y.mean()) / y_std
    zs = (theta - col_mean) / col_std
    optimizer = pysindy.STLSQ(threshold=threshold, alpha=alpha, unbias=True)
    with warnings.catch_warnings():
        # STLSQ warns when the threshold removes every term; that case raises below instead.
        warnings.simplefilter("ignore", UserWarning)
        optimizer.fit(zs, ys.reshape(-1, 1))
    coef_std = np.asarray(optimizer.coef_).reshape(-1)
    if not np.any(coef_std):
        msg = (f"no monomial of degree <= {max_degree} survives `threshold` = {threshold}; "
               "lower it or raise `max_degree`")
        raise ValueError(msg)
    r2 = float(1.0 - np.sum((ys - zs @ coef_std) ** 2) / np.sum(ys**2))
    raw = coef_std / col_std
    raw = raw / raw[np.argmax(np.abs(raw))]
    symbols = sympy.symbols(list(names))
    coefficients: dict[str, float] = {}
    terms = []
    for powers, c in zip(library.powers_, raw, strict=True):
        if c == 0:
            continue
        mono = _monomial(powers, symbols)
        coefficients[str(mono)] = float(c)
        rounded = float(f"{c:.{digits}g}")
        value = sympy.Integer(int(rounded)) if rounded == int(rounded) else sympy.Float(rounded,
                                                                                         digits)
        terms.append(value * mono)
    return SymbolicReadout(sympy.Add(*terms), r2, coefficients)


@dataclass(frozen=True)
class InvariantCount:
    """The outcome of :func:`estimate_num_invariants`.

    Attributes:
        count: the estimated number of independent conserved quantities.
        singular_ratios: ``sigma_k / sigma_1`` of the Jacobian of the conserved feature
            combinations, median over the data points (the first is 1; empty when no
            combination is conserved). Independent invariants give ratios of order one,
            functionally redundant ones ratios near zero.
        flow_fractions: for each of the ``max_m`` feature combinations (ascending), the
            fraction of its squared gradient along the direction of motion: near 0 for a
            conserved quantity, about ``1 / n`` for an arbitrary function.
        model: the trained network, acting on standardised states ``(x - shift) / scale``.
        shift, scale: the standardisation of the states used by ``model``.
        history: the training history of :func:`~concernet_ode.fit_invariants`.
    """

    count: int
    singular_ratios: torch.Tensor
    flow_fractions: torch.Tensor
    model: InvariantNet
    shift: torch.Tensor
    scale: torch.Tensor
    history: dict[str, list[float]]


def _check_count_args(data: object, max_m: object, rtol: object,
                      rtol_name: str = "rtol") -> tuple[TrajectoryData, int]:
    if not isinstance(data, TrajectoryData):
        msg = f"`data` must be a TrajectoryData, got {type(data).__name__}"
        raise TypeError(msg)
    n = data.state_dim
    max_m = n if max_m is None else max_m
    if isinstance(max_m, bool) or not isinstance(max_m, int) or not 1 <= max_m <= n:
        msg = f"`max_m` must be an int in [1, {n}] (the state dimension), got {max_m!r}"
        raise ValueError(msg)
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not 0 < rtol < 1:
        msg = f"`{rtol_name}` must be a number in (0, 1), got {rtol!r}"
        raise ValueError(msg)
    return data, max_m


def _conserved_rank(model: nn.Module, z: TrajectoryData,
                    flow_tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Flow fractions of the feature combinations, and the rank ratios of the conserved ones.

    With ``J`` the Jacobian of the features (rows in units of each feature's spread) and
    ``v`` the velocity (the data's ``dxdt``), a combination ``w^T h`` of the features changes
    along the flow at the rate ``w^T J v``. The generalised eigenvalues of
    ``(E[J v v^T J^T], E[|v|^2 J J^T])`` are, for each combination, the fraction of its
    squared gradient that points along the flow: near 0 for a conserved quantity, of order
    ``1 / n`` for an arbitrary function. Weighting by ``|v|^2`` lets slow points, whose
    noisy ``dxdt`` has no reliable direction, count little. The combinations below
    ``flow_tol`` span the conserved features; the mean over points of ``sigma_k / sigma_1``
    of their Jacobian gives their functional rank; the median, not the mean, so that a
    feature that varies only on a thin set (a smoothed step) does not count.
    """
    n = z.state_dim
    x, v = z.x.reshape(-1, n), z.dxdt.reshape(-1, n).double()
    with torch.no_grad():
        h, jac = invariant_jacobian(model, x, name="model")
    tiny = torch.finfo(h.dtype).tiny
    jac = (jac / h.std(0).clamp_min(tiny).unsqueeze(-1)).double()  # (N, m, n)
    along = (jac @ v.unsqueeze(-1)).squeeze(-1)  # (N, m)
    total = torch.einsum("nij,nkj,n->ik", jac, jac, v.pow(2).sum(-1)) / len(x)
    flow = along.T @ along / len(x)
    evals, evecs = torch.linalg.eigh(total)
    whiten = evecs / evals.clamp_min(evals.max() * 1e-12).sqrt()
    fractions, rot = torch.linalg.eigh(whiten.T @ flow @ whiten)
    conserved = (whiten @ rot)[:, fractions < flow_tol]  # (m, k) combinations
    if conserved.shape[1] == 0:
        return fractions.to(h.dtype), h.new_zeros(0)
    sv = torch.linalg.svdvals(conserved.T @ jac)  # (N, k)
    ratios = (sv / sv[:, :1].clamp_min(tiny)).median(0).values
    return fractions.to(h.dtype), ratios.to(h.dtype)

def estimate_num_invariants(data: TrajectoryData, *, max_m: int | None = None,
                            epochs: int = 150, rtol: float = 0.25, flow_tol: float = 0.05,
                            hidden: int = 64, activation: str = "tanh", batch_size: int = 10,
                            lr: float = 3e-3, seed: int = 0,
                            progress: bool = True) -> InvariantCount:
    """Estimate how many independent conserved quantities the trajectories support.

    Method: train one ``InvariantNet`` with ``max_m`` outputs by the batch-normalised
    contrastive loss (eqs. (4), (8)) on standardised states; keep the combinations of its
    features that are conserved along the data's flow (less than ``flow_tol`` of their
    squared gradient along ``dxdt``); count the numerical rank of their Jacobian
    ``dH/dx`` at the data points (median over points of ``sigma_k / sigma_1`` above ``rtol``).

    Why this way: the contrastive loss pulls every feature towards a conserved quantity,
    and the normalisation keeps each one varying across trajectories, so with ``max_m``
    larger than the number ``k`` of independent invariants the extra features become
    *functions* of the same ``k`` quantities (e.g. ``H`` and ``H^2``): linearly independent,
    so a covariance rank would count them, but with a Jacobian of rank ``k`` at every point,
    which this rank sees through. A feature the loss could not make conserved (an
    arbitrary function, a time-like quantity) is filtered out by its gradient along the
    flow, so the count does not include it. One training suffices, and both thresholds are
    scale-free. (Comparing the loss reached with m = 1, 2, ... needs one training per m
    and a threshold on loss differences that depends on batch size and data spread.)

    Limits: ``count`` is at most ``max_m``; a 2-d system has at most one invariant
    independent of time. An invariant that the data cannot resolve (varying less across
    trajectories than the noise along them) is not counted; over a short window a slowly
    varying quantity can pass for a conserved one (the Kepler problem's perihelion angle
    is genuinely conserved, so 3 is a correct answer there). Read ``singular_ratios`` and
    ``flow_fractions`` for the margin of the decision.

    Args:
        data: trajectories with their derivatives (noisy is fine; without them, use
            :func:`~concernet_ode.estimate_derivatives` first).
        max_m: number of features learned, at most the state dimension (the default).
        epochs, batch_size, lr, seed, progress: passed to
            :func:`~concernet_ode.fit_invariants`; ``seed`` also seeds the initialisation.
        rtol: a median singular-value ratio above this counts as an independent invariant.
            The default sits between the ratios of a genuine second invariant and of a
            function of the first one.
        flow_tol: the largest fraction of a feature's squared gradient along the flow for it
            to count as conserved.
        hidden: width of the network's two hidden layers.
        activation: the network's activation; a smooth one gives smooth Jacobians.

    Returns:
        An :class:`InvariantCount`.

    Raises:
        TypeError: ``data`` is not a ``TrajectoryData``.
        ValueError: bad ``max_m``, ``rtol`` or ``flow_tol`` (others as in
            ``fit_invariants``).

    Example:
        >>> from concernet_ode.systems import SpringMass
        >>> data = SpringMass().trajectories(25, t_end=3.0, n_times=30, noise=0.01, seed=0)
        >>> estimate_num_invariants(data, progress=False).count
        1
    """
    data, max_m = _check_count_args(data, max_m, rtol)
    _check_count_args(data, max_m, flow_tol, "flow_tol")
    data.require_dxdt("estimate_num_invariants (its flow test)")
    points = data.x.reshape(-1, data.state_dim)
    shift = points.mean(0)
    scale = points.std(0).clamp_min(torch.finfo(points.dtype).eps ** 0.5)
    z = TrajectoryData(data.t, (data.x - shift) / scale, data.dxdt / scale)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = InvariantNet(data.state_dim, max_m, hidden=hidden, activation=activation)
    model = model.to(dtype=points.dtype, device=points.device)
    # The settings ``rtol`` was calibrated with: eq. (4) as printed, no decay (which would
    # shrink the weaker features whose singular values are compared), a constant step.
    history = fit_invariants(model, z, epochs=epochs, batch_size=batch_size, lr=lr,
                             seed=seed, progress=progress, positives="sum", weight_decay=0.0,
                             lr_schedule=None)
    fractions, ratios = _conserved_rank(model, z, flow_tol)
    count = int((ratios > rtol).sum())
    return InvariantCount(count, ratios, fractions, model, shift, scale, history)
