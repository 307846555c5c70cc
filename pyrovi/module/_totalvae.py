"""totalVI (Gayoso et al. 2021): RNA and surface proteins of the same cells, as a Pyro model/guide pair.

Generative model for cell :math:`n`, gene :math:`g`, protein :math:`t`, batch :math:`s_n`:

.. math::

    z_n &\\sim p(z) \\quad (\\mathcal{N}(0, I) \\text{ by default}) \\\\
    x_{ng} &\\sim \\mathrm{NB}(\\ell_n \\rho_{ng}, \\theta_g), \\quad
        \\rho_n = \\mathrm{softmax}(f_\\rho(z_n, s_n)) \\\\
    \\log \\beta_{nt} &\\sim \\mathcal{N}(c_{t s_n}, d_{t s_n}^2) \\quad\\text{(protein background)} \\\\
    \\alpha_{nt} &= 1 + \\mathrm{softplus}(f_\\alpha(z_n, s_n)) \\ge 1 \\quad\\text{(foreground scaling)} \\\\
    \\pi_{nt} &= \\mathrm{sigmoid}(f_\\pi(z_n, s_n)) \\quad\\text{(probability of background)} \\\\
    y_{nt} &\\sim \\pi_{nt}\\, \\mathrm{NB}(\\beta_{nt}, \\phi_t)
        + (1 - \\pi_{nt})\\, \\mathrm{NB}(\\alpha_{nt} \\beta_{nt}, \\phi_t)

with :math:`c, d` learnable and initialised from the data (the lower component of a two-component
Gaussian mixture of each protein's log counts per batch). Proteins absent from a batch (all zero there)
are masked: their likelihood terms and the KL of their background are dropped, never fit as zeros.

Guide: :math:`q(z_n \\mid x_n, y_n, s_n)` and :math:`q(\\log \\ell_n \\mid x_n, y_n)` (latent library) from
an encoder of the concatenated log counts; :math:`q(\\log \\beta_n \\mid z_n, s_n)` from a network of the
guide applied to the sampled :math:`z_n`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from torch import nn

from .._constants import REGISTRY_KEYS
from .base import CELL_PLATE, BaseModuleClass, GlobalGuide, make_global_guide, materialise_guide
from .distributions import COUNT_LIKELIHOODS, negative_binomial
from .nn import Encoder, FCLayers
from .priors import LatentPrior, StandardNormal, check_latent_prior

Objective = Literal["elbo", "scvi-tools"]


def protein_mixture(
    background: torch.Tensor, foreground: torch.Tensor, phi: torch.Tensor, background_logits: torch.Tensor
) -> dist.MixtureSameFamily:
    """``pi NB(background, phi) + (1 - pi) NB(foreground, phi)`` with ``pi = sigmoid(background_logits)``.

    Examples
    --------
    >>> d = protein_mixture(torch.tensor([5.0]), torch.tensor([50.0]), torch.tensor([10.0]), torch.tensor([0.0]))
    >>> round(float(d.mean), 3)
    27.5
    """
    logits = torch.stack([background_logits, torch.zeros_like(background_logits)], -1)
    means = torch.stack([background.expand_as(foreground), foreground], -1)
    components = negative_binomial(means, phi.unsqueeze(-1).expand_as(means))
    return dist.MixtureSameFamily(dist.Categorical(logits=logits), components)


class TOTALVAE(BaseModuleClass):
    """The totalVI generative model of RNA and protein counts and its amortized guide.

    Parameters
    ----------
    n_input_genes, n_input_proteins
        Numbers of genes and proteins.
    n_batch, n_labels
        Numbers of batches and labels.
    n_hidden, n_latent
        Width of hidden layers and latent dimension (totalVI: 256, 20).
    n_layers_encoder, n_layers_decoder
        Depths of the encoder and decoders (2 and 1).
    n_continuous_cov, n_cats_per_cov
        Extra covariates injected into the decoders.
    dropout_rate_encoder, dropout_rate_decoder
        Dropout rates (0.2 each).
    gene_dispersion
        ``"gene"`` or ``"gene-batch"``.
    protein_dispersion
        ``"protein"`` or ``"protein-batch"``.
    gene_likelihood
        ``"nb"`` or ``"zinb"``.
    use_observed_lib_size
        Observed RNA library size (otherwise latent with a per-batch log-normal prior).
    library_log_means, library_log_vars
        Per-batch prior of the latent log library.
    protein_background_mean, protein_background_scale
        ``(n_batch, n_proteins)`` initial values of the background prior's location and scale.
    protein_batch_mask
        ``(n_batch, n_proteins)`` booleans: False where a protein is missing from a batch.
    prior, global_guide
        Prior of ``z`` and guide of global sites, as for :class:`~pyrovi.module.VAE`.
    objective
        ``"elbo"``: the evidence lower bound, with KL warm-up on the local latents (``z``, library,
        protein background). ``"scvi-tools"``: scvi-tools' objective, in which the library KL is not
        warmed up and the protein log-likelihood is scaled by the warm-up weight together with the KL
        terms of ``z`` and the background; after warm-up both objectives are the same ELBO.

    Examples
    --------
    >>> module = TOTALVAE(n_input_genes=100, n_input_proteins=10)  # doctest: +SKIP
    """

    local_latent_sites = ("z", "log_library", "log_protein_background")
    #: guide sites redrawn under a query's transform_batch: q(log beta | z, batch) depends on the batch,
    #: so decoding "as if from batch b" needs the background of batch b (scvi-tools recomputes it too)
    transform_batch_guide_sites = ("log_protein_background",)

    def __init__(
        self,
        n_input_genes: int,
        n_input_proteins: int,
        n_batch: int = 1,
        n_labels: int = 1,
        n_hidden: int = 256,
        n_latent: int = 20,
        n_layers_encoder: int = 2,
        n_layers_decoder: int = 1,
        n_continuous_cov: int = 0,
        n_cats_per_cov: Sequence[int] | None = None,
        dropout_rate_encoder: float = 0.2,
        dropout_rate_decoder: float = 0.2,
        gene_dispersion: Literal["gene", "gene-batch"] = "gene",
        protein_dispersion: Literal["protein", "protein-batch"] = "protein",
        gene_likelihood: Literal["nb", "zinb"] = "nb",
        use_observed_lib_size: bool = True,
        library_log_means: np.ndarray | None = None,
        library_log_vars: np.ndarray | None = None,
        protein_background_mean: np.ndarray | None = None,
        protein_background_scale: np.ndarray | None = None,
        protein_batch_mask: np.ndarray | None = None,
        prior: LatentPrior | None = None,
        global_guide: GlobalGuide = "normal",
        objective: Objective = "elbo",
    ):
        super().__init__()
        if gene_dispersion not in ("gene", "gene-batch"):
            raise ValueError(f"gene_dispersion={gene_dispersion!r}: use 'gene' or 'gene-batch'.")
        if protein_dispersion not in ("protein", "protein-batch"):
            raise ValueError(f"protein_dispersion={protein_dispersion!r}: use 'protein' or 'protein-batch'.")
        if gene_likelihood not in ("nb", "zinb"):
            raise ValueError(f"gene_likelihood={gene_likelihood!r}: use 'nb' or 'zinb'.")
        if objective not in ("elbo", "scvi-tools"):
            raise ValueError(f"objective={objective!r}: use 'elbo' or 'scvi-tools'.")
        self.n_input_genes, self.n_input_proteins = n_input_genes, n_input_proteins
        self.n_input = n_input_genes + n_input_proteins  # the encoder's input width
        self.n_batch, self.n_labels, self.n_latent = n_batch, n_labels, n_latent
        self.gene_dispersion, self.protein_dispersion = gene_dispersion, protein_dispersion
        self.gene_likelihood, self.objective = gene_likelihood, objective
        self.use_observed_lib_size = use_observed_lib_size
        self.n_continuous_cov = n_continuous_cov
        self.n_cats_per_cov = list(n_cats_per_cov or [])

        if not use_observed_lib_size:
            if library_log_means is None or library_log_vars is None:
                raise ValueError("a latent library needs library_log_means and library_log_vars.")
            self.register_buffer("library_log_means", torch.as_tensor(library_log_means).float().reshape(-1))
            self.register_buffer("library_log_vars", torch.as_tensor(library_log_vars).float().reshape(-1))

        shape = (n_batch, n_input_proteins)
        mean = np.zeros(shape) if protein_background_mean is None else protein_background_mean
        scale = np.full(shape, 0.5) if protein_background_scale is None else protein_background_scale
        # learnable prior of the background, initialised from the data (empirical Bayes, as totalVI)
        self.background_prior_loc = nn.Parameter(torch.as_tensor(mean, dtype=torch.float32).reshape(shape))
        self.background_prior_log_scale = nn.Parameter(
            torch.as_tensor(scale, dtype=torch.float32).reshape(shape).clamp_min(1e-3).log()
        )
        mask = np.ones(shape, dtype=bool) if protein_batch_mask is None else np.asarray(protein_batch_mask, bool)
        self.register_buffer("protein_batch_mask", torch.as_tensor(mask).reshape(shape))

        self.log_theta = nn.Parameter(torch.randn((n_input_genes,) if gene_dispersion == "gene" else (n_batch, n_input_genes)))
        self.log_phi = nn.Parameter(
            2 * torch.rand((n_input_proteins,) if protein_dispersion == "protein" else shape)
        )

        cats = [n_batch, *self.n_cats_per_cov]
        self.z_encoder = Encoder(
            self.n_input, n_latent, n_cat_list=cats, n_cont=n_continuous_cov, n_layers=n_layers_encoder,
            n_hidden=n_hidden, dropout_rate=dropout_rate_encoder,
        )
        if not use_observed_lib_size:
            self.l_encoder = Encoder(
                self.n_input, 1, n_cat_list=cats, n_cont=n_continuous_cov, n_layers=1, n_hidden=n_hidden,
                dropout_rate=dropout_rate_encoder,
            )

        def hidden() -> FCLayers:
            return FCLayers(
                n_latent, n_hidden, n_cat_list=cats, n_cont=n_continuous_cov, n_layers=n_layers_decoder,
                n_hidden=n_hidden, dropout_rate=dropout_rate_decoder,
            )

        self.rna_decoder = hidden()
        self.rho_logits = nn.Linear(n_hidden, n_input_genes)
        self.zi_logits = nn.Linear(n_hidden, n_input_genes)
        self.protein_decoder = hidden()
        self.foreground_head = nn.Linear(n_hidden, n_input_proteins)
        self.mixing_head = nn.Linear(n_hidden, n_input_proteins)
        # the guide's network for q(log beta | z, batch)
        self.background_encoder = hidden()
        self.background_loc = nn.Linear(n_hidden, n_input_proteins)
        self.background_log_scale = nn.Linear(n_hidden, n_input_proteins)

        self.prior = prior if prior is not None else StandardNormal()
        self.prior.setup(n_latent, self)
        self.global_sites = tuple(check_latent_prior(self.prior, n_latent, self._example_covariates(2)))
        self.global_guide = make_global_guide(self._global_model, self.global_sites, global_guide)
        materialise_guide(self.global_guide)

    # ----------------------------------------------------------------------------------------------

    @staticmethod
    def _get_fn_args_from_batch(batch: dict[str, torch.Tensor]) -> tuple[tuple, dict]:
        data = (batch[REGISTRY_KEYS.X_KEY], batch[REGISTRY_KEYS.PROTEIN_EXP_KEY])
        return data, BaseModuleClass._covariate_kwargs(batch)

    def model(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_index: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        cat_covs: tuple[torch.Tensor, ...] = (),
        cont_covs: torch.Tensor | None = None,
        size_factor: torch.Tensor | None = None,
        indices: torch.Tensor | None = None,
        n_obs: int | None = None,
        kl_weight: float = 1.0,
    ) -> None:
        """p(x, y, z, l, beta): the totalVI generative process; ``x`` (RNA) and ``y`` (proteins) observed."""
        batch_index = self._batch_codes(batch_index, x)
        p_z = self.prior(x.shape[0], batch_index=batch_index, labels=labels, cat_covs=cat_covs, cont_covs=cont_covs)
        library_scale, protein_scale = self._objective_scales(kl_weight)
        with pyro.plate(CELL_PLATE, n_obs if n_obs is not None else x.shape[0], subsample=indices, dim=-1):
            measured = self.protein_batch_mask[batch_index]
            with poutine.scale(scale=kl_weight):
                z = pyro.sample("z", p_z)
                # masked like the guide's site, so the background KL of proteins missing from the batch is
                # dropped (as in scvi-tools): no count informs them, and their posterior is the prior
                log_beta = pyro.sample(
                    "log_protein_background",
                    dist.Normal(
                        self.background_prior_loc[batch_index], self.background_prior_log_scale[batch_index].exp()
                    )
                    .mask(measured)
                    .to_event(1),
                )
            with poutine.scale(scale=library_scale):
                library = self._library(x, size_factor, batch_index)

            # RNA
            h = self.rna_decoder(z, batch_index, *cat_covs, cont=cont_covs)
            rho = torch.softmax(self.rho_logits(h), -1)
            pyro.deterministic("rho", rho, event_dim=1)
            theta = self.log_theta.exp() if self.gene_dispersion == "gene" else self.log_theta[batch_index].exp()
            rna = COUNT_LIKELIHOODS[self.gene_likelihood](library * rho, theta, self.zi_logits(h))
            pyro.sample("x", rna.to_event(1), obs=x)

            # proteins: a background/foreground mixture, masked where a protein is missing from the batch
            h = self.protein_decoder(z, batch_index, *cat_covs, cont=cont_covs)
            background = log_beta.exp()
            foreground = background * (1.0 + F.softplus(self.foreground_head(h)) + 1e-8)
            mixing_logits = self.mixing_head(h)
            pyro.deterministic("protein_background_rate", background, event_dim=1)
            pyro.deterministic("protein_foreground_rate", foreground, event_dim=1)
            pyro.deterministic("protein_background_logits", mixing_logits, event_dim=1)
            phi = self.log_phi.exp() if self.protein_dispersion == "protein" else self.log_phi[batch_index].exp()
            proteins = protein_mixture(background, foreground, phi.expand_as(foreground), mixing_logits)
            with poutine.scale(scale=protein_scale):
                pyro.sample("y", proteins.mask(measured).to_event(1), obs=y)

    def guide(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_index: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        cat_covs: tuple[torch.Tensor, ...] = (),
        cont_covs: torch.Tensor | None = None,
        size_factor: torch.Tensor | None = None,
        indices: torch.Tensor | None = None,
        n_obs: int | None = None,
        kl_weight: float = 1.0,
    ) -> None:
        """q(z, l, beta | x, y): encoders of the joint log counts, and q(log beta | z, batch)."""
        batch_index = self._batch_codes(batch_index, x)
        if self.global_guide is not None:
            self.global_guide()
        library_scale, _ = self._objective_scales(kl_weight)
        # a protein missing from the cell's batch is hidden from the encoder too: it must not inform q
        measured = self.protein_batch_mask[batch_index]
        xy = torch.cat([x, y * measured], -1)
        with pyro.plate(CELL_PLATE, n_obs if n_obs is not None else x.shape[0], subsample=indices, dim=-1):
            with poutine.scale(scale=kl_weight):
                z_loc, z_scale = self.z_encoder(xy, batch_index, *cat_covs, cont=cont_covs)
                z = pyro.sample("z", dist.Normal(z_loc, z_scale).to_event(1))
                h = self.background_encoder(z, batch_index, *cat_covs, cont=cont_covs)
                scale = F.softplus(self.background_log_scale(h)) + 1e-4
                # the same mask as the model's site: a masked pair has a KL over measured proteins only
                background = dist.Normal(self.background_loc(h), scale).mask(measured)
                pyro.sample("log_protein_background", background.to_event(1))
            if not self.use_observed_lib_size:
                with poutine.scale(scale=library_scale):
                    l_loc, l_scale = self.l_encoder(xy, batch_index, *cat_covs, cont=cont_covs)
                    pyro.sample("log_library", dist.Normal(l_loc, l_scale).to_event(1))

    # ----------------------------------------------------------------------------------------------

    def _objective_scales(self, kl_weight: float) -> tuple[float, float]:
        """Scales of the library KL and of the protein likelihood under each objective."""
        if self.objective == "scvi-tools":
            return 1.0, kl_weight
        return kl_weight, 1.0

    def _library(self, x: torch.Tensor, size_factor: torch.Tensor | None, batch_index: torch.Tensor) -> torch.Tensor:
        if self.use_observed_lib_size:
            library = size_factor if size_factor is not None else x.sum(-1)
            return library.reshape(-1, 1)
        loc = self.library_log_means[batch_index].unsqueeze(-1)
        scale = self.library_log_vars[batch_index].sqrt().unsqueeze(-1)
        return pyro.sample("log_library", dist.Normal(loc, scale).to_event(1)).exp()

    def _global_model(self) -> None:
        self.prior(2, **self._example_covariates(2, self.device))
