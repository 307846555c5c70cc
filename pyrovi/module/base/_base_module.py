"""The contract every pyrovi module fulfils: a Pyro model/guide pair fed by loader minibatches."""

from __future__ import annotations

from typing import Any

import torch
from pyro.nn import PyroModule


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
    A subclass reads like its generative story::

        class Tiny(BaseModuleClass):
            def model(self, x, indices=None, n_obs=None, kl_weight=1.0):
                with pyro.plate("cells", n_obs or len(x), subsample=indices):
                    ...

            @staticmethod
            def _get_fn_args_from_batch(batch):
                return (batch["X"],), {"indices": batch["indices"]}
    """

    #: Names of the per-cell latent sites (those inside the ``"cells"`` plate) that KL warm-up scales.
    local_latent_sites: tuple[str, ...] = ()
    #: Whether reconstruction/KL terms can be read per cell off a guide and a replayed model trace
    #: (False for models that enumerate a latent in the model, which the guide then lacks).
    per_cell_terms: bool = True

    def model(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def guide(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def _get_fn_args_from_batch(batch: dict[str, torch.Tensor]) -> tuple[tuple, dict[str, Any]]:
        """Map a loader minibatch to the ``(args, kwargs)`` of :meth:`model` and :meth:`guide`."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        """The device of the module's parameters (CPU for a module without any)."""
        for tensor in self.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return torch.device("cpu")
