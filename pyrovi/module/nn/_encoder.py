"""Amortized encoder: a cell's counts (and covariates) to the parameters of a Normal posterior."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

from ._fc_layers import FCLayers


def _log1p(x: torch.Tensor) -> torch.Tensor:
    """``log1p`` of dense or sparse CSR counts; for CSR, of the stored values alone (``log1p(0) = 0``)."""
    if x.layout == torch.sparse_csr:
        return torch.sparse_csr_tensor(
            x.crow_indices(), x.col_indices(), torch.log1p(x.values()), x.shape, check_invariants=False
        )
    return torch.log1p(x)


#: a positive activation by name, or any callable ``tensor -> positive tensor``
VarActivation = Union[str, Callable[[torch.Tensor], torch.Tensor], None]

#: the variance activations a model file can name (anything else is user code, asked for again at load)
VAR_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"exp": torch.exp, "softplus": F.softplus}


def var_activation_name(fn: VarActivation) -> VarActivation:
    """The name of a known variance activation (``"exp"``, ``"softplus"``), else ``fn`` itself.

    ``None``, ``torch.exp`` and ``"exp"`` are ``"exp"``; ``F.softplus`` and ``nn.Softplus()`` (default
    ``beta`` and ``threshold``) are ``"softplus"``. A name is what a saved model stores, so these survive
    save and load; another callable is returned as is.

    Examples
    --------
    >>> var_activation_name(torch.nn.Softplus())
    'softplus'
    >>> var_activation_name(None)
    'exp'
    """
    if fn is None:
        return "exp"
    if isinstance(fn, str):
        if fn not in VAR_ACTIVATIONS:
            raise ValueError(
                f"var_activation={fn!r} is not one of {sorted(VAR_ACTIVATIONS)}; pass one of these names or a "
                "callable mapping a tensor to positive values (e.g. torch.nn.Softplus())."
            )
        return fn
    for name, known in VAR_ACTIVATIONS.items():
        if fn is known:
            return name
    if type(fn) is nn.Softplus and fn.beta == 1 and fn.threshold == 20:
        return "softplus"
    if not callable(fn):
        raise TypeError(f"var_activation must be a name, a callable or None, got {fn!r}.")
    return fn


class Encoder(nn.Module):
    """Map ``log1p`` counts to the location and scale of a diagonal Normal, ``q(z | x)``.

    The scale is ``sqrt(a(v) + var_eps)`` with ``a`` the variance activation (``exp`` by default): the
    small variance floor keeps the posterior from collapsing to a point, as in scVI.

    Parameters
    ----------
    n_input
        Number of input features (genes).
    n_output
        Dimension of the latent variable.
    n_cat_list, n_cont
        Categorical covariates' category counts and number of continuous covariates fed to the network.
    n_layers, n_hidden, dropout_rate, use_batch_norm, use_layer_norm, inject_covariates
        See :class:`FCLayers`.
    var_eps
        Variance floor.
    log1p_input
        Transform counts with ``log1p`` before the network (scVI's default).
    var_activation
        Maps the network's variance output to positive values: ``"exp"`` (default, also ``None``),
        ``"softplus"`` (gentler for large outputs), or a callable such as ``torch.nn.Softplus()``.

    Examples
    --------
    >>> enc = Encoder(n_input=100, n_output=10)
    >>> loc, scale = enc(torch.poisson(torch.full((4, 100), 3.0)))
    >>> tuple(loc.shape), bool((scale > 0).all())
    ((4, 10), True)
    """

    def __init__(
        self,
        n_input: int,
        n_output: int,
        n_cat_list: Sequence[int] | None = None,
        n_cont: int = 0,
        n_layers: int = 1,
        n_hidden: int = 128,
        dropout_rate: float = 0.1,
        use_batch_norm: bool = True,
        use_layer_norm: bool = False,
        inject_covariates: bool = True,
        var_eps: float = 1e-4,
        log1p_input: bool = True,
        var_activation: VarActivation = None,
    ):
        super().__init__()
        name = var_activation_name(var_activation)
        self.var_activation = VAR_ACTIVATIONS[name] if isinstance(name, str) else name
        self.var_eps = var_eps
        self.log1p_input = log1p_input
        self.encoder = FCLayers(
            n_input,
            n_hidden,
            n_cat_list=n_cat_list,
            n_cont=n_cont,
            n_layers=n_layers,
            n_hidden=n_hidden,
            dropout_rate=dropout_rate,
            use_batch_norm=use_batch_norm,
            use_layer_norm=use_layer_norm,
            inject_covariates=inject_covariates,
        )
        self.loc = nn.Linear(n_hidden, n_output)
        self.log_var = nn.Linear(n_hidden, n_output)

    def forward(
        self, x: torch.Tensor, *cat_codes: torch.Tensor, cont: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(loc, scale)`` of the Normal posterior for each cell."""
        return self.params(self.hidden(x, *cat_codes, cont=cont))

    def hidden(self, x: torch.Tensor, *cat_codes: torch.Tensor, cont: torch.Tensor | None = None) -> torch.Tensor:
        """The last hidden layer ``h`` (what richer guide heads read, see :mod:`pyrovi.module.nn`)."""
        return self.encoder(_log1p(x) if self.log1p_input else x, *cat_codes, cont=cont)

    def params(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, scale)`` of the Normal from the hidden layer ``h``."""
        return self.loc(h), torch.sqrt(self.var_activation(self.log_var(h)) + self.var_eps)
