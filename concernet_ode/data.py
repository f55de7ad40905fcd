"""Trajectory data: a validated container shared by every system, trainer and metric.

Also its file formats (``.npz`` and ``.csv``, :meth:`TrajectoryData.load` and
:meth:`TrajectoryData.save`) and :func:`estimate_derivatives` for data observed without them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ._checks import count, seed_generator

__all__ = ["TrajectoryData", "estimate_derivatives"]


@dataclass(frozen=True)
class TrajectoryData:
    """Trajectories sampled on one time grid shared by all of them.

    Args:
        t: sample times, strictly increasing.
        x: states.
        dxdt: time derivatives of the states (the training targets of a vector field), or
            ``None`` where they were not observed: what needs them then says so, and
            :func:`estimate_derivatives` supplies them.

    Shapes:
        t: ``(T,)``; x: ``(N, T, n)``; dxdt: ``(N, T, n)``.

    Raises:
        TypeError: a field is not a tensor, or not of a floating dtype.
        ValueError: shapes disagree, ``t`` is not increasing, or a value is not finite.
    """

    t: torch.Tensor
    x: torch.Tensor
    dxdt: torch.Tensor | None = None

    def __post_init__(self) -> None:
        for name in ("t", "x", "dxdt"):
            value = getattr(self, name)
            if value is None and name == "dxdt":
                continue
            if not isinstance(value, torch.Tensor):
                msg = f"`{name}` must be a torch.Tensor, got {type(value).__name__}"
                raise TypeError(msg)
            if not value.is_floating_point():
                msg = (f"`{name}` must have a floating dtype, got {value.dtype}; convert it, "
                       "e.g. with .double()")
                raise TypeError(msg)
            if not bool(torch.isfinite(value).all()):
                msg = f"`{name}` contains NaN or infinite values"
                raise ValueError(msg)
        if self.x.dim() != 3:
            msg = f"`x` must have shape (N, T, n), got {tuple(self.x.shape)}"
            raise ValueError(msg)
        if self.dxdt is not None and self.dxdt.shape != self.x.shape:
            msg = (f"`dxdt` must have the shape of `x`, {tuple(self.x.shape)}; "
                   f"got {tuple(self.dxdt.shape)}")
            raise ValueError(msg)
        if self.t.shape != (self.x.shape[1],):
            msg = (f"`t` must have shape (T,) = ({self.x.shape[1]},) to match `x`; "
                   f"got {tuple(self.t.shape)}")
            raise ValueError(msg)
        if self.t.numel() > 1 and not bool((self.t.diff() > 0).all()):
            msg = "`t` must be strictly increasing"
            raise ValueError(msg)

    @property
    def n_traj(self) -> int:
        """Number of trajectories ``N``."""
        return self.x.shape[0]

    @property
    def n_times(self) -> int:
        """Number of sample times ``T``."""
        return self.x.shape[1]

    @property
    def state_dim(self) -> int:
        """State dimension ``n``."""
        return self.x.shape[2]

    def __len__(self) -> int:
        return self.n_traj

    def __getitem__(self, index: int | slice | torch.Tensor) -> TrajectoryData:
        """Select trajectories (never times): ``data[:10]``, ``data[idx]``."""
        if isinstance(index, int):
            index = slice(index, index + 1) if index != -1 else slice(-1, None)
        dxdt = None if self.dxdt is None else self.dxdt[index]
        return TrajectoryData(self.t, self.x[index], dxdt)

    def require_dxdt(self, purpose: str) -> torch.Tensor:
        """``dxdt``, or a ``ValueError`` saying that ``purpose`` needs it and how to get it."""
        if self.dxdt is None:
            msg = (f"{purpose} needs the time derivatives `dxdt`, which this data does not "
                   "have; pass them, or estimate them with "
                   "`concernet_ode.estimate_derivatives(data)`")
            raise ValueError(msg)
        return self.dxdt

    def states(self) -> torch.Tensor:
        """All states as a flat set of points, ``(N * T, n)``."""
        return self.x.reshape(-1, self.state_dim)

    def points(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All samples as a flat set of points, ``(N * T, n)`` states and derivatives.

        Raises:
            ValueError: the data has no ``dxdt``.
        """
        dxdt = self.require_dxdt("a point-wise trainer")
        return self.states(), dxdt.reshape(-1, self.state_dim)

    def to(self, *args, **kwargs) -> TrajectoryData:
        """Move or cast all tensors, as :meth:`torch.Tensor.to`."""
        dxdt = None if self.dxdt is None else self.dxdt.to(*args, **kwargs)
        return TrajectoryData(self.t.to(*args, **kwargs), self.x.to(*args, **kwargs), dxdt)

    def split(self, test_fraction: float = 0.5, *, seed: int | torch.Generator = 0,
              ) -> tuple[TrajectoryData, TrajectoryData]:
        """Split by trajectory into ``(train, test)`` with a seeded random permutation.

        Raises:
            ValueError: ``test_fraction`` leaves either part empty.
        """
        n_test = round(self.n_traj * test_fraction)
        if not 0 < n_test < self.n_traj:
            msg = (f"`test_fraction` = {test_fraction} leaves an empty part for "
                   f"{self.n_traj} trajectories; expected a value giving 1..N-1 test ones")
            raise ValueError(msg)
        gen = seed_generator(seed)
        perm = torch.randperm(self.n_traj, generator=gen).to(self.x.device)
        return self[perm[n_test:]], self[perm[:n_test]]

    def with_noise(self, std: float, *, seed: int | torch.Generator = 0) -> TrajectoryData:
        """A copy with i.i.d. Gaussian noise of standard deviation ``std`` on ``x`` and ``dxdt``.

        The noise of ``dxdt`` is drawn (and dropped) even where ``dxdt`` is ``None``, so that
        the draws that follow from the same generator do not depend on it.

        Raises:
            ValueError: ``std`` is negative or not finite.
        """
        if not (isinstance(std, (int, float)) and 0 <= std < float("inf")):
            msg = f"`std` must be a finite number >= 0, got {std!r}"
            raise ValueError(msg)
        if std == 0:
            return self
        gen = seed_generator(seed)
        noise = torch.randn((2, *self.x.shape), generator=gen, dtype=self.x.dtype)
        noise = noise.to(self.x.device)
        # In place, in the buffer the noise already holds: the same values as
        # `x + std * noise[0]`, with 4 arrays the size of `x` alive at the peak rather than 7.
        x = noise[0].mul_(std).add_(self.x)
        dxdt = None if self.dxdt is None else noise[1].mul_(std).add_(self.dxdt)
        return TrajectoryData(self.t, x, dxdt)

    # ------------------------------------------------------------------ files

    @classmethod
    def load(cls, path: str | Path, *, dtype: torch.dtype = torch.float64) -> TrajectoryData:
        """Read trajectories from a ``.npz`` or ``.csv`` file.

        ``.npz``: arrays ``t`` ``(T,)``, ``x`` ``(N, T, n)`` and optionally ``dxdt``
        ``(N, T, n)`` (read with ``allow_pickle=False``: loading never runs code).
        ``.csv``: a header row, then one row per sample, long format: a column
        ``trajectory`` (an integer label), a column ``t``, the state columns and optionally
        as many ``d<name>`` columns holding the derivative of the state column ``<name>``
        (e.g. ``trajectory,t,q,p,dq,dp``). Every trajectory must have the same times.

        Raises:
            FileNotFoundError: no such file.
            ValueError: an unknown suffix, a missing array or column, wrong ranks or sizes,
                non-finite values, unsorted or mismatched times; the message names the file.
        """
        path = Path(path)
        if not path.is_file():
            msg = f"no trajectory file at {str(path)!r}"
            raise FileNotFoundError(msg)
        if path.suffix == ".npz":
            arrays = _read_npz(path)
        elif path.suffix == ".csv":
            arrays = _read_csv(path)
        else:
            msg = f"{str(path)!r}: expected a .npz or .csv file, got suffix {path.suffix!r}"
            raise ValueError(msg)
        try:
            return cls(*(None if a is None else torch.as_tensor(a, dtype=dtype)
                         for a in arrays))
        except (TypeError, ValueError) as err:
            msg = f"{str(path)!r}: {err}"
            raise ValueError(msg) from err

    def save(self, path: str | Path) -> Path:
        """Write the trajectories as ``.npz`` (``t``, ``x`` and ``dxdt`` where present)."""
        path = Path(path)
        if path.suffix != ".npz":
            msg = f"`path` must end in .npz, got {str(path)!r}"
            raise ValueError(msg)
        arrays = {"t": self.t.cpu().numpy(), "x": self.x.cpu().numpy()}
        if self.dxdt is not None:
            arrays["dxdt"] = self.dxdt.cpu().numpy()
        np.savez(path, **arrays)
        return path


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    with np.load(path, allow_pickle=False) as npz:
        missing = [k for k in ("t", "x") if k not in npz.files]
        if missing:
            msg = (f"{str(path)!r} lacks the array(s) {missing}; expected `t` (T,), "
                   f"`x` (N, T, n) and optionally `dxdt`; found {sorted(npz.files)}")
            raise ValueError(msg)
        t, x = npz["t"], npz["x"]
        dxdt = npz["dxdt"] if "dxdt" in npz.files else None
    for name, value in (("t", t), ("x", x), ("dxdt", dxdt)):
        if value is not None and not np.issubdtype(value.dtype, np.number):
            msg = f"{str(path)!r}: array `{name}` is not numeric (dtype {value.dtype})"
            raise ValueError(msg)
    return t, x, dxdt


def _read_csv(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    with path.open() as fh:
        header = fh.readline().strip().split(",")
    header = [h.strip() for h in header]
    if header[:2] != ["trajectory", "t"] or len(header) < 3:
        msg = (f"{str(path)!r}: the header must start with `trajectory,t` and name at least "
               f"one state column, got {header}")
        raise ValueError(msg)
    rest = header[2:]
    derivs = [h for h in rest if h.startswith("d") and h[1:] in rest]
    names = [h for h in rest if h not in derivs]
    if derivs and [d[1:] for d in derivs] != names:
        msg = (f"{str(path)!r}: derivative columns {derivs} must be `d<name>` for every state "
               f"column {names}, in the same order")
        raise ValueError(msg)
    try:
        table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    except ValueError as err:
        msg = f"{str(path)!r}: not a numeric table ({err})"
        raise ValueError(msg) from err
    labels, times = table[:, 0], table[:, 1]
    order = np.lexsort((times, labels))
    table, labels = table[order], labels[order]
    groups = np.unique(labels)
    counts = {int(np.sum(labels == g)) for g in groups}
    if len(counts) != 1:
        msg = f"{str(path)!r}: every trajectory needs the same number of rows, got {counts}"
        raise ValueError(msg)
    per = table.reshape(len(groups), counts.pop(), -1)
    t = per[0, :, 1]
    if not np.array_equal(per[:, :, 1], np.broadcast_to(t, per[:, :, 1].shape)):
        msg = f"{str(path)!r}: every trajectory must be sampled at the same times"
        raise ValueError(msg)
    n = len(names)
    x = per[:, :, 2:2 + n]
    dxdt = per[:, :, 2 + n:] if derivs else None
    return t, x, dxdt


def uniform_step(t: torch.Tensor) -> float | None:
    """The step of a uniform time grid ``t``, or ``None`` if its steps differ.

    Steps may differ by the rounding of ``t``'s dtype (a float32 ``linspace(0, 10, 100)``
    has steps that differ in the sixth digit), not more.
    """
    steps = t.diff().double()
    dt = float(steps.mean())
    rounding = 4 * torch.finfo(t.dtype).eps * float(t.abs().max()) / dt
    if not math.isclose(float(steps.min()), float(steps.max()), rel_tol=max(1e-6, rounding)):
        return None
    return dt


def estimate_derivatives(data: TrajectoryData, *, window: int | None = None,
                         polyorder: int = 3) -> TrajectoryData:
    """The same trajectories with ``dxdt`` estimated from the (noisy) states.

    A Savitzky-Golay differentiator (``scipy.signal.savgol_filter`` with ``deriv=1``): along
    each trajectory, the slope of a least-squares polynomial of degree ``polyorder`` fitted
    to ``window`` consecutive samples. It is exact for polynomials of that degree, smooths
    noise as the window grows, handles the ends of a trajectory by fitting the first and last
    windows, and runs on all trajectories in one vectorised call. (pysindy's
    ``SmoothedFiniteDifference`` applies the same filter; scipy is already a dependency.)

    Args:
        data: trajectories on a uniform time grid; an existing ``dxdt`` is replaced.
        window: samples per fit, odd, at most ``T``; default ``min(T, 9)`` made odd.
        polyorder: degree of the local polynomial, less than ``window``.

    Returns:
        A new :class:`TrajectoryData` with the estimated ``dxdt`` (same dtype and device).

    Raises:
        ValueError: a non-uniform grid, too few samples, or a bad ``window``/``polyorder``.

    Shapes:
        data.x: ``(N, T, n)``; the returned ``dxdt``: ``(N, T, n)``.
    """
    from scipy.signal import savgol_filter

    if not isinstance(data, TrajectoryData):
        msg = f"`data` must be a TrajectoryData, got {type(data).__name__}"
        raise TypeError(msg)
    n_times = data.n_times
    polyorder = count(polyorder, "polyorder", 0)
    if window is None:
        window = min(n_times, 9)
        window -= 1 - window % 2
    window = count(window, "window", 1)
    if window % 2 == 0 or window > n_times or window <= polyorder:
        msg = (f"`window` must be odd, at most the {n_times} samples per trajectory and larger "
               f"than `polyorder` = {polyorder}; got {window}")
        raise ValueError(msg)
    dt = uniform_step(data.t)
    if dt is None:
        steps = data.t.diff()
        msg = ("`data.t` must be uniformly spaced for a Savitzky-Golay derivative; got steps "
               f"from {float(steps.min()):g} to {float(steps.max()):g}")
        raise ValueError(msg)
    x = data.x.detach().cpu().double().numpy()
    dxdt = savgol_filter(x, window, polyorder, deriv=1, delta=dt, axis=1, mode="interp")
    return TrajectoryData(data.t, data.x, torch.from_numpy(dxdt).to(data.x))
