"""Fully connected blocks with covariate injection, the building brick of encoders and decoders."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _one_hot_covariates(
    categorical: Sequence[torch.Tensor], n_cat_list: Sequence[int], like: torch.Tensor
) -> list[torch.Tensor]:
    """One-hot encode integer codes (``(n_cells,)``), broadcast over the leading dims of ``like``."""
    out = []
    for codes, n_cat in zip(categorical, n_cat_list):
        if n_cat <= 1:  # a single category carries no information
            continue
        one_hot = F.one_hot(codes.reshape(-1).long(), n_cat).to(like.dtype)
        out.append(one_hot.expand(*like.shape[:-1], n_cat))
    return out


class FCLayers(nn.Module):
    """A stack of ``Linear -> norm -> activation -> dropout`` layers that sees covariates at every layer.

    Categorical covariates (batch, extra categorical covariates) are one-hot encoded and, with
    continuous covariates, concatenated to the input of each layer (``inject_covariates=True``) or of
    the first layer only. Inputs may carry leading sample dimensions: they are flattened for batch
    normalisation and restored afterwards.

    Parameters
    ----------
    n_in, n_out
        Input and output widths.
    n_cat_list
        Number of categories of each categorical covariate; covariates with one category are ignored.
    n_cont
        Number of continuous covariates.
    n_layers
        Number of layers (``n_layers - 1`` hidden layers of width ``n_hidden``).
    n_hidden
        Width of the hidden layers.
    dropout_rate
        Dropout probability after each layer (0 disables it).
    use_batch_norm, use_layer_norm
        Normalisation after each linear map.
    inject_covariates
        Concatenate covariates to every layer's input, not only the first.
    activation_fn
        Activation class.

    Examples
    --------
    >>> layers = FCLayers(20, 8, n_cat_list=[3], n_layers=2)
    >>> h = layers(torch.randn(5, 20), torch.tensor([0, 1, 2, 0, 1]))
    >>> tuple(h.shape)
    (5, 8)
    """

    def __init__(
        self,
        n_in: int,
        n_out: int,
        n_cat_list: Sequence[int] | None = None,
        n_cont: int = 0,
        n_layers: int = 1,
        n_hidden: int = 128,
        dropout_rate: float = 0.1,
        use_batch_norm: bool = True,
        use_layer_norm: bool = False,
        inject_covariates: bool = True,
        activation_fn: type[nn.Module] = nn.ReLU,
    ):
        super().__init__()
        self.n_cat_list = list(n_cat_list or [])
        self.n_cont = n_cont
        self.inject_covariates = inject_covariates
        n_cov = sum(n for n in self.n_cat_list if n > 1) + n_cont
        widths = [n_in] + [n_hidden] * (n_layers - 1) + [n_out]
        self.layers = nn.ModuleList()
        for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:])):
            with_cov = n_cov if (i == 0 or inject_covariates) else 0
            block = [nn.Linear(w_in + with_cov, w_out)]
            if use_batch_norm:
                # scVI's momentum and eps: slow running averages suit small minibatches.
                block.append(nn.BatchNorm1d(w_out, momentum=0.01, eps=1e-3))
            if use_layer_norm:
                block.append(nn.LayerNorm(w_out, elementwise_affine=False))
            block.append(activation_fn())
            if dropout_rate > 0:
                block.append(nn.Dropout(p=dropout_rate))
            self.layers.append(nn.Sequential(*block))

    def forward(
        self, x: torch.Tensor, *cat_codes: torch.Tensor, cont: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Apply the stack to ``x`` (``(..., n_in)``) with integer codes per categorical covariate."""
        covs = _one_hot_covariates(cat_codes, self.n_cat_list, x)
        if self.n_cont:
            covs.append(cont.to(x.dtype).expand(*x.shape[:-1], self.n_cont))
        lead = x.shape[:-1]
        h, first = x, 0
        if x.layout == torch.sparse_csr:
            h, first = self._sparse_first_layer(x, covs), 1
        for i, block in enumerate(self.layers[first:], start=first):
            if covs and (i == 0 or self.inject_covariates):
                h = torch.cat([h, *covs], dim=-1)
            h = block(h.reshape(-1, h.shape[-1])).reshape(*lead, -1)
        return h

    def _sparse_first_layer(self, x: torch.Tensor, covs: list[torch.Tensor]) -> torch.Tensor:
        """The first block on a sparse CSR ``x`` (cells x features), without densifying ``x``.

        ``x @ W.T`` is a weighted sum, per cell, of the weight columns of its non-zero features: exactly
        what ``embedding_bag`` computes from CSR's row offsets, column indices and values, reading only
        the weight rows of the non-zero features (cheaper than a sparse-dense ``addmm`` on the CPU; see
        ``benchmarks/README.md``). The covariates' columns of the weight multiply the (dense) covariates
        separately, which equals the product with the concatenated input.
        """
        if x.dim() != 2:
            raise ValueError(f"a sparse input must be a 2-D (cells x features) CSR tensor, got {x.dim()} dims.")
        block = self.layers[0]
        linear = block[0]
        n_x = x.shape[-1]
        h = F.embedding_bag(
            # embedding_bag reads whole weight rows: contiguous ones, not the strided rows of a transposed view
            x.col_indices(), linear.weight[:, :n_x].t().contiguous(), x.crow_indices(), mode="sum",
            per_sample_weights=x.values(), include_last_offset=True,
        ) + linear.bias
        if covs:
            h = h + torch.cat(covs, dim=-1) @ linear.weight[:, n_x:].t()
        return block[1:](h)
