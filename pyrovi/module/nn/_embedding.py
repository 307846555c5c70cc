"""A learned table of vectors, one per category (e.g. per batch), that grows for query data."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def _freeze_rows(n_frozen: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """A gradient hook that zeroes the gradient of the first ``n_frozen`` rows."""

    def hook(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[:n_frozen] = 0.0
        return grad

    return hook


class Embedding(nn.Embedding):
    """An ``nn.Embedding`` of categories: row ``k`` is the learned vector of category ``k``.

    It replaces the one-hot encoding of a covariate when a model is built with
    ``batch_representation="embedding"``: the networks see a dense ``embedding_dim`` vector per batch
    instead of ``n_batch`` indicator columns. New categories (query batches) are new rows,
    added by :meth:`extend`.

    Parameters
    ----------
    num_embeddings
        Number of categories.
    embedding_dim
        Length of each category's vector (default 5, as scvi-tools).
    **kwargs
        Further arguments of :class:`torch.nn.Embedding` (``max_norm``, ...).

    Examples
    --------
    >>> emb = Embedding(3, 5)
    >>> tuple(emb(torch.tensor([0, 2, 2])).shape)
    (3, 5)
    """

    def __init__(self, num_embeddings: int, embedding_dim: int = 5, **kwargs: Any):
        super().__init__(num_embeddings, embedding_dim, **kwargs)

    @classmethod
    def extend(cls, embedding: Embedding, init: int | list[int], freeze_prev: bool = True) -> Embedding:
        """A new embedding with the rows of ``embedding`` followed by new ones (``embedding`` is unchanged).

        Parameters
        ----------
        embedding
            The embedding to extend.
        init
            Number of new rows drawn from a standard normal, or the indices of existing rows to copy.
        freeze_prev
            Zero the gradient of the existing rows, so that training changes only the new ones.

        Examples
        --------
        >>> emb = Embedding.extend(Embedding(2, 4), init=1)
        >>> emb.num_embeddings
        3
        """
        if isinstance(init, bool) or not isinstance(init, (int, list)):
            raise TypeError(f"init must be a number of new rows or a list of row indices, got {init!r}.")
        if isinstance(init, int):
            if init <= 0:
                raise ValueError(f"init must add at least one row, got {init}.")
            new = torch.randn(init, embedding.embedding_dim, device=embedding.weight.device)
        else:
            new = embedding.weight.detach()[init].clone()
        weight = torch.cat([embedding.weight.detach().clone(), new], dim=0)
        out = cls(weight.shape[0], weight.shape[1], _weight=weight, padding_idx=embedding.padding_idx,
                  max_norm=embedding.max_norm, norm_type=embedding.norm_type,
                  scale_grad_by_freq=embedding.scale_grad_by_freq, sparse=embedding.sparse)
        if freeze_prev:
            out.weight.register_hook(_freeze_rows(embedding.num_embeddings))
        return out
