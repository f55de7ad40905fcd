"""Data-parallel training equals single-process training; checkpoints resume exactly.

Two ranks (gloo, CPU, float64) are spawned once for the module and run every trainer on the
same seeded data; each test compares what they trained with a single-process run here.
"""

from __future__ import annotations

import datetime
import json
import math
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from concernet_ode import (
    MLP,
    Autoencoder,
    InvariantNet,
    ProjectedVectorField,
    contrastive_invariant_loss,
    fit_autoencoder,
    fit_dynamics,
    fit_invariants,
    refine_invariants,
    training,
)
from concernet_ode import distributed as cd
from concernet_ode.distributed import Checkpoint
from concernet_ode.shooting import fit_trajectories
from concernet_ode.systems import SpringMass

WORLD = 2
RTOL = 1e-10  # the bound: rounding of the sums over ranks, carried through Adam


def _data(n_traj: int = 7, n_times: int = 6):
    return SpringMass().trajectories(n_traj, t_end=1.0, n_times=n_times, noise=0.01, seed=3)


def _invariant_net() -> InvariantNet:
    """A small float64 invariant net whose last bias is frozen: every loss of the invariants
    depends on differences of features (or on dH/dx), so that bias's gradient is rounding
    alone, which Adam (dividing by its eps of 1e-8) turns into steps of 1e-9 that differ
    from run to run."""
    torch.manual_seed(0)
    net = InvariantNet(2, 1, hidden=8).double()
    net.net[-1].bias.requires_grad_(False)
    return net


def _invariants(**kw):
    net = _invariant_net()
    data = _data()
    # batches of 5 of 7 trajectories: pieces of 3 and 2, then 1 and 1
    hist = fit_invariants(net, data, epochs=2, batch_size=5, progress=False,
                          val_data=_data(3), **kw)
    return net, hist


def _inv_default():
    return _invariants()


def _inv_flow_ranking():
    return _invariants(flow_weight=0.5, ranking_weight=0.1)


def _refine():
    net = _invariant_net()
    hist = refine_invariants(net, _data(), epochs=3, batch_size=9, lr=1e-2, progress=False,
                             validation=0.3, patience=3)
    return net, {"loss": hist["loss"], "val_loss": hist["val_loss"]}


def _dynamics():
    torch.manual_seed(0)
    field = ProjectedVectorField(MLP(2, 2, hidden=8).double(), InvariantNet(2, 1, hidden=8)
                                 .double())
    # train_invariants: the step differentiates through the projection's own autograd.grad
    hist = fit_dynamics(field, _data(), epochs=2, batch_size=11, progress=False,
                        train_invariants=True)
    return field, hist


def _trajectories():
    torch.manual_seed(0)
    field = MLP(2, 2, hidden=8).double()
    # estimated starts: a parameter per window, each rank's gradient reaching only its rows
    hist = fit_trajectories(field, _data(), window=3, epochs=2, batch_size=5, progress=False,
                            starts="estimated")
    return field, hist


def _autoencoder():
    torch.manual_seed(0)
    ae = Autoencoder(6, 2, hidden=(4,)).double()
    x = torch.randn(13, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    return ae, fit_autoencoder(ae, x, epochs=2, batch_size=4, progress=False)


SCENARIOS = {"invariants": _inv_default, "invariants_flow_ranking": _inv_flow_ranking,
             "refine": _refine, "dynamics": _dynamics, "trajectories": _trajectories,
             "autoencoder": _autoencoder}


def _contrastive_check() -> dict:
    """The sharded loss (shares summed over ranks) and its gradient, on 5 trajectories."""
    feats = torch.randn(5, 4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    idx = torch.arange(5)
    local = feats[cd.shard(idx)].clone().requires_grad_(True)
    share = contrastive_invariant_loss(cd.gather_batch(local, 5)) / cd.world_size()
    share.backward()
    total = share.detach().clone()
    dist.all_reduce(total)
    padded = torch.zeros(3, 4, 2, dtype=torch.float64)
    padded[:local.shape[0]] = local.grad
    gathered = [torch.zeros_like(padded) for _ in range(cd.world_size())]
    dist.all_gather(gathered, padded)
    grads = torch.cat([g[:s] for g, s in zip(gathered, cd.shard_sizes(5), strict=True)])
    return {"loss": total, "grad": grads}


def _failing_rank() -> str:
    """Rank 1 raises inside a step; every rank must stop with an error, none hang."""
    w = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))

    def loss(idx):
        if cd.rank() == 1:
            raise ValueError("boom on rank 1")
        return (w * idx.double().mean()).sum()

    try:
        training._run([w], 8, 4, loss, epochs=1, lr=1e-3, seed=0, progress=False, desc="t")
    except Exception as err:  # the message each rank saw
        return f"{type(err).__name__}: {err}"
    return "no error"


def _worker(rank: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank,
                            world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        tensors, meta = {}, {}
        for name, scenario in SCENARIOS.items():
            model, hist = scenario()
            tensors.update({f"{name}/{k}": v.detach() for k, v in model.state_dict().items()})
            meta[name] = hist
        for k, v in _contrastive_check().items():
            tensors[f"contrastive/{k}"] = v
        path = Path(out) / "ckpt.safetensors"
        torch.manual_seed(0)
        fit_autoencoder(Autoencoder(6, 2, hidden=(4,)).double(),
                        torch.randn(8, 6, dtype=torch.float64), epochs=2, batch_size=4,
                        progress=False, checkpoint=Checkpoint(path, every=1))
        meta["failing"] = _failing_rank()
        meta["files"] = sorted(p.name for p in Path(out).iterdir())
        save_file({k: v.contiguous() for k, v in tensors.items()},
                  f"{out}/rank{rank}.safetensors")
        Path(f"{out}/rank{rank}.json").write_text(json.dumps(meta))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[tuple[dict, dict]]:
    out = tmp_path_factory.mktemp("ddp")
    ctx = mp.spawn(_worker, args=(str(out),), nprocs=WORLD, join=False)
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("the spawned ranks did not finish within 120 s")
    return [(load_file(f"{out}/rank{r}.safetensors"),
             json.loads(Path(f"{out}/rank{r}.json").read_text())) for r in range(WORLD)]


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float) -> bool:
    return bool(((a - b).abs() <= rtol * b.abs().clamp_min(1e-3)).all())


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_two_ranks_train_as_one_process(ranks, name):
    torch.set_num_threads(1)
    model, hist = SCENARIOS[name]()
    expected = {k: v.detach() for k, v in model.state_dict().items()}
    for tensors, meta in ranks:
        for key, value in expected.items():
            got = tensors[f"{name}/{key}"]
            assert _close(got, value, RTOL), (name, key, (got - value).abs().max())
        for key, values in hist.items():
            assert all(math.isclose(a, b, rel_tol=1e-10) for a, b in
                       zip(meta[name][key], values, strict=True)), (name, key)
    # the ranks hold one model, to the bit
    assert all(torch.equal(ranks[0][0][f"{name}/{k}"], ranks[1][0][f"{name}/{k}"])
               for k in expected)


def test_sharded_contrastive_loss_is_the_whole_batch_loss(ranks):
    feats = torch.randn(5, 4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    feats.requires_grad_(True)
    loss = contrastive_invariant_loss(feats)
    loss.backward()
    for tensors, _ in ranks:
        assert math.isclose(float(tensors["contrastive/loss"]), float(loss.detach()),
                            rel_tol=1e-12)
        assert _close(tensors["contrastive/grad"], feats.grad, 1e-12)


def test_an_error_on_one_rank_stops_every_rank(ranks):
    assert ranks[1][1]["failing"] == "ValueError: boom on rank 1"
    assert ranks[0][1]["failing"].startswith("RuntimeError: rank 1 failed")


def test_only_rank_zero_writes_the_checkpoint(ranks):
    files = ranks[0][1]["files"]
    assert "ckpt.safetensors" in files
    assert not [f for f in files if f.endswith(".tmp")]


# --- checkpoints and resume (one process) ---------------------------------------------------


class _Interrupt(Exception):
    pass


def _interrupted(monkeypatch, steps: int):
    """Make the training loop raise after ``steps`` steps, as a killed run would stop."""
    real, done = training._step, [0]

    def step(*args, **kwargs):
        if done[0] == steps:
            raise _Interrupt
        done[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "_step", step)


def _with_checkpoint(name: str, ck: Checkpoint | None):
    torch.manual_seed(0)
    data = _data()
    if name == "invariants":
        net = InvariantNet(2, 1, hidden=8).double()
        return net, fit_invariants(net, data, epochs=4, batch_size=5, progress=False,
                                   val_data=_data(3), checkpoint=ck)
    if name == "refine":
        net = InvariantNet(2, 1, hidden=8).double()
        hist = refine_invariants(net, data, epochs=4, batch_size=9, lr=1e-2, progress=False,
                                 validation=0.3, patience=4, checkpoint=ck)
        return net, hist
    if name == "dynamics":
        field = ProjectedVectorField(MLP(2, 2, hidden=8).double(),
                                     InvariantNet(2, 1, hidden=8).double())
        return field, fit_dynamics(field, data, epochs=4, batch_size=11, progress=False,
                                   train_invariants=True, checkpoint=ck)
    ae = Autoencoder(2, 1, hidden=(4,)).double()
    return ae, fit_autoencoder(ae, data, epochs=4, batch_size=9, progress=False,
                               checkpoint=ck)


STEPS_PER_EPOCH = {"invariants": 2, "refine": 4, "dynamics": 4, "autoencoder": 5}


@pytest.mark.parametrize("name", list(STEPS_PER_EPOCH))
def test_a_resumed_run_ends_as_an_uninterrupted_one(tmp_path, monkeypatch, name):
    torch.set_num_threads(1)
    whole, whole_hist = _with_checkpoint(name, None)
    ck = Checkpoint(tmp_path / "run.safetensors", every=2)
    with monkeypatch.context() as m:
        _interrupted(m, 3 * STEPS_PER_EPOCH[name])  # killed in epoch 4, saved after 2
        with pytest.raises(_Interrupt):
            _with_checkpoint(name, ck)
    resumed, resumed_hist = _with_checkpoint(name, ck)
    for (key, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(),
                           strict=True):
        assert torch.equal(a, b), (name, key)
    assert resumed_hist == whole_hist


def test_a_checkpoint_of_another_training_is_refused(tmp_path):
    ck = Checkpoint(tmp_path / "run.safetensors")
    _with_checkpoint("autoencoder", ck)
    ae = Autoencoder(2, 1, hidden=(4,)).double()
    with pytest.raises(ValueError, match=r"written by another training: its batch_size is 9"):
        fit_autoencoder(ae, _data(), epochs=4, batch_size=8, progress=False, checkpoint=ck)


def test_checkpoint_arguments_are_checked():
    with pytest.raises(ValueError, match="`every` must be a positive int"):
        Checkpoint("x.safetensors", every=0)
    with pytest.raises(TypeError, match="`checkpoint` must be a Checkpoint"):
        fit_autoencoder(Autoencoder(2, 1, hidden=(4,)).double(), _data(), epochs=1,
                        progress=False, checkpoint="x.safetensors")
