"""A mean-field ELBO that also reports its reconstruction and KL parts, from the same traces."""

from __future__ import annotations

from typing import Any

import torch
from pyro.distributions.kl import kl_divergence
from pyro.distributions.util import scale_and_mask
from pyro.infer import TraceMeanField_ELBO

from ..module.base import cell_plate_dim

#: names of the parts, in the order of :attr:`SplitTraceMeanField_ELBO.last_terms`
TERM_NAMES = ("reconstruction_loss", "kl_local", "kl_global")


def _plate_scale(site: dict) -> float:
    """The subsampling factor of a site's plates (``full_size / size``), without any ``poutine.scale``."""
    scale = 1.0
    for frame in site["cond_indep_stack"]:
        if frame.full_size is not None and frame.size:
            scale *= frame.full_size / frame.size
    return scale


def _masked_sum(value: torch.Tensor | float, site: dict) -> torch.Tensor | float:
    """``value`` scaled by the plates alone (no KL warm-up or other scale) and masked, then summed."""
    out = scale_and_mask(value, _plate_scale(site), site["mask"])
    return out.sum() if torch.is_tensor(out) else out


class SplitTraceMeanField_ELBO(TraceMeanField_ELBO):  # noqa: N801 (Pyro's naming)
    """:class:`~pyro.infer.TraceMeanField_ELBO` that keeps the parts of its last estimate.

    The loss and its gradient are exactly those of ``TraceMeanField_ELBO`` (analytic KL where one is
    registered, the sampled ``log q - log p`` otherwise). Besides, every call stores in :attr:`last_terms`
    the detached reconstruction loss (``-log p(x | z)`` of the observed sites), the KL divergence of the
    latent sites inside the ``"cells"`` plate (``kl_local``) and of those outside it (``kl_global``), each
    summed over the minibatch and scaled by the plates to the whole data set, but *without* the KL warm-up or
    any other ``poutine.scale``: they add up to the negative ELBO of the model as written. They are read
    from quantities the loss computes anyway (one extra masked sum per site, on the device), so the
    training step takes no extra pass and no host synchronisation.

    It also returns the loss without the two host reads Pyro's ``differentiable_loss`` makes per call
    (``torch_item`` and the NaN warning), which stall an accelerator: non-finite losses are caught by the
    :class:`~pyrovi.train.TrainingPlan`'s own check before the optimiser step.

    Examples
    --------
    >>> vae = pyrovi.module.VAE(n_input=20)
    >>> x, idx = torch.poisson(torch.full((8, 20), 2.0)), torch.arange(8)
    >>> elbo = SplitTraceMeanField_ELBO()
    >>> loss = elbo.differentiable_loss(vae.model, vae.guide, x, indices=idx, n_obs=1000)
    >>> reconstruction_loss, kl_local, kl_global = elbo.last_terms
    >>> bool(torch.isclose(loss, reconstruction_loss + kl_local + kl_global))  # the terms add up to the loss
    True
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.last_terms: tuple[torch.Tensor | float, ...] | None = None

    @classmethod
    def from_elbo(cls, elbo: TraceMeanField_ELBO) -> SplitTraceMeanField_ELBO:
        """The same estimator (particles, plate nesting...) as a plain ``TraceMeanField_ELBO``."""
        split = cls.__new__(cls)
        split.__dict__.update(elbo.__dict__)
        split.last_terms = None
        return split

    def differentiable_loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        loss: torch.Tensor | float = 0.0
        parts: list[torch.Tensor | float] = [0.0, 0.0, 0.0]
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            particle, terms = self._split_particle(model_trace, guide_trace)
            loss = loss + particle / self.num_particles
            parts = [p + t / self.num_particles for p, t in zip(parts, terms)]
        self.last_terms = tuple(p.detach() if torch.is_tensor(p) else p for p in parts)
        return loss

    def _differentiable_loss_particle(self, model_trace: Any, guide_trace: Any) -> tuple[Any, Any]:
        surrogate, _ = self._split_particle(model_trace, guide_trace)
        return float(surrogate), surrogate

    def _split_particle(self, model_trace: Any, guide_trace: Any) -> tuple[torch.Tensor, list]:
        """``(-elbo, [reconstruction_loss, kl_local, kl_global])`` of one particle."""
        elbo: torch.Tensor | float = 0.0
        reconstruction: torch.Tensor | float = 0.0
        kl_local: torch.Tensor | float = 0.0
        kl_global: torch.Tensor | float = 0.0
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample":
                continue
            if site["is_observed"]:
                elbo = elbo + site["log_prob_sum"]
                reconstruction = reconstruction - _masked_sum(site["unscaled_log_prob"], site)
                continue
            guide_site = guide_trace.nodes[name]
            try:
                kl = kl_divergence(guide_site["fn"], site["fn"])
            except NotImplementedError:
                # no closed form: the sampled log q - log p, as TraceMeanField_ELBO does
                entropy_term = guide_site["score_parts"].entropy_term
                elbo = elbo + site["log_prob_sum"] - entropy_term.sum()
                kl = guide_site["unscaled_log_prob"] - site["unscaled_log_prob"]
            else:
                scaled = scale_and_mask(kl, scale=guide_site["scale"], mask=guide_site["mask"])
                if torch.is_tensor(scaled):
                    elbo = elbo - scaled.sum()
                else:
                    elbo = elbo - scaled * torch.Size(guide_site["fn"].batch_shape).numel()
            part = _masked_sum(kl, guide_site)
            if torch.is_tensor(kl) and kl.dim() == 0 and guide_site["fn"].batch_shape:
                part = part * torch.Size(guide_site["fn"].batch_shape).numel()
            if cell_plate_dim(site) is None:
                kl_global = kl_global + part
            else:
                kl_local = kl_local + part
        for name, guide_site in guide_trace.nodes.items():
            # auxiliary guide sites (absent from the model) count as entropy, as in Pyro
            if guide_site["type"] == "sample" and name not in model_trace.nodes:
                elbo = elbo - guide_site["score_parts"].entropy_term.sum()
                part = _masked_sum(guide_site["unscaled_log_prob"], guide_site)
                if cell_plate_dim(guide_site) is None:
                    kl_global = kl_global + part
                else:
                    kl_local = kl_local + part
        if not torch.is_tensor(elbo):
            elbo = torch.as_tensor(elbo)
        return -elbo, [reconstruction, kl_local, kl_global]
