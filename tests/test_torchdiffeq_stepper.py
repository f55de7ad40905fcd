"""concernet_ode._torchdiffeq_stepper: its checks of torchdiffeq's private API, and the fallback.

The persistent adaptive solver behind ``odeint_projected`` uses ``torchdiffeq._impl``. These
tests simulate a torchdiffeq whose private API differs (by monkeypatching what the module
checks) and assert the documented behaviour: ``make_stepper`` returns ``None`` with a one-time
warning naming the installed version and the supported range, and ``odeint_projected`` takes
the public per-interval ``odeint`` path, which agrees with the fast path within the solver
tolerance.
"""

import collections
import functools
import re
import warnings
from pathlib import Path

import pytest
import torch
import torchdiffeq

from concernet_ode import _torchdiffeq_stepper as stepper_module
from concernet_ode import odeint_projected
from concernet_ode._torchdiffeq_stepper import SUPPORTED_TORCHDIFFEQ, RKStepper, make_stepper
from concernet_ode.systems import Kepler

ROOT = Path(__file__).resolve().parents[1]
KWARGS = {"rtol": 1e-10, "atol": 1e-12}


@pytest.fixture
def problem():
    system = Kepler()
    x0 = system.sample_initial(4, seed=0).to(torch.float64)
    t = torch.linspace(0, 2, 21, dtype=torch.float64)
    return system, x0, t


@pytest.fixture
def fresh_warning(monkeypatch):
    """Forget that the fallback warning was given (it is given once per process)."""
    monkeypatch.setattr(stepper_module, "_warned", False)


def _version_tuple(text):
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def test_installed_torchdiffeq_takes_the_private_path(problem, fresh_warning):
    system, x0, t = problem
    low, high = re.fullmatch(r">=([\d.]+),<([\d.]+)", SUPPORTED_TORCHDIFFEQ).groups()
    installed = _version_tuple(torchdiffeq.__version__)
    assert _version_tuple(low) <= installed < _version_tuple(high), torchdiffeq.__version__
    # the pin in pyproject.toml is the range the module states
    assert f'"torchdiffeq{SUPPORTED_TORCHDIFFEQ}"' in (ROOT / "pyproject.toml").read_text()
    assert stepper_module._private_api_problem() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert isinstance(make_stepper(system.vector_field, x0, t, dict(KWARGS)), RKStepper)
        odeint_projected(system.vector_field, x0, t, system.invariants, **KWARGS)
    assert not stepper_module._warned


def _wrong_arity(monkeypatch):
    real = stepper_module._check_inputs

    @functools.wraps(real)  # same signature: only the result differs
    def check_inputs(*args):
        return (*real(*args), None)

    monkeypatch.setattr(stepper_module, "_check_inputs", check_inputs)
    return "_check_inputs returned 11 values, expected 10"


def _wrong_signature(monkeypatch):
    real = stepper_module._check_inputs

    def check_inputs(func, y0, t, rtol, atol, method, options, event_fn, SOLVERS, extra=None):
        return real(func, y0, t, rtol, atol, method, options, event_fn, SOLVERS)

    monkeypatch.setattr(stepper_module, "_check_inputs", check_inputs)
    return r"_check_inputs takes \(.*'extra'\), expected"


def _no_interp_fit(monkeypatch):
    # A stand-in for the solver class without ``_interp_fit`` (deleting it from the real
    # class would break torchdiffeq's own odeint, which the fallback needs).
    real = stepper_module.RKAdaptiveStepsizeODESolver
    fake = type(real.__name__, (), {k: v for k, v in vars(real).items() if k != "_interp_fit"})
    monkeypatch.setattr(stepper_module, "RKAdaptiveStepsizeODESolver", fake)
    return r"RKAdaptiveStepsizeODESolver has no method\(s\) \['_interp_fit'\]"


def _state_fields_renamed(monkeypatch):
    state = collections.namedtuple("_RungeKuttaState", "y1, f1, t0, t1, dt, interp")
    monkeypatch.setattr(stepper_module, "_RungeKuttaState", state)
    return r"_RungeKuttaState has no field\(s\) \['interp_coeff'\]"


def _solver_attribute_missing(monkeypatch):
    names = (*stepper_module._SOLVER_ATTRIBUTES, "attribute_of_another_version")
    monkeypatch.setattr(stepper_module, "_SOLVER_ATTRIBUTES", names)
    return r"solver has no attribute\(s\) \['attribute_of_another_version'\]"


def _import_failed(monkeypatch):
    error = ImportError("cannot import name 'SOLVERS' from 'torchdiffeq._impl.odeint'")
    monkeypatch.setattr(stepper_module, "_IMPORT_ERROR", error)
    for name in ("_check_inputs", "SOLVERS", "RKAdaptiveStepsizeODESolver", "_RungeKuttaState"):
        monkeypatch.setattr(stepper_module, name, None)
    return "cannot import it .*cannot import name 'SOLVERS'"


BREAKAGES = [_wrong_arity, _wrong_signature, _no_interp_fit, _state_fields_renamed,
             _solver_attribute_missing, _import_failed]


@pytest.mark.parametrize("breakage", BREAKAGES, ids=lambda f: f.__name__.lstrip("_"))
def test_changed_private_api_falls_back_to_public_odeint(problem, fresh_warning, monkeypatch,
                                                         breakage):
    system, x0, t = problem
    fast = odeint_projected(system.vector_field, x0, t, system.invariants, **KWARGS)
    what = breakage(monkeypatch)
    version = re.escape(torchdiffeq.__version__)
    supported = re.escape(SUPPORTED_TORCHDIFFEQ)
    with pytest.warns(UserWarning, match=f"torchdiffeq {version}.*{supported}.*{what}"):
        assert make_stepper(system.vector_field, x0, t, dict(KWARGS)) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process: no second warning
        fallback = odeint_projected(system.vector_field, x0, t, system.invariants, **KWARGS)
    # the fallback is exactly the public per-interval path of odeint_projected ...
    monkeypatch.setattr("concernet_ode.manifold.make_stepper", lambda *a: None)
    public = odeint_projected(system.vector_field, x0, t, system.invariants, **KWARGS)
    assert torch.equal(fallback, public)
    # ... which agrees with the persistent solver within the solver tolerance
    assert torch.allclose(fallback, fast, rtol=0, atol=1e-7)
    drift = (system.invariants(fallback) - system.invariants(x0)).abs().max()
    assert float(drift.detach()) <= 1e-10


def test_changed_private_api_is_not_reported_for_other_methods(problem, fresh_warning,
                                                               monkeypatch):
    # rk4 never uses the persistent solver: nothing falls back, nothing to warn about
    system, x0, t = problem
    _import_failed(monkeypatch)
    kwargs = {"method": "rk4", "options": {"step_size": 0.1}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert make_stepper(system.vector_field, x0, t, kwargs) is None
        odeint_projected(system.vector_field, x0, t, system.invariants, **kwargs)
