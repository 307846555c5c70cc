"""The contract every pyrovi module fulfils: a Pyro model/guide pair fed by loader minibatches."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import torch
from pyro.nn import PyroModule

from ..._constants import REGISTRY_KEYS


class BaseModuleClass(PyroModule):
    """A Pyro model and its amortized guide, with the adapter from a minibatch to their arguments.

    Subclasses define :meth:`model` and :meth:`guide` with the same signature, and
    :meth:`_get_fn_args_from_batch`, which turns a loader minibatch (a dict of tensors keyed by
    registry keys) into that signature's ``(args, kwargs)``. Both functions must accept two keyword
    arguments set by the training plan:

    - ``n_obs``: the number of cells the minibatch was drawn from. Cells live in
      ``pyro.plate("cells", n_obs, subsample=indices)``, so the ELBO of a minibatch is an unbiased
      estimate of the full-data ELBO, whatever the batch size and however many processes share the data.
      ``None`` means "no scaling" (the minibatch is the data set), used by posterior queries.
    - ``kl_weight``: the KL warm-up factor, applied with ``poutine.scale`` to the local latent sites
      in the model and the guide alike.

    All parameters are attributes of the module (``pyro.settings`` has ``module_local_params=True``),
    so ``state_dict()`` is the whole fitted state and several modules coexist in one session.

    Examples
    --------
    A subclass reads like its generative story:

    >>> class Tiny(BaseModuleClass):
    ...     def model(self, x, indices=None, n_obs=None, kl_weight=1.0):
    ...         with pyro.plate("cells", n_obs or len(x), subsample=indices):
    ...             z = pyro.sample("z", dist.Normal(0.0, 1.0))
    ...             pyro.sample("x", dist.Poisson(z.exp()[:, None].expand(x.shape)).to_event(1), obs=x)
    ...
    ...     def guide(self, x, indices=None, n_obs=None, kl_weight=1.0):
    ...         with pyro.plate("cells", n_obs or len(x), subsample=indices):
    ...             pyro.sample("z", dist.Normal(x.mean(-1).log1p(), 0.1))
    ...
    ...     @staticmethod
    ...     def _get_fn_args_from_batch(batch):
    ...         return (batch["X"],), {"indices": batch["indices"]}
    >>> tiny = Tiny()
    >>> batch = {"X": torch.poisson(torch.full((4, 3), 2.0)), "indices": torch.arange(4)}
    >>> args, kwargs = tiny._get_fn_args_from_batch(batch)
    >>> loss = pyro.infer.Trace_ELBO().differentiable_loss(tiny.model, tiny.guide, *args, n_obs=100, **kwargs)
    >>> bool(torch.isfinite(loss))
    True
    """

    #: Names of the per-cell latent sites (those inside the ``"cells"`` plate) that KL warm-up scales.
    local_latent_sites: tuple[str, ...] = ()
    #: Whether reconstruction/KL terms can be read per cell off a guide and a replayed model trace
    #: (False for models that enumerate a latent in the model, which the guide then lacks).
    per_cell_terms: bool = True
    #: Registry keys the guide accepts as torch sparse CSR tensors (2-D, no sample dimensions). Queries
    #: that run the guide alone (e.g. the latent representation) then skip densifying those minibatches.
    sparse_guide_inputs: tuple[str, ...] = ()
    #: The observed sites of each modality (e.g. ``{"rna": ("x",), "protein": ("y",)}``): the sites an
    #: importance-sampled marginal likelihood of that modality scores (see :meth:`marginal_args`). The
    #: modality ``"joint"``, every observed site together, is always there and not listed.
    modality_sites: Mapping[str, tuple[str, ...]] = MappingProxyType({})
    #: Per-cell latent sites whose guide reads the cell's data only (no other latent's draw): a refined
    #: importance-sampling proposal (``compare(..., proposal="refined")``) may replace their distribution by a
    #: Gaussian optimised for the cell (:func:`~pyrovi.module.base.refine_proposal`).
    proposal_sites: tuple[str, ...] = ()

    def marginal_args(self, modality: str, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        """The arguments of :meth:`model` and :meth:`guide` under which ``modality`` is the only evidence.

        An observed site that is a leaf of the model (TOTALVI's proteins given ``z``) is marginalised by leaving
        its term out of the weights, so by default the arguments are unchanged. A module whose observed site
        conditions other latents (SCANVI's label) overrides this to hide that site's values.

        Examples
        --------
        >>> vae = pyrovi.module.VAE(n_input=5)
        >>> vae.marginal_args("rna", (torch.ones(2, 5),), {})[1]
        {}
        """
        return args, kwargs

    def model(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def guide(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def _get_fn_args_from_batch(batch: dict[str, torch.Tensor]) -> tuple[tuple, dict[str, Any]]:
        """Map a loader minibatch to the ``(args, kwargs)`` of :meth:`model` and :meth:`guide`."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------------
    # covariates, shared by the modules that read a cell's batch and covariates

    #: categories of each extra categorical covariate, and number of continuous covariates
    n_cats_per_cov: Sequence[int] = ()
    n_continuous_cov: int = 0

    @staticmethod
    def _covariate_kwargs(batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The keyword arguments every pyrovi model/guide takes from a minibatch besides its data."""
        cat_covs = batch.get(REGISTRY_KEYS.CAT_COVS_KEY)
        return {
            "batch_index": batch.get(REGISTRY_KEYS.BATCH_KEY),
            "labels": batch.get(REGISTRY_KEYS.LABELS_KEY),
            "cat_covs": tuple(cat_covs.unbind(-1)) if cat_covs is not None else (),
            "cont_covs": batch.get(REGISTRY_KEYS.CONT_COVS_KEY),
            "size_factor": batch.get(REGISTRY_KEYS.SIZE_FACTOR_KEY),
            "indices": batch.get(REGISTRY_KEYS.INDICES_KEY),
        }

    @staticmethod
    def _batch_codes(batch_index: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        """Batch codes as a flat long tensor; all zeros when the data have a single batch."""
        if batch_index is None:
            return torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        return batch_index.reshape(-1)

    def _example_covariates(self, n: int, device: torch.device | None = None) -> dict[str, Any]:
        """Covariates of ``n`` cells of the first category: to run a prior outside of training."""
        zeros = torch.zeros(n, dtype=torch.long, device=device)
        return {
            "batch_index": zeros,
            "labels": zeros,
            "cat_covs": tuple(zeros for _ in self.n_cats_per_cov),
            "cont_covs": torch.zeros(n, self.n_continuous_cov, device=device) if self.n_continuous_cov else None,
        }

    @property
    def device(self) -> torch.device:
        """The device of the module's parameters (CPU for a module without any)."""
        for tensor in self.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return torch.device("cpu")
