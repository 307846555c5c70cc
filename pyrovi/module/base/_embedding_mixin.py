"""Learned category embeddings kept by a module under registry keys (e.g. one vector per batch)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..nn import Embedding


class EmbeddingModuleMixin:
    """Named :class:`~pyrovi.module.nn.Embedding` tables of a module, keyed by registry key.

    A module built with ``batch_representation="embedding"`` keeps its batch vectors here under
    ``"batch"``: ``module.get_embedding("batch").weight`` is the ``n_batch x embedding_dim`` table, saved
    with the module's weights (``_embeddings_dict.batch.weight``). Query mapping replaces a table by
    a longer one (:meth:`~pyrovi.module.nn.Embedding.extend`) with ``add_embedding(key, ..., overwrite=True)``.

    Examples
    --------
    >>> vae = pyrovi.module.VAE(n_input=50, n_batch=3, batch_representation="embedding")
    >>> vae.get_embedding("batch").weight.shape
    torch.Size([3, 5])
    """

    @property
    def embeddings_dict(self) -> nn.ModuleDict:
        """The module's embeddings by key (empty when it has none)."""
        if "_embeddings_dict" not in self._modules:
            self._embeddings_dict = nn.ModuleDict()
        return self._embeddings_dict

    def add_embedding(self, key: str, embedding: Embedding, overwrite: bool = False) -> None:
        """Keep ``embedding`` under ``key``; a ``KeyError`` if one exists there, unless ``overwrite``.

        Examples
        --------
        >>> module = pyrovi.module.VAE(n_input=50, n_batch=3, batch_representation="embedding")
        >>> module.add_embedding("batch", Embedding(4, 5), overwrite=True)
        >>> module.get_embedding("batch").num_embeddings
        4
        """
        if key in self.embeddings_dict and not overwrite:
            raise KeyError(f"the module already has an embedding {key!r}; pass overwrite=True to replace it.")
        self.embeddings_dict[key] = embedding

    def init_embedding(self, key: str, num_embeddings: int, embedding_dim: int = 5, **kwargs: Any) -> None:
        """Create an embedding of ``num_embeddings`` categories, ``embedding_dim`` values each, under ``key``.

        Examples
        --------
        >>> module = pyrovi.module.VAE(n_input=50, n_batch=3, batch_representation="embedding")
        >>> module.init_embedding("donor", 3, embedding_dim=8)
        >>> module.get_embedding("donor").weight.shape
        torch.Size([3, 8])
        """
        self.add_embedding(key, Embedding(num_embeddings, embedding_dim, **kwargs))

    def remove_embedding(self, key: str) -> None:
        """Delete the embedding under ``key`` (a ``KeyError`` if there is none).

        Examples
        --------
        >>> module = pyrovi.module.VAE(n_input=50, n_batch=3, batch_representation="embedding")
        >>> module.remove_embedding("batch")
        >>> "batch" in module.embeddings_dict
        False
        """
        if key not in self.embeddings_dict:
            raise KeyError(f"the module has no embedding {key!r} (it has {sorted(self.embeddings_dict)}).")
        del self.embeddings_dict[key]

    def get_embedding(self, key: str) -> Embedding:
        """The embedding under ``key`` (a ``KeyError`` if there is none).

        Examples
        --------
        >>> module = pyrovi.module.VAE(n_input=50, n_batch=3, batch_representation="embedding")
        >>> module.get_embedding("batch").embedding_dim
        5
        """
        if key not in self.embeddings_dict:
            raise KeyError(
                f"the module has no embedding {key!r} (it has {sorted(self.embeddings_dict)}); models built with "
                "batch_representation='embedding' have one under 'batch'."
            )
        return self.embeddings_dict[key]

    def compute_embedding(self, key: str, indices: torch.Tensor) -> torch.Tensor:
        """The vectors of the categories ``indices`` (any shape, flattened): ``(n, embedding_dim)``.

        Examples
        --------
        >>> module = pyrovi.module.VAE(n_input=50, n_batch=3, batch_representation="embedding")
        >>> module.compute_embedding("batch", torch.tensor([0, 1])).shape
        torch.Size([2, 5])
        """
        embedding = self.get_embedding(key)
        return embedding(indices.reshape(-1).long().to(embedding.weight.device))
