"""Tests of the small networks: shapes, signatures, activations and errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from concernet_ode import MLP, Autoencoder, InvariantNet


def test_mlp_accepts_x_and_t_x(dtype):
    torch.manual_seed(0)
    mlp = MLP(3, 2).to(dtype)
    x = torch.randn(4, 5, 3, dtype=dtype)
    out = mlp(x)
    assert out.shape == (4, 5, 2) and out.dtype == dtype
    torch.testing.assert_close(mlp(0.0, x), out)


def test_mlp_layers_and_activation():
    mlp = MLP(2, 1, hidden=7, depth=3, activation="relu")
    linears = [m for m in mlp.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(2, 7), (7, 7), (7, 7), (7, 1)]
    assert sum(isinstance(m, nn.ReLU) for m in mlp.modules()) == 3
    assert sum(isinstance(m, nn.Softplus) for m in MLP(2, 1, activation=nn.Softplus).modules())


def test_invariant_net_shape():
    assert InvariantNet(4, 2)(torch.zeros(10, 4)).shape == (10, 2)


def test_autoencoder_shapes_and_layers():
    ae = Autoencoder(101, 9)
    x = torch.randn(3, 7, 101)
    z = ae.encode(x)
    assert z.shape == (3, 7, 9) and ae.decode(z).shape == x.shape and ae(x).shape == x.shape
    sizes = [(m.in_features, m.out_features) for m in ae.encoder if isinstance(m, nn.Linear)]
    assert sizes == [(101, 32), (32, 16), (16, 9)]


@pytest.mark.parametrize(("build", "exc", "match"), [
    (lambda: MLP(2, 2, activation="sigmoidish"), ValueError,
     r"`activation` must be one of \[.*'tanh'.*\] or an nn.Module class, got 'sigmoidish'"),
    (lambda: MLP(2, 2, activation=3), TypeError, r"`activation` must be a name or an nn.Module"),
    (lambda: MLP(0, 2), ValueError, r"`in_dim` must be a positive int, got 0"),
    (lambda: MLP(2, 2, hidden=2.5), ValueError, r"`hidden` must be a positive int, got 2.5"),
    (lambda: Autoencoder(10, 0), ValueError, r"`latent_dim` must be a positive int, got 0"),
])
def test_constructor_errors(build, exc, match):
    with pytest.raises(exc, match=match):
        build()


def test_wrong_input_width_is_named():
    with pytest.raises(ValueError, match=r"`x` must have last dimension 3, got shape \(2, 4\)"):
        MLP(3, 1)(torch.zeros(2, 4))
