"""scVI's decoder: latent state and covariates to normalised expression, dispersion and dropout."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._fc_layers import FCLayers


class DecoderSCVI(nn.Module):
    """Decode ``z`` into the parameters of the count likelihood.

    Returns three heads computed from one shared hidden representation:

    - ``rho``: normalised expression, a softmax over genes (each row sums to one);
    - ``log_theta``: log inverse dispersion per cell and gene (used when dispersion is ``"gene-cell"``);
    - ``zi_logits``: logits of the zero-inflation gate.

    Parameters
    ----------
    n_input
        Dimension of the latent variable.
    n_output
        Number of genes.
    n_cat_list, n_cont
        Covariates injected into the network (batch first, then extra categorical covariates).
    n_layers, n_hidden, use_batch_norm, use_layer_norm, inject_covariates
        See :class:`FCLayers`. The decoder uses no dropout.

    Examples
    --------
    >>> dec = DecoderSCVI(n_input=10, n_output=100, n_cat_list=[2])
    >>> rho, log_theta, zi_logits = dec(torch.randn(4, 10), torch.tensor([0, 1, 1, 0]))
    >>> torch.allclose(rho.sum(-1), torch.ones(4))
    True
    """

    def __init__(
        self,
        n_input: int,
        n_output: int,
        n_cat_list: Sequence[int] | None = None,
        n_cont: int = 0,
        n_layers: int = 1,
        n_hidden: int = 128,
        use_batch_norm: bool = True,
        use_layer_norm: bool = False,
        inject_covariates: bool = True,
    ):
        super().__init__()
        self.px_decoder = FCLayers(
            n_input,
            n_hidden,
            n_cat_list=n_cat_list,
            n_cont=n_cont,
            n_layers=n_layers,
            n_hidden=n_hidden,
            dropout_rate=0.0,
            use_batch_norm=use_batch_norm,
            use_layer_norm=use_layer_norm,
            inject_covariates=inject_covariates,
        )
        self.rho_logits = nn.Linear(n_hidden, n_output)
        self.log_theta = nn.Linear(n_hidden, n_output)
        self.zi_logits = nn.Linear(n_hidden, n_output)

    def forward(
        self, z: torch.Tensor, *cat_codes: torch.Tensor, cont: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(rho, log_theta, zi_logits)``, each ``(..., n_genes)``."""
        h = self.px_decoder(z, *cat_codes, cont=cont)
        rho = torch.softmax(self.rho_logits(h), dim=-1)
        return rho, self.log_theta(h), self.zi_logits(h)
