"""The neural building blocks: shapes, covariate injection and sample dimensions."""

import pytest
import torch

from pyrovi.module.nn import DecoderSCVI, Encoder, FCLayers


def test_fc_layers_inject_covariates_into_every_layer():
    layers = FCLayers(10, 4, n_cat_list=[3, 1], n_cont=2, n_layers=3, n_hidden=8)
    # a single-category covariate carries no information and is not one-hot encoded
    assert [block[0].in_features for block in layers.layers] == [10 + 3 + 2, 8 + 3 + 2, 8 + 3 + 2]
    h = layers(torch.randn(6, 10), torch.tensor([0, 1, 2, 0, 1, 2]), torch.zeros(6), cont=torch.randn(6, 2))
    assert h.shape == (6, 4)


def test_covariates_change_the_output():
    torch.manual_seed(0)
    layers = FCLayers(5, 3, n_cat_list=[2], dropout_rate=0.0, use_batch_norm=False).eval()
    x = torch.randn(4, 5)
    a = layers(x, torch.zeros(4, dtype=torch.long))
    b = layers(x, torch.ones(4, dtype=torch.long))
    assert not torch.allclose(a, b)


def test_leading_sample_dimensions_are_supported():
    dec = DecoderSCVI(n_input=3, n_output=7, n_cat_list=[2]).eval()
    z = torch.randn(5, 4, 3)  # (samples, cells, latent)
    rho, log_theta, zi = dec(z, torch.tensor([0, 1, 1, 0]))
    assert rho.shape == log_theta.shape == zi.shape == (5, 4, 7)
    assert torch.allclose(rho.sum(-1), torch.ones(5, 4))
    single = dec(z[2], torch.tensor([0, 1, 1, 0]))[0]
    assert torch.allclose(rho[2], single, atol=1e-6)


def test_encoder_scale_is_floored_and_input_is_log1p():
    torch.manual_seed(0)
    enc = Encoder(n_input=6, n_output=2, var_eps=1e-4).eval()
    x = torch.poisson(torch.full((3, 6), 4.0))
    loc, scale = enc(x)
    assert loc.shape == scale.shape == (3, 2)
    assert bool((scale >= 1e-2).all())  # sqrt(var_eps)
    raw = Encoder(n_input=6, n_output=2, log1p_input=False).eval()
    raw.load_state_dict(enc.state_dict())
    assert torch.allclose(raw(torch.log1p(x))[0], loc)


@pytest.mark.parametrize("n_cont", [0, 2], ids=["categorical", "categorical+continuous"])
@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_sparse_csr_input_equals_dense_input(n_cont):
    # the first layer of an encoder takes sparse counts as a sparse-dense product: same output
    torch.manual_seed(0)
    enc = Encoder(30, 4, n_cat_list=[3], n_cont=n_cont, n_layers=2, n_hidden=16).eval()
    x = torch.poisson(torch.rand(12, 30) * 2.0)
    x[x < 2] = 0.0
    x[5] = 0.0  # a cell with no counts: an empty bag, the bias alone
    codes = torch.tensor([0, 1, 2] * 4)
    cont = torch.randn(12, n_cont) if n_cont else None
    dense = enc(x, codes, cont=cont)
    sparse = enc(x.to_sparse_csr(), codes, cont=cont)
    for a, b in zip(dense, sparse):
        torch.testing.assert_close(a, b)
    # scipy's int32 indices as served by sequential queries
    csr = x.to_sparse_csr()
    int32 = torch.sparse_csr_tensor(
        csr.crow_indices().int(), csr.col_indices().int(), csr.values(), csr.shape, check_invariants=True
    )
    for a, b in zip(dense, enc(int32, codes, cont=cont)):
        torch.testing.assert_close(a, b)


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_sparse_first_layer_gradients_equal_dense_ones():
    # the embedding_bag form of x @ W.T must also train like the dense product
    torch.manual_seed(1)
    layers = FCLayers(25, 6, n_cat_list=[2], n_layers=1, dropout_rate=0.0).train()
    x = torch.poisson(torch.rand(9, 25) * 2.0)
    x[x < 2] = 0.0
    codes = torch.tensor([0, 1] * 4 + [0])
    grads = []
    for inp in (x, x.to_sparse_csr()):
        layers.zero_grad()
        (layers(inp, codes) * torch.arange(6.0)).sum().backward()
        grads.append([p.grad.clone() for p in layers.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
