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

    A head the model does not use is not built (its output is ``None``): each is a ``n_hidden x n_genes``
    layer, a sizeable share of a training step, and an unused parameter would also stop DDP, which
    requires every parameter to receive a gradient.

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
    dispersion_head, zi_head
        Build the ``log_theta`` and ``zi_logits`` heads.

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
        dispersion_head: bool = True,
        zi_head: bool = True,
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
        self.log_theta = nn.Linear(n_hidden, n_output) if dispersion_head else None
        self.zi_logits = nn.Linear(n_hidden, n_output) if zi_head else None

    def forward(
        self, z: torch.Tensor, *cat_codes: torch.Tensor, cont: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Return ``(rho, log_theta, zi_logits)``, each ``(..., n_genes)`` (``None`` for a head not built)."""
        log_rho, log_theta, zi_logits = self.decode_log(z, *cat_codes, cont=cont)
        return log_rho.exp(), log_theta, zi_logits

    def decode_log(
        self, z: torch.Tensor, *cat_codes: torch.Tensor, cont: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """As :meth:`forward` with ``log rho`` (a log-softmax) in place of ``rho``.

        A count likelihood needs ``log(library * rho)``: taking it from the log-softmax is exact for tiny
        expression and saves the softmax-then-log passes of a training step.
        """
        h = self.px_decoder(z, *cat_codes, cont=cont)
        log_rho = torch.log_softmax(self.rho_logits(h), dim=-1)
        log_theta = self.log_theta(h) if self.log_theta is not None else None
        zi_logits = self.zi_logits(h) if self.zi_logits is not None else None
        return log_rho, log_theta, zi_logits
