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

With ``latent_distribution="ln"``, :math:`z_n = T(u_n)` lies on the simplex, :math:`u_n` Gaussian and
:math:`T` the stick-breaking bijection (see :class:`~pyrovi.module.VAE`).

Guide: :math:`q(z_n \\mid x_n, y_n, s_n)` and :math:`q(\\log \\ell_n \\mid x_n, y_n)` (latent library) from
an encoder of the concatenated log counts; :math:`q(\\log \\beta_n \\mid z_n, s_n)` from a network of the
guide applied to the sampled :math:`z_n`. The guide of :math:`u_n` is mean-field Normal by default;
``guide="lowrank"`` or ``"flow"`` makes it a low-rank Gaussian or a conditional flow, as for
:class:`~pyrovi.module.VAE` (:mod:`pyrovi.module.nn`).
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType
from typing import Literal

import numpy as np
import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from torch import nn

from .._checks import check_bool, check_number
from .._constants import REGISTRY_KEYS
from ._arguments import check_extra_kwargs, check_option, check_sizes
from ._vae import Normalization, logistic_normal_transform
from .base._minified import stored_latent_params, stored_posterior_kwargs
from .base import (
    BaseModuleClass,
    GlobalGuide,
    cell_plate,
    library_prior,
    make_global_guide,
    materialise_guide,
    observed_library,
    register_library_prior,
)
from .distributions import LikelihoodInputs, gene_likelihood, negative_binomial
from .nn import Encoder, FCLayers, GuideFamily, check_guide_kwargs, encoder_posterior, make_guide_head
from .priors import LatentPrior, StandardNormal, check_latent_prior

#: the positive map of the network output that gives the scale of q(log beta | z, s)
_BACKGROUND_SCALE_ACTIVATIONS = {"softplus": F.softplus, "exp": torch.exp}

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
        ``"gene"``, ``"gene-batch"`` or ``"gene-label"``.
    protein_dispersion
        ``"protein"``, ``"protein-batch"`` or ``"protein-label"``.
    log_variational
        The encoders read ``log1p`` of the counts (totalVI's default).
    gene_likelihood
        ``"nb"`` or ``"zinb"``.
    latent_distribution
        ``"normal"`` or ``"ln"`` (logistic normal: ``z`` on the simplex), as for :class:`~pyrovi.module.VAE`.
    encode_covariates
        Feed batch and covariates to the encoders (default, as totalVI); otherwise the encoders read the counts
        alone and only the decoders and ``q(log beta | z, s)`` see the batch.
    use_batch_norm, use_layer_norm
        Normalisation in ``"both"``, ``"encoder"``, ``"decoder"`` or ``"none"``; the network of
        ``q(log beta | z, s)`` counts as a decoder (as in totalVI).
    extra_encoder_kwargs
        Further arguments of the encoders (:class:`~pyrovi.module.nn.Encoder`, e.g. ``var_activation``).
    extra_decoder_kwargs
        ``activation_function_bg``: ``"softplus"`` (default) or ``"exp"``, the positive map giving the scale
        of ``q(log beta | z, s)``.
    use_observed_lib_size
        Observed RNA library size (otherwise latent with a per-batch log-normal prior).
    use_size_factor_key
        Whether the library is a registered size factor (then it is observed, whatever
        ``use_observed_lib_size`` says, as in scvi-tools).
    library_log_means, library_log_vars
        Per-batch prior of the latent log library.
    protein_background_prior_mean, protein_background_prior_scale
        ``(n_batch, n_proteins)`` initial values of the background prior's location and scale
        (default 0 and 0.5).
    protein_batch_mask
        ``(n_batch, n_proteins)`` booleans: False where a protein is missing from a batch.
    prior, global_guide
        Prior of ``z`` and guide of global sites, as for :class:`~pyrovi.module.VAE`.
    objective
        ``"elbo"``: the evidence lower bound, with KL warm-up on the local latents (``z``, library,
        protein background). ``"scvi-tools"``: scvi-tools' objective, in which the library KL is not
        warmed up and the protein log-likelihood is scaled by the warm-up weight together with the KL
        terms of ``z`` and the background; after warm-up both objectives are the same ELBO.
    guide, guide_kwargs
        Family of the amortized guide of ``u`` (``"normal"``, ``"lowrank"`` or ``"flow"``) and its options,
        as for :class:`~pyrovi.module.VAE`: the extra head reads the last hidden layer of the encoder of the
        joint counts. The KL of ``z`` is then estimated by Monte Carlo.

    Examples
    --------
    >>> module = TOTALVAE(n_input_genes=100, n_input_proteins=10)
    >>> module.local_latent_sites
    ('z', 'log_library', 'log_protein_background')
    """

    local_latent_sites = ("z", "log_library", "log_protein_background")
    modality_sites = MappingProxyType({"rna": ("x",), "protein": ("y",)})
    proposal_sites = ("z", "log_library")
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
        gene_dispersion: Literal["gene", "gene-batch", "gene-label"] = "gene",
        protein_dispersion: Literal["protein", "protein-batch", "protein-label"] = "protein",
        log_variational: bool = True,
        gene_likelihood: Literal["nb", "zinb"] = "nb",
        latent_distribution: Literal["normal", "ln"] = "normal",
        protein_batch_mask: np.ndarray | None = None,
        encode_covariates: bool = True,
        protein_background_prior_mean: np.ndarray | None = None,
        protein_background_prior_scale: np.ndarray | None = None,
        use_observed_lib_size: bool = True,
        use_size_factor_key: bool = False,
        library_log_means: np.ndarray | None = None,
        library_log_vars: np.ndarray | None = None,
        use_batch_norm: Normalization = "both",
        use_layer_norm: Normalization = "none",
        extra_encoder_kwargs: dict | None = None,
        extra_decoder_kwargs: dict | None = None,
        prior: LatentPrior | None = None,
        global_guide: GlobalGuide = "normal",
        objective: Objective = "elbo",
        guide: GuideFamily = "normal",
        guide_kwargs: dict | None = None,
    ):
        super().__init__()
        check_sizes(n_hidden=n_hidden, n_latent=n_latent, n_layers_encoder=n_layers_encoder,
                     n_layers_decoder=n_layers_decoder)  # fmt: skip
        for name, rate in (("dropout_rate_encoder", dropout_rate_encoder), ("dropout_rate_decoder", dropout_rate_decoder)):
            check_number(name, rate, 0.0, 1.0, high_open=True)
        for name, flag in (("log_variational", log_variational), ("encode_covariates", encode_covariates),
                           ("use_observed_lib_size", use_observed_lib_size), ("use_size_factor_key", use_size_factor_key)):
            check_bool(name, flag)
        check_option("gene_dispersion", gene_dispersion, ("gene", "gene-batch", "gene-label"))
        check_option("protein_dispersion", protein_dispersion, ("protein", "protein-batch", "protein-label"))
        check_option("gene_likelihood", gene_likelihood, ("nb", "zinb"))
        check_option("latent_distribution", latent_distribution, ("normal", "ln"))
        check_option("use_batch_norm", use_batch_norm, ("encoder", "decoder", "none", "both"))
        check_option("use_layer_norm", use_layer_norm, ("encoder", "decoder", "none", "both"))
        check_option("objective", objective, ("elbo", "scvi-tools"))
        if latent_distribution == "ln" and n_latent < 2:
            raise ValueError(f"latent_distribution='ln' needs n_latent >= 2 (got {n_latent}).")
        decoder_options = dict(extra_decoder_kwargs or {})
        unknown = sorted(set(decoder_options) - {"activation_function_bg"})
        if unknown:
            raise ValueError(f"extra_decoder_kwargs has arguments {unknown}; TOTALVAE takes 'activation_function_bg'.")
        activation_bg = decoder_options.get("activation_function_bg", "softplus")
        check_option("activation_function_bg", activation_bg, tuple(_BACKGROUND_SCALE_ACTIVATIONS))
        self.activation_function_bg = activation_bg
        self.latent_distribution = latent_distribution
        self.n_latent_base = n_latent - 1 if latent_distribution == "ln" else n_latent
        # the method `guide` is taken: the family's name is `guide_family`
        self.guide_kwargs = check_guide_kwargs(guide, guide_kwargs, self.n_latent_base)
        self.guide_family = guide
        self.encode_covariates = encode_covariates
        self.n_input_genes, self.n_input_proteins = n_input_genes, n_input_proteins
        self.n_input = n_input_genes + n_input_proteins  # the encoder's input width
        self.n_batch, self.n_labels, self.n_latent = n_batch, n_labels, n_latent
        self.gene_dispersion, self.protein_dispersion = gene_dispersion, protein_dispersion
        self.gene_likelihood, self.objective = gene_likelihood, objective
        self.use_size_factor_key = use_size_factor_key
        use_observed_lib_size = use_observed_lib_size or use_size_factor_key
        self.use_observed_lib_size = use_observed_lib_size
        self.n_continuous_cov = n_continuous_cov
        self.n_cats_per_cov = list(n_cats_per_cov or [])

        if not use_observed_lib_size:
            register_library_prior(self, library_log_means, library_log_vars)

        shape = (n_batch, n_input_proteins)
        mean = np.zeros(shape) if protein_background_prior_mean is None else protein_background_prior_mean
        scale = np.full(shape, 0.5) if protein_background_prior_scale is None else protein_background_prior_scale
        # learnable prior of the background, initialised from the data (empirical Bayes, as totalVI)
        self.background_prior_loc = nn.Parameter(torch.as_tensor(mean, dtype=torch.float32).reshape(shape))
        self.background_prior_log_scale = nn.Parameter(
            torch.as_tensor(scale, dtype=torch.float32).reshape(shape).clamp_min(1e-3).log()
        )
        mask = np.ones(shape, dtype=bool) if protein_batch_mask is None else np.asarray(protein_batch_mask, bool)
        self.register_buffer("protein_batch_mask", torch.as_tensor(mask).reshape(shape))

        # per gene (protein), or one row per batch or label, indexed by the cell's code
        rows = {"gene": None, "gene-batch": n_batch, "gene-label": n_labels}[gene_dispersion]
        self.log_theta = nn.Parameter(torch.randn((n_input_genes,) if rows is None else (rows, n_input_genes)))
        rows = {"protein": None, "protein-batch": n_batch, "protein-label": n_labels}[protein_dispersion]
        self.log_phi = nn.Parameter(2 * torch.rand((n_input_proteins,) if rows is None else (rows, n_input_proteins)))

        cats = [n_batch, *self.n_cats_per_cov]
        enc_kwargs = {
            "n_cat_list": cats if encode_covariates else None,
            "n_cont": n_continuous_cov if encode_covariates else 0,
            "n_hidden": n_hidden, "dropout_rate": dropout_rate_encoder, "log1p_input": log_variational,
            "use_batch_norm": use_batch_norm in ("encoder", "both"),
            "use_layer_norm": use_layer_norm in ("encoder", "both"),
            **check_extra_kwargs(
                "extra_encoder_kwargs", extra_encoder_kwargs, Encoder.__init__,
                ("n_input", "n_output", "n_cat_list", "n_cont", "n_layers", "n_hidden"),
            ),
        }
        self.z_encoder = Encoder(self.n_input, self.n_latent_base, n_layers=n_layers_encoder, **enc_kwargs)
        self.z_guide_head = make_guide_head(guide, n_hidden, self.n_latent_base, self.guide_kwargs)
        if not use_observed_lib_size:
            self.l_encoder = Encoder(self.n_input, 1, n_layers=1, **enc_kwargs)

        def hidden() -> FCLayers:
            return FCLayers(
                n_latent, n_hidden, n_cat_list=cats, n_cont=n_continuous_cov, n_layers=n_layers_decoder,
                n_hidden=n_hidden, dropout_rate=dropout_rate_decoder,
                use_batch_norm=use_batch_norm in ("decoder", "both"),
                use_layer_norm=use_layer_norm in ("decoder", "both"),
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
        self.prior.setup(self.n_latent_base, self)
        self.global_sites = tuple(check_latent_prior(self.prior, self.n_latent_base, self._example_covariates(2)))
        self.global_guide = make_global_guide(self._global_model, self.global_sites, global_guide)
        materialise_guide(self.global_guide)

    # ----------------------------------------------------------------------------------------------

    @staticmethod
    def _get_fn_args_from_batch(batch: dict[str, torch.Tensor]) -> tuple[tuple, dict]:
        data = (batch[REGISTRY_KEYS.X_KEY], batch[REGISTRY_KEYS.PROTEIN_EXP_KEY])
        # a minified minibatch adds its stored posterior and library (see stored_posterior_kwargs)
        return data, {**BaseModuleClass._covariate_kwargs(batch), **stored_posterior_kwargs(batch)}

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
        latent_qzm: torch.Tensor | None = None,
        latent_qzv: torch.Tensor | None = None,
    ) -> None:
        """p(x, y, z, l, beta): the totalVI generative process; ``x`` (RNA) and ``y`` (proteins) observed.

        ``latent_qzm``/``latent_qzv`` (minified data) are the guide's; the model ignores them.
        """
        batch_index = self._batch_codes(batch_index, x)
        p_z = self._latent(
            self.prior(x.shape[0], batch_index=batch_index, labels=labels, cat_covs=cat_covs, cont_covs=cont_covs)
        )
        library_scale, protein_scale = self._objective_scales(kl_weight)
        with cell_plate(x.shape[0], indices, n_obs):
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
            theta = self._per_cell(self.log_theta, self.gene_dispersion, batch_index, labels).exp()
            rna = gene_likelihood(self.gene_likelihood, LikelihoodInputs(library, rho, theta, self.zi_logits(h)))
            pyro.sample("x", rna.to_event(1), obs=x)

            # proteins: a background/foreground mixture, masked where a protein is missing from the batch
            h = self.protein_decoder(z, batch_index, *cat_covs, cont=cont_covs)
            background = log_beta.exp()
            foreground = background * (1.0 + F.softplus(self.foreground_head(h)) + 1e-8)
            mixing_logits = self.mixing_head(h)
            pyro.deterministic("protein_background_rate", background, event_dim=1)
            pyro.deterministic("protein_foreground_rate", foreground, event_dim=1)
            pyro.deterministic("protein_background_logits", mixing_logits, event_dim=1)
            phi = self._per_cell(self.log_phi, self.protein_dispersion, batch_index, labels).exp()
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
        latent_qzm: torch.Tensor | None = None,
        latent_qzv: torch.Tensor | None = None,
    ) -> None:
        """q(z, l, beta | x, y): encoders of the joint log counts, and q(log beta | z, batch).

        On minified data (``latent_qzm``/``latent_qzv`` given) ``q(u)`` is the stored Gaussian instead.
        """
        batch_index = self._batch_codes(batch_index, x)
        if self.global_guide is not None:
            self.global_guide()
        library_scale, _ = self._objective_scales(kl_weight)
        # a protein missing from the cell's batch is hidden from the encoder too: it must not inform q
        measured = self.protein_batch_mask[batch_index]
        xy = torch.cat([x, y * measured], -1)
        enc_cats = (batch_index, *cat_covs) if self.encode_covariates else ()
        enc_cont = cont_covs if self.encode_covariates else None
        with cell_plate(x.shape[0], indices, n_obs):
            with poutine.scale(scale=kl_weight):
                if latent_qzm is not None:  # minified data: the stored posterior of u
                    z_loc, z_scale = stored_latent_params(latent_qzm, latent_qzv)
                    q_u = dist.Normal(z_loc, z_scale).to_event(1)
                elif self.z_guide_head is None:
                    z_loc, z_scale = self.z_encoder(xy, *enc_cats, cont=enc_cont)
                    q_u = dist.Normal(z_loc, z_scale).to_event(1)
                else:
                    q_u = encoder_posterior(self.z_encoder, self.z_guide_head, xy, *enc_cats, cont=enc_cont)
                z = pyro.sample("z", self._latent(q_u))
                h = self.background_encoder(z, batch_index, *cat_covs, cont=cont_covs)
                scale = _BACKGROUND_SCALE_ACTIVATIONS[self.activation_function_bg](self.background_log_scale(h)) + 1e-4
                # the same mask as the model's site: a masked pair has a KL over measured proteins only
                background = dist.Normal(self.background_loc(h), scale).mask(measured)
                pyro.sample("log_protein_background", background.to_event(1))
            if not self.use_observed_lib_size:
                with poutine.scale(scale=library_scale):
                    l_loc, l_scale = self.l_encoder(xy, *enc_cats, cont=enc_cont)
                    pyro.sample("log_library", dist.Normal(l_loc, l_scale).to_event(1))

    # ----------------------------------------------------------------------------------------------

    def latent_params(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_index: torch.Tensor | None = None,
        cat_covs: tuple[torch.Tensor, ...] = (),
        cont_covs: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Location and scale of the guide's Gaussian ``q(u | x, y)``, each ``(n_cells, n_latent_base)``.

        ``q(z | x, y)`` itself for ``latent_distribution="normal"``; for ``"ln"`` the Gaussian that
        :attr:`latent_transform` maps onto the simplex. Proteins missing from a cell's batch are hidden.

        Examples
        --------
        >>> module = TOTALVAE(n_input_genes=20, n_input_proteins=5, n_latent=4)
        >>> rna, proteins = torch.poisson(torch.full((3, 20), 2.0)), torch.poisson(torch.full((3, 5), 20.0))
        >>> loc, scale = module.latent_params(rna, proteins)
        >>> tuple(loc.shape), bool((scale > 0).all())
        ((3, 4), True)
        """
        xy, enc_cats, enc_cont = self._encoder_inputs(x, y, batch_index, cat_covs, cont_covs)
        return self.z_encoder(xy, *enc_cats, cont=enc_cont)

    def latent_posterior(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_index: torch.Tensor | None = None,
        cat_covs: tuple[torch.Tensor, ...] = (),
        cont_covs: torch.Tensor | None = None,
    ) -> dist.Distribution:
        """The guide's ``q(u | x, y)`` of the chosen family (before :attr:`latent_transform`), batch ``(n_cells,)``.

        Examples
        --------
        >>> module = TOTALVAE(n_input_genes=20, n_input_proteins=5, n_latent=4, guide="flow")
        >>> rna, proteins = torch.poisson(torch.full((3, 20), 2.0)), torch.poisson(torch.full((3, 5), 20.0))
        >>> q = module.latent_posterior(rna, proteins)
        >>> type(q).__name__, tuple(q.batch_shape), tuple(q.event_shape)
        ('FlowPosterior', (3,), (4,))
        """
        xy, enc_cats, enc_cont = self._encoder_inputs(x, y, batch_index, cat_covs, cont_covs)
        return encoder_posterior(self.z_encoder, self.z_guide_head, xy, *enc_cats, cont=enc_cont)

    def _encoder_inputs(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_index: torch.Tensor | None,
        cat_covs: tuple[torch.Tensor, ...],
        cont_covs: torch.Tensor | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor | None]:
        """The z encoder's inputs: the joint counts (missing proteins hidden) and the covariates it reads."""
        batch_index = self._batch_codes(batch_index, x)
        xy = torch.cat([x, y * self.protein_batch_mask[batch_index]], -1)
        if not self.encode_covariates:
            return xy, (), None
        return xy, (batch_index, *cat_covs), cont_covs

    @property
    def latent_transform(self) -> dist.transforms.Transform | None:
        """None (identity) for ``latent_distribution="normal"``, the stick-breaking bijection for ``"ln"``.

        Examples
        --------
        >>> TOTALVAE(n_input_genes=20, n_input_proteins=5, latent_distribution="ln").latent_transform
        StickBreakingTransform()
        """
        return logistic_normal_transform() if self.latent_distribution == "ln" else None

    def _latent(self, base: dist.Distribution) -> dist.Distribution:
        transform = self.latent_transform
        return base if transform is None else dist.TransformedDistribution(base, transform)

    @staticmethod
    def _per_cell(
        table: torch.Tensor, kind: str, batch_index: torch.Tensor, labels: torch.Tensor | None
    ) -> torch.Tensor:
        """A per-feature table (``"gene"``/``"protein"``) or its row for each cell's batch or label."""
        if table.dim() == 1:
            return table
        if kind.endswith("-batch"):
            return table[batch_index]
        codes = labels.reshape(-1).long() if labels is not None else torch.zeros_like(batch_index)
        return table[codes]

    def _objective_scales(self, kl_weight: float) -> tuple[float, float]:
        """Scales of the library KL and of the protein likelihood under each objective."""
        if self.objective == "scvi-tools":
            return 1.0, kl_weight
        return kl_weight, 1.0

    def _library(self, x: torch.Tensor, size_factor: torch.Tensor | None, batch_index: torch.Tensor) -> torch.Tensor:
        if self.use_observed_lib_size:
            return observed_library(x, size_factor)
        return pyro.sample("log_library", library_prior(self, batch_index)).exp()

    def _global_model(self) -> None:
        self.prior(2, **self._example_covariates(2, self.device))
