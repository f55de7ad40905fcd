"""Step a torchdiffeq adaptive Runge-Kutta solver to given times, with a replaceable state.

``torchdiffeq.odeint`` integrates through all output times in one call and offers no way to
change the state between steps (its callbacks see the state but cannot replace it). A
projection method needs exactly that: after every output time, put the projected state back
into the solver and go on. Restarting ``odeint`` on every interval does it with public API
but pays, per interval, the input checks, the solver set-up and a fresh step-size start.

:class:`RKStepper` instead drives one solver object of torchdiffeq's adaptive Runge-Kutta
family (dopri5, dopri8, bosh3, fehlberg2, adaptive_heun) step by step: steps are shortened
(or stretched by up to 10%) so that one ends on every output time (:meth:`RKStepper.advance`),
or, on output grids finer than the steps, a step of the solver's own size is taken and the
output times inside it are read off the solver's dense-output polynomial
(:meth:`RKStepper.step_across`); :meth:`RKStepper.restart_from` swaps in the projected state
(re-evaluating the field there unless the state moved by less than the solver's own
tolerance).

Private torchdiffeq API. This is the only module of :mod:`concernet_ode` that touches
``torchdiffeq._impl``, and it needs these pieces of it (identical in torchdiffeq 0.2.3 to 0.2.5,
the supported range ``>=0.2.3,<0.3`` that ``pyproject.toml`` pins):

- ``misc._check_inputs(func, y0, t, rtol, atol, method, options, event_fn, SOLVERS)``,
  returning the 10-tuple ``(shapes, func, y0, t, rtol, atol, method, options, event_fn,
  t_is_reversed)``;
- ``odeint.SOLVERS``, the dict from method names to solver classes;
- ``rk_common.RKAdaptiveStepsizeODESolver`` with the methods ``_before_integrate(t)``,
  ``_adaptive_step(rk_state)`` and ``_interp_fit`` (looked up on the instance by
  ``_adaptive_step``, so it can be swapped out for steps whose dense output is never read), and
  the instance attributes ``rk_state``, ``max_num_steps``, ``dtype``, ``rtol``, ``atol``,
  ``norm``;
- ``rk_common._RungeKuttaState``, a named tuple with the fields ``y1, f1, t0, t1, dt,
  interp_coeff``.

:func:`make_stepper` checks them on every call (signatures and names before the solver is
built, the 10-tuple and the instance attributes while it is built). Where one of them is
missing or has another shape (a torchdiffeq outside the supported range), it does not fail:
it returns ``None``, as for a method that is not an adaptive Runge-Kutta one, and
:func:`~concernet_ode.odeint_projected` falls back to one public ``torchdiffeq.odeint`` call
per output interval. That path integrates the same projected map (results agree within the
solver tolerance) and is slower; ``interpolate=True`` needs the persistent solver and is then
refused by ``odeint_projected``. The fallback is announced once per process by a
:class:`UserWarning` naming the installed torchdiffeq version, the supported range and what
differs. Fallback rather than an error, because the public path is correct, only slower.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable

import torch
import torchdiffeq

try:  # private API of torchdiffeq (0.2.3 to 0.2.5); see the module docstring
    from torchdiffeq._impl.misc import _check_inputs
    from torchdiffeq._impl.odeint import SOLVERS
    from torchdiffeq._impl.rk_common import RKAdaptiveStepsizeODESolver, _RungeKuttaState
except ImportError as exc:  # pragma: no cover - depends on the installed torchdiffeq
    _IMPORT_ERROR: ImportError | None = exc
    _check_inputs = SOLVERS = RKAdaptiveStepsizeODESolver = _RungeKuttaState = None
else:
    _IMPORT_ERROR = None

__all__ = ["SUPPORTED_TORCHDIFFEQ", "RKStepper", "make_stepper"]

SUPPORTED_TORCHDIFFEQ = ">=0.2.3,<0.3"  # keep in step with pyproject.toml

# What this module needs of torchdiffeq._impl (see the module docstring).
_CHECK_INPUTS_PARAMS = ("func", "y0", "t", "rtol", "atol", "method", "options", "event_fn",
                        "SOLVERS")
_CHECK_INPUTS_ARITY = 10
_SOLVER_METHODS = ("_before_integrate", "_adaptive_step", "_interp_fit")
# instance attributes of a solver once built (and ``rk_state`` after _before_integrate)
_SOLVER_ATTRIBUTES = ("max_num_steps", "dtype", "rtol", "atol", "norm")
_STATE_FIELDS = ("y1", "f1", "t0", "t1", "dt", "interp_coeff")
# The adaptive Runge-Kutta methods of torchdiffeq 0.2.x, by name: where the private classes
# cannot be inspected, these are the methods that would have used the stepper (and warn).
_ADAPTIVE_RK = ("adaptive_heun", "bosh3", "dopri5", "dopri8", "fehlberg2")

# A proposed step that falls short of the next output time by less than this factor is
# stretched to end on it (MATLAB's ode45 does the same before its final time): otherwise a
# sliver of a step follows, and one output interval costs two steps instead of one.
_STRETCH = 1.1

_warned = False  # the fallback warning is given once per process


class _PrivateAPIChanged(Exception):
    """torchdiffeq's private solver API is not the one this module was written against."""


def _private_api_problem() -> str | None:
    """What differs in torchdiffeq's private API from what :class:`RKStepper` needs, or ``None``.

    Checks what can be checked without running a solver: the imports, the parameters of
    ``_check_inputs``, the solver methods and the state's fields. (The arity of
    ``_check_inputs``'s result and the solver's instance attributes are checked by
    :class:`RKStepper` as it is built.)
    """
    if _IMPORT_ERROR is not None:
        return f"cannot import it ({_IMPORT_ERROR})"
    try:
        params = tuple(inspect.signature(_check_inputs).parameters)
    except (TypeError, ValueError):  # not introspectable
        params = None
    if params != _CHECK_INPUTS_PARAMS:
        return (f"torchdiffeq._impl.misc._check_inputs takes {params}, expected "
                f"{_CHECK_INPUTS_PARAMS}")
    if not isinstance(SOLVERS, dict):
        return f"torchdiffeq._impl.odeint.SOLVERS is a {type(SOLVERS).__name__}, not a dict"
    missing = [name for name in _SOLVER_METHODS
               if not callable(getattr(RKAdaptiveStepsizeODESolver, name, None))]
    if missing:
        return f"RKAdaptiveStepsizeODESolver has no method(s) {missing}"
    fields = tuple(getattr(_RungeKuttaState, "_fields", ()))
    missing = [name for name in _STATE_FIELDS if name not in fields]
    if missing:
        return f"_RungeKuttaState has no field(s) {missing} (has {fields})"
    return None


def _check_attributes(solver: object, names: tuple[str, ...]) -> None:
    missing = [name for name in names if not hasattr(solver, name)]
    if missing:
        msg = f"a {type(solver).__name__} solver has no attribute(s) {missing}"
        raise _PrivateAPIChanged(msg)


def _warn_fallback(problem: str) -> None:
    global _warned
    if _warned:
        return
    _warned = True
    version = getattr(torchdiffeq, "__version__", "(unknown version)")
    msg = (f"concernet_ode: the private solver API of the installed torchdiffeq {version} "
           f"differs from the one odeint_projected's persistent adaptive solver was written "
           f"for (torchdiffeq {SUPPORTED_TORCHDIFFEQ}): {problem}. Falling back to one public "
           "torchdiffeq.odeint call per output interval: the same results within the solver "
           "tolerance, but slower, and interpolate=True is unavailable. Install torchdiffeq"
           f"{SUPPORTED_TORCHDIFFEQ} for the fast path. (This warning is given once.)")
    warnings.warn(msg, UserWarning, stacklevel=4)


class RKStepper:
    """One torchdiffeq adaptive RK solver, advanced to each output time in turn.

    Args:
        func: the vector field ``func(t, x)``.
        x0: the initial state.
        t: the output times (increasing or decreasing).
        rtol, atol, method, options: as for ``torchdiffeq.odeint``.
    """

    def __init__(self, func: Callable, x0: torch.Tensor, t: torch.Tensor, *, rtol: float,
                 atol: float, method: str, options: dict) -> None:
        checked = _check_inputs(func, x0, t, rtol, atol, method, options, None, SOLVERS)
        if not isinstance(checked, tuple) or len(checked) != _CHECK_INPUTS_ARITY:
            got = len(checked) if isinstance(checked, tuple) else type(checked).__name__
            msg = (f"torchdiffeq._impl.misc._check_inputs returned {got} values, expected "
                   f"{_CHECK_INPUTS_ARITY}")
            raise _PrivateAPIChanged(msg)
        _, func, y0, t, rtol, atol, method, options, _, _ = checked
        self.func = func  # wrapped by torchdiffeq: time reversal, callbacks
        self.solver = SOLVERS[method](func=func, y0=y0, rtol=rtol, atol=atol, **options)
        _check_attributes(self.solver, _SOLVER_ATTRIBUTES)
        # increasing (negated by torchdiffeq for a decreasing grid), in the solver's time dtype
        self.times = t.to(self.solver.dtype)
        self.solver._before_integrate(self.times)
        _check_attributes(self.solver, ("rk_state",))
        if not isinstance(self.solver.rk_state, _RungeKuttaState):
            msg = (f"a {type(self.solver).__name__} solver's rk_state is a "
                   f"{type(self.solver.rk_state).__name__}, not a _RungeKuttaState")
            raise _PrivateAPIChanged(msg)
        # The loop in :meth:`advance` compares times as Python floats: a tensor comparison per
        # step costs more than the arithmetic. Closer than ``slack`` to an output time counts
        # as arrived (t0 + (target - t0) may round a few ulps short).
        self._times = self.times.tolist()
        eps = torch.finfo(self.times.dtype).eps
        self._slack = [8 * eps * max(abs(v), 1.0) for v in self._times]
        # Steps that end on output times never evaluate the dense-output polynomial: skip
        # fitting it after each of them (``step_across`` puts the fit back for its step).
        self._interp_fit = self.solver._interp_fit
        self.solver._interp_fit = _no_interpolant

    def advance(self, k: int) -> torch.Tensor:
        """Integrate to output time ``k`` (steps shortened to end on it); return the state."""
        solver, target, slack = self.solver, self._times[k], self._slack[k]
        n_steps = 0
        while (gap := target - float(solver.rk_state.t1)) > slack:
            self._check_step_limit(n_steps, "solver steps between output times")
            state = solver.rk_state
            if _STRETCH * float(state.dt) >= gap:  # land on the output time, not a sliver short
                state = state._replace(dt=self.times[k] - state.t1)
            solver.rk_state = solver._adaptive_step(state)
            n_steps += 1
        return solver.rk_state.y1

    def _check_step_limit(self, n_steps: int, what: str) -> None:
        if n_steps >= self.solver.max_num_steps:
            msg = (f"odeint_projected: more than {int(self.solver.max_num_steps)} {what} (at "
                   f"t = {float(self.solver.rk_state.t1):.6g}); raise "
                   "options={'max_num_steps': ...} or loosen rtol/atol")
            raise RuntimeError(msg)

    def outputs_in_next_step(self, k: int) -> int:
        """How many output times from ``k`` on the solver's proposed next step would reach."""
        state = self.solver.rk_state
        reach = float(state.t1) + _STRETCH * float(state.dt)
        j = k
        while j < len(self._times) and self._times[j] <= reach:
            j += 1
        return j - k

    def step_across(self, k: int) -> tuple[int, torch.Tensor | None, bool, torch.Tensor]:
        """Take one accepted solver step of its own size, ending at or before the last output.

        Returns ``(j, inner, on_end, end)``: the step passed output times ``k, ..., k + j - 1``
        strictly inside it, whose states ``inner`` (``(j, ..., n)``, ``None`` if ``j = 0``) come
        from the solver's dense-output polynomial; ``end`` is the state where the step ended,
        and ``on_end`` says whether output ``k + j`` is there.
        """
        solver = self.solver
        end = self._times[-1]
        n_steps = 0
        while True:
            self._check_step_limit(n_steps, "rejected solver steps in a row")
            state = solver.rk_state
            if float(state.t1) + _STRETCH * float(state.dt) >= end:  # no sliver at the end
                state = state._replace(dt=self.times[-1] - state.t1)
            solver._interp_fit = self._interp_fit
            try:
                new = solver._adaptive_step(state)
            finally:
                solver._interp_fit = _no_interpolant
            solver.rk_state = new
            n_steps += 1
            if float(new.t1) > float(state.t1):  # accepted
                break
        t1 = float(new.t1)
        j = k
        while j < len(self._times) and self._times[j] < t1 - self._slack[j]:
            j += 1
        on_end = j < len(self._times) and self._times[j] <= t1 + self._slack[j]
        inner = None
        if j > k:
            frac = ((self.times[k:j] - new.t0) / (new.t1 - new.t0)).to(new.y1.dtype)
            inner = _horner(new.interp_coeff, frac.reshape(-1, *([1] * new.y1.dim())))
        return j - k, inner, on_end, new.y1

    def restart_from(self, x: torch.Tensor, t: torch.Tensor | None = None) -> None:
        """Continue from state ``x`` at time ``t`` (default: where the last step ended).

        The field is re-evaluated at ``x`` only if ``x`` moved by more than the solver's own
        error tolerance (in its ``atol + rtol * |y|`` scaled norm). Below that, keeping the
        first-same-as-last stage from the unprojected point changes the next step by
        ``h * L * |x - y|``: a correction of the size of one local error, multiplied by a
        step, so one power of the step size smaller than the local error the controller
        already accepts.
        """
        solver = self.solver
        state = solver.rk_state
        t = state.t1 if t is None else t
        y = state.y1
        scale = solver.atol + solver.rtol * torch.maximum(y.detach().abs(), x.detach().abs())
        if float(solver.norm((x.detach() - y.detach()) / scale)) <= 1.0:
            solver.rk_state = state._replace(y1=x, t1=t)
        else:
            solver.rk_state = state._replace(y1=x, f1=self.func(t, x), t1=t)


def _horner(coeffs: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``sum_i coeffs[i] * x**i`` for a batch of points ``x`` (broadcast against the terms).

    torchdiffeq's own evaluator (``_interp_evaluate``) takes one scalar time and asserts it
    lies in the step, so it cannot read all the output times inside a step in one call.
    """
    total = coeffs[-1] * x
    for c in reversed(coeffs[1:-1]):
        total = (total + c) * x
    return total + coeffs[0]


def _no_interpolant(*_: object) -> None:
    return None


def make_stepper(func: Callable, x0: torch.Tensor, t: torch.Tensor,
                 odeint_kwargs: dict) -> RKStepper | None:
    """An :class:`RKStepper` for an adaptive Runge-Kutta method, else ``None``.

    ``None`` also where torchdiffeq's private API differs from what :class:`RKStepper` needs
    (see the module docstring): the caller then falls back to public ``odeint`` calls, and a
    :class:`UserWarning` says so, once per process.
    """
    if t.numel() < 2:
        return None
    method = odeint_kwargs.get("method", "dopri5")
    options = dict(odeint_kwargs.get("options") or {})
    if any(options.get(key) is not None for key in ("step_t", "jump_t", "min_step")):
        # The solver's own grid handling, or a minimum step that could carry a shortened
        # step past an output time: keep torchdiffeq's odeint in charge.
        return None
    problem = _private_api_problem()
    if problem is None:
        solver_cls = SOLVERS.get(method)
        if solver_cls is None or not issubclass(solver_cls, RKAdaptiveStepsizeODESolver):
            return None
        try:
            return RKStepper(func, x0, t, rtol=odeint_kwargs.get("rtol", 1e-7),
                             atol=odeint_kwargs.get("atol", 1e-9), method=method,
                             options=options)
        except _PrivateAPIChanged as exc:
            problem = str(exc)
    elif method not in _ADAPTIVE_RK:  # would not have used the stepper anyway
        return None
    _warn_fallback(problem)
    return None
