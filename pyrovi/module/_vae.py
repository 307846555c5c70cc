"""scVI (Lopez et al. 2018) as a Pyro model/guide pair.

Generative model, for cell :math:`n` and gene :math:`g`, with batch :math:`s_n`:

.. math::

    u_n &\\sim p(u) \\quad\\text{(default } \\mathcal{N}(0, I)\\text{; any } \\texttt{prior=}\\text{)},
        \\qquad z_n = u_n \\ \\text{(normal) or}\\ z_n = T(u_n) \\ \\text{(logistic normal)} \\\\
    \\ell_n &= \\textstyle\\sum_g x_{ng} \\quad\\text{(observed library), or}\\quad
        \\log \\ell_n \\sim \\mathcal{N}(\\mu^{\\ell}_{s_n}, (\\sigma^{\\ell}_{s_n})^2) \\\\
    \\rho_n &= \\mathrm{softmax}(f_\\theta(z_n, c(s_n), \\text{covariates})) \\\\
    x_{ng} &\\sim \\mathrm{ZINB}(\\mu = \\ell_n \\rho_{ng},\\ \\theta_g,\\ \\pi_{ng})
        \\quad\\text{(or NB, Poisson; or } \\mathcal{N}(\\ell_n \\rho_{ng}, \\theta_g^2) \\text{ for continuous data)}

with the inverse dispersion :math:`\\theta_g` a point estimate, or a global latent variable when
``dispersion_prior`` is given. Global latent sites (a prior's hyperpriors, the dispersion) get an
automatic guide (:func:`~pyrovi.module.base.make_global_guide`). The batch enters the networks as
:math:`c(s_n)`, a one-hot vector or a learned embedding :math:`E_{s_n} \\in \\mathbb{R}^d`.

Guide (amortized mean field): :math:`q(u_n \\mid x_n) = \\mathcal{N}(g_\\phi(x_n))`, pushed through the
same :math:`T` as the prior, and, for a latent library, :math:`q(\\log \\ell_n \\mid x_n)` Normal. Cells
live in a subsampled plate, so a minibatch's ELBO estimates the full-data ELBO.
``guide="lowrank"`` makes :math:`q(u_n \\mid x_n)` a low-rank plus diagonal Gaussian, ``guide="flow"`` the
encoder's Normal pushed through conditional autoregressive flows (:mod:`pyrovi.module.nn`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from types import MappingProxyType
from typing import Any, Literal, Union

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from .._checks import check_bool, check_number
from .._constants import REGISTRY_KEYS
from ._arguments import check_extra_kwargs, check_option, check_sizes
from .base._minified import stored_latent_params, stored_posterior_kwargs
from .base import (
    BaseModuleClass,
    EmbeddingModuleMixin,
    GlobalGuide,
    cell_plate,
    check_global_guide,
    library_prior,
    make_global_guide,
    materialise_guide,
    observed_library,
    register_library_prior,
)
from .distributions import COUNT_LIKELIHOODS, LikelihoodInputs, gene_likelihood
from .nn import DecoderSCVI, Encoder, VarActivation, check_guide_kwargs, encoder_posterior, make_guide_head
from .nn import GuideFamily
from .priors import LatentPrior, StandardNormal, check_latent_prior, distribution_to_config

Dispersion = Literal["gene", "gene-batch", "gene-label", "gene-cell"]
#: a built-in name, or a callable ``(mu, theta, zi_logits) -> distribution`` over one cell's genes
GeneLikelihood = Union[Literal["zinb", "nb", "poisson", "normal"], Callable[..., dist.Distribution]]
#: ``"normal"``: z is Gaussian; ``"ln"``: logistic normal, z lies on the probability simplex
LatentDistribution = Literal["normal", "ln"]
BatchRepresentation = Literal["one-hot", "embedding"]
Normalization = Literal["encoder", "decoder", "none", "both"]


def logistic_normal_transform() -> dist.transforms.Transform:
    """The bijection from :math:`\\mathbb{R}^{K-1}` onto the open simplex of :math:`K` proportions.

    Pyro's stick-breaking transform: with ``u = 0`` every proportion is ``1 / K``. A Normal pushed
    through it is the logistic-normal distribution (:class:`pyro.distributions.LogisticNormal`).

    Examples
    --------
    >>> z = logistic_normal_transform()(torch.zeros(3))
    >>> [round(float(v), 3) for v in z]
    [0.25, 0.25, 0.25, 0.25]
    """
    return dist.transforms.StickBreakingTransform()


def _check_priors(prior: Any, dispersion_prior: Any, global_guide: Any) -> None:
    """``prior`` is a LatentPrior (or None), ``dispersion_prior`` a distribution (or None), ``global_guide`` known."""
    if prior is not None and not isinstance(prior, LatentPrior):
        raise TypeError(
            f"prior must be a pyrovi.priors.LatentPrior (e.g. prior=pyrovi.priors.MixtureOfGaussians(10), or "
            f"pyrovi.priors.StandardNormal()), got {prior!r:.80} ({type(prior).__name__})."
        )
    if dispersion_prior is not None and not isinstance(dispersion_prior, torch.distributions.Distribution):
        raise TypeError(
            "dispersion_prior must be a Pyro distribution on the positive reals (e.g. "
            f"pyro.distributions.LogNormal(2.0, 1.0)), got {dispersion_prior!r:.80} ({type(dispersion_prior).__name__})."
        )
    check_global_guide(global_guide)


class VAE(EmbeddingModuleMixin, BaseModuleClass):
    """The scVI generative model and its amortized guide.

    Parameters
    ----------
    n_input
        Number of genes.
    n_batch
        Number of batches (1: no batch correction).
    n_labels
        Number of labels (used by ``dispersion="gene-label"``).
    n_hidden, n_latent, n_layers
        Width of hidden layers, latent dimension and number of layers of encoder and decoder.
    n_continuous_cov
        Number of continuous covariates injected into the decoder.
    n_cats_per_cov
        Number of categories of each extra categorical covariate injected into the decoder.
    dropout_rate
        Dropout in the encoder.
    dispersion
        Inverse dispersion ``theta`` per ``"gene"``, ``"gene-batch"``, ``"gene-label"`` or
        ``"gene-cell"`` (a decoder head). With ``gene_likelihood="normal"`` it is the standard deviation.
    log_variational
        The encoders read ``log1p(x)`` (scVI's default) instead of ``x``.
    gene_likelihood
        ``"zinb"``, ``"nb"``, ``"poisson"``, ``"normal"`` (continuous data, e.g. log-normalised expression:
        ``x ~ N(library * rho, theta^2)``), or a callable ``(mu, theta, zi_logits) -> distribution`` whose
        batch shape is ``(n_cells, n_genes)`` (e.g. a hurdle or beta-binomial model); ``theta`` is the
        inverse dispersion and ``zi_logits`` the decoder's gate logits, to use or ignore.
    latent_distribution
        ``"normal"``: ``z`` is the Gaussian ``u`` itself. ``"ln"``: logistic normal, ``z = T(u)`` with
        ``T`` the stick-breaking bijection from ``n_latent - 1`` coordinates onto the simplex of
        ``n_latent`` proportions (:func:`logistic_normal_transform`): each cell is a mixture of
        ``n_latent`` programmes. The prior and the guide are the same ``T`` applied to the prior of
        ``u`` and to the encoder's Normal; since the KL divergence is invariant under a bijection applied
        to both distributions, ``KL(T#q || T#p) = KL(q || p)`` is the analytic Gaussian KL (torch's rule for
        two transformed distributions), and Monte Carlo ELBOs (``Trace_ELBO``) evaluate exact
        log-densities through the transform's Jacobian.
    encode_covariates
        Feed batch and covariates to the encoders too (otherwise only to the decoder).
    deeply_inject_covariates
        Feed covariates to every hidden layer, not only the first.
    batch_representation
        ``"one-hot"``: the batch enters the networks as indicator columns. ``"embedding"``: as a learned
        vector per batch (``module.get_embedding("batch")``, see :class:`~pyrovi.module.base.EmbeddingModuleMixin`),
        appended to the continuous covariates.
    batch_embedding_kwargs
        Arguments of the batch :class:`~pyrovi.module.nn.Embedding` (``embedding_dim``, default 5).
    use_batch_norm, use_layer_norm
        Normalisation in ``"both"``, ``"encoder"``, ``"decoder"`` or ``"none"``.
    use_observed_lib_size
        Use the observed library size (or the registered size factor) instead of a latent library.
    use_size_factor_key
        Whether the library is a registered size factor (then it is observed, whatever
        ``use_observed_lib_size`` says, as in scvi-tools).
    library_log_means, library_log_vars
        Per-batch mean and variance of log library sizes: the prior of a latent library.
    var_activation
        Positive map of the encoders' variance output: ``"exp"`` (default, also ``None``), ``"softplus"``,
        or a callable such as ``torch.nn.Softplus()``.
    extra_encoder_kwargs, extra_decoder_kwargs
        Further arguments of :class:`~pyrovi.module.nn.Encoder` (e.g. ``var_eps``) and
        :class:`~pyrovi.module.nn.DecoderSCVI`.
    prior
        Prior of ``u`` (of ``z`` itself when ``latent_distribution="normal"``), a
        :class:`~pyrovi.priors.LatentPrior` (default :class:`~pyrovi.priors.StandardNormal`).
    dispersion_prior
        A distribution with positive support (e.g. ``dist.LogNormal(2.0, 1.0)``) making ``theta`` a
        global latent variable with this prior for every entry (not with ``"gene-cell"``).
    global_guide
        Guide of the global latent sites: ``"normal"`` (AutoNormal), ``"delta"`` (MAP) or a callable
        ``model -> guide``.
    guide
        Family of the amortized guide of ``u``: ``"normal"`` (mean field, default), ``"lowrank"``
        (``N(loc, W W^T + diag(var))`` with ``W`` of ``rank`` columns from the encoder, see
        :class:`~pyrovi.module.nn.LowRankHead`) or ``"flow"`` (the encoder's Normal pushed through
        conditional affine autoregressive transforms, :class:`~pyrovi.module.nn.FlowHead`). Their KL to the
        prior has no closed form and is estimated by Monte Carlo (the ELBO's sampled ``log q - log p``).
    guide_kwargs
        Options of the guide family: ``rank`` (``"lowrank"``, default 2); ``n_flows`` (default 2),
        ``hidden_dims`` (default ``[10 * n_latent]``) and ``n_moment_samples`` (draws of the Monte Carlo
        posterior mean, default 1000) for ``"flow"``.

    Examples
    --------
    >>> vae = VAE(n_input=100, n_batch=2)
    >>> x = torch.poisson(torch.full((8, 100), 2.0))
    >>> args, kwargs = VAE._get_fn_args_from_batch({"X": x, "batch": torch.zeros(8, dtype=torch.long),
    ...                                              "indices": torch.arange(8)})
    >>> loss = pyro.infer.TraceMeanField_ELBO().differentiable_loss(vae.model, vae.guide, *args, **kwargs)
    >>> bool(torch.isfinite(loss))
    True
    """

    local_latent_sites = ("z", "log_library")
    modality_sites = MappingProxyType({"rna": ("x",)})
    proposal_sites = ("z", "log_library")
    # the encoders take sparse counts (their first layer sums weight columns of the stored values: embedding_bag)
    sparse_guide_inputs = (REGISTRY_KEYS.X_KEY,)

    def __init__(
        self,
        n_input: int,
        n_batch: int = 1,
        n_labels: int = 1,
        n_hidden: int = 128,
        n_latent: int = 10,
        n_layers: int = 1,
        n_continuous_cov: int = 0,
        n_cats_per_cov: Sequence[int] | None = None,
        dropout_rate: float = 0.1,
        dispersion: Dispersion = "gene",
        log_variational: bool = True,
        gene_likelihood: GeneLikelihood = "zinb",
        latent_distribution: LatentDistribution = "normal",
        encode_covariates: bool = False,
        deeply_inject_covariates: bool = True,
        batch_representation: BatchRepresentation = "one-hot",
        use_batch_norm: Normalization = "both",
        use_layer_norm: Normalization = "none",
        use_observed_lib_size: bool = True,
        use_size_factor_key: bool = False,
        library_log_means: np.ndarray | None = None,
        library_log_vars: np.ndarray | None = None,
        var_activation: VarActivation = None,
        extra_encoder_kwargs: dict | None = None,
        extra_decoder_kwargs: dict | None = None,
        batch_embedding_kwargs: dict | None = None,
        prior: LatentPrior | None = None,
        dispersion_prior: dist.Distribution | None = None,
        global_guide: GlobalGuide = "normal",
        guide: GuideFamily = "normal",
        guide_kwargs: dict | None = None,
    ):
        super().__init__()
        check_option("dispersion", dispersion, ("gene", "gene-batch", "gene-label", "gene-cell"))
        if not callable(gene_likelihood) and gene_likelihood not in COUNT_LIKELIHOODS:
            raise ValueError(
                f"gene_likelihood={gene_likelihood!r} is not one of {sorted(COUNT_LIKELIHOODS)} "
                "or a callable (mu, theta, zi_logits) -> distribution."
            )
        check_option("latent_distribution", latent_distribution, ("normal", "ln"))
        check_sizes(n_hidden=n_hidden, n_latent=n_latent, n_layers=n_layers)
        check_number("dropout_rate", dropout_rate, 0.0, 1.0, high_open=True)
        for name, flag in (("log_variational", log_variational), ("encode_covariates", encode_covariates),
                           ("deeply_inject_covariates", deeply_inject_covariates),
                           ("use_observed_lib_size", use_observed_lib_size), ("use_size_factor_key", use_size_factor_key)):
            check_bool(name, flag)
        check_option("batch_representation", batch_representation, ("one-hot", "embedding"))
        check_option("use_batch_norm", use_batch_norm, ("encoder", "decoder", "none", "both"))
        check_option("use_layer_norm", use_layer_norm, ("encoder", "decoder", "none", "both"))
        _check_priors(prior, dispersion_prior, global_guide)
        if latent_distribution == "ln" and n_latent < 2:
            raise ValueError(
                f"latent_distribution='ln' puts z on the simplex of n_latent proportions, which needs n_latent >= 2 "
                f"(got {n_latent})."
            )
        self.n_input, self.n_batch, self.n_labels, self.n_latent = n_input, n_batch, n_labels, n_latent
        self.dispersion = dispersion
        self.gene_likelihood = gene_likelihood
        self.latent_distribution = latent_distribution
        self.use_size_factor_key = use_size_factor_key
        use_observed_lib_size = use_observed_lib_size or use_size_factor_key
        self.use_observed_lib_size = use_observed_lib_size
        self.encode_covariates = encode_covariates
        self.n_continuous_cov = n_continuous_cov
        self.n_cats_per_cov = list(n_cats_per_cov or [])
        self.batch_representation = batch_representation
        #: the guide's and the prior's Gaussian live in n_latent - 1 coordinates for the logistic normal
        self.n_latent_base = n_latent - 1 if latent_distribution == "ln" else n_latent

        if not use_observed_lib_size:
            register_library_prior(self, library_log_means, library_log_vars)

        # Inverse dispersion on the log scale, as in scVI; "gene-cell" is a decoder head instead.
        shapes = {"gene": (n_input,), "gene-batch": (n_batch, n_input), "gene-label": (n_labels, n_input)}
        self._dispersion_shape = shapes.get(dispersion)
        self._dispersion_prior_name: str | None = None
        if dispersion_prior is not None:
            if not self._uses_dispersion:
                raise ValueError(
                    "dispersion_prior was given with gene_likelihood='poisson', which has no dispersion; "
                    "drop dispersion_prior or use gene_likelihood='nb' or 'zinb'."
                )
            self._register_dispersion_prior(dispersion_prior)
        elif dispersion in shapes and self._uses_dispersion:
            self.log_theta = nn.Parameter(torch.randn(shapes[dispersion]))

        # how the batch reaches the networks: one-hot codes among the categorical covariates, or a learned
        # vector appended to the continuous ones
        extra_cats = list(self.n_cats_per_cov)
        n_cont = n_continuous_cov
        if batch_representation == "embedding":
            self.init_embedding(REGISTRY_KEYS.BATCH_KEY, n_batch, **(batch_embedding_kwargs or {}))
            n_cont += self.get_embedding(REGISTRY_KEYS.BATCH_KEY).embedding_dim
            cat_list = extra_cats
        else:
            if batch_embedding_kwargs:
                warnings.warn(
                    "batch_embedding_kwargs is ignored with batch_representation='one-hot'; pass "
                    "batch_representation='embedding' to learn batch embeddings.",
                    UserWarning,
                    stacklevel=2,
                )
            cat_list = [n_batch, *extra_cats]
        enc_cats = cat_list if encode_covariates else None
        enc_cont = n_cont if encode_covariates else 0
        bn_enc = use_batch_norm in ("encoder", "both")
        bn_dec = use_batch_norm in ("decoder", "both")
        ln_enc = use_layer_norm in ("encoder", "both")
        ln_dec = use_layer_norm in ("decoder", "both")
        reserved = ("n_input", "n_output", "n_cat_list", "n_cont", "n_layers", "n_hidden", "inject_covariates")
        enc_kwargs = {
            "n_cat_list": enc_cats, "n_cont": enc_cont, "n_hidden": n_hidden, "dropout_rate": dropout_rate,
            "use_batch_norm": bn_enc, "use_layer_norm": ln_enc, "inject_covariates": deeply_inject_covariates,
            "var_activation": var_activation, "log1p_input": log_variational,
            **check_extra_kwargs("extra_encoder_kwargs", extra_encoder_kwargs, Encoder.__init__, reserved),
        }
        self.z_encoder = Encoder(n_input, self.n_latent_base, n_layers=n_layers, **enc_kwargs)
        # the method `guide` is taken: the family's name is `guide_family`
        self.guide_kwargs = check_guide_kwargs(guide, guide_kwargs, self.n_latent_base)
        self.guide_family = guide
        self.z_guide_head = make_guide_head(guide, n_hidden, self.n_latent_base, self.guide_kwargs)
        if not use_observed_lib_size:
            self.l_encoder = Encoder(n_input, 1, n_layers=1, **enc_kwargs)
        dec_kwargs = {
            "n_cat_list": cat_list, "n_cont": n_cont, "n_hidden": n_hidden, "use_batch_norm": bn_dec,
            "use_layer_norm": ln_dec, "inject_covariates": deeply_inject_covariates,
            "dispersion_head": dispersion == "gene-cell" and self._uses_dispersion,
            # a callable likelihood may use the gate logits; of the built-ins only ZINB does
            "zi_head": callable(gene_likelihood) or gene_likelihood == "zinb",
            **check_extra_kwargs(
                "extra_decoder_kwargs", extra_decoder_kwargs, DecoderSCVI.__init__,
                (*reserved, "dispersion_head", "zi_head"),
            ),
        }
        self.decoder = DecoderSCVI(n_latent, n_input, n_layers=n_layers, **dec_kwargs)
        if callable(gene_likelihood):
            self._check_likelihood(gene_likelihood)

        # the prior comes last: a VampPrior pushes its pseudo-inputs through the encoder built above
        self.prior = prior if prior is not None else StandardNormal()
        self.prior.setup(self.n_latent_base, self)
        global_sites = check_latent_prior(self.prior, self.n_latent_base, self._example_covariates(2))
        if self._dispersion_prior_name is not None:
            global_sites.append("dispersion")
        self.global_sites = tuple(global_sites)
        self.global_guide = make_global_guide(self._global_model, self.global_sites, global_guide)
        materialise_guide(self.global_guide)

    # ----------------------------------------------------------------------------------------------
    # construction helpers

    @property
    def _uses_dispersion(self) -> bool:
        # the Poisson likelihood has no dispersion: no parameter that would never get a gradient (DDP)
        return callable(self.gene_likelihood) or self.gene_likelihood != "poisson"

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        # a Poisson likelihood has no dispersion: dispersion entries of a state dict are ignored, so a file
        # that holds them loads (strictly) and gives the same model
        if not self._uses_dispersion:
            for key in ("log_theta", "decoder.log_theta.weight", "decoder.log_theta.bias"):
                state_dict.pop(prefix + key, None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _register_dispersion_prior(self, prior: dist.Distribution) -> None:
        if self._dispersion_shape is None:
            raise ValueError("dispersion_prior needs dispersion 'gene', 'gene-batch' or 'gene-label', not 'gene-cell'.")
        if tuple(prior.event_shape) != () or not prior.support.check(torch.tensor(1.0)):
            raise ValueError(
                f"dispersion_prior must be a scalar distribution on the positive reals (e.g. "
                f"dist.LogNormal(2.0, 1.0)), got {prior} with support {prior.support}."
            )
        if prior.support.check(torch.tensor(-1.0)):
            raise ValueError(f"dispersion_prior must have positive support, got {prior.support}.")
        config = distribution_to_config(prior)
        self._dispersion_prior_name = config["name"]
        # parameters as buffers so the prior follows the module's device and is saved with it
        self._dispersion_prior_args = tuple(config["args"])
        for key, value in config["args"].items():
            self.register_buffer(f"_dispersion_prior_{key}", torch.tensor(value, dtype=torch.float32))

    def _dispersion_prior(self) -> dist.Distribution:
        cls = getattr(dist, self._dispersion_prior_name)
        args = {key: getattr(self, f"_dispersion_prior_{key}") for key in self._dispersion_prior_args}
        return cls(**args).expand(self._dispersion_shape).to_event(len(self._dispersion_shape))

    def _check_likelihood(self, fn: Callable[..., dist.Distribution]) -> None:
        ones = torch.ones(2, self.n_input)
        d = fn(ones, ones, torch.zeros(2, self.n_input))
        if not isinstance(d, torch.distributions.Distribution) or tuple(d.batch_shape) != (2, self.n_input):
            shape = tuple(getattr(d, "batch_shape", ()))
            raise ValueError(
                "gene_likelihood must return a distribution with batch shape (n_cells, n_genes) and no "
                f"event dimensions; for 2 cells x {self.n_input} genes it returned {type(d).__name__} with "
                f"batch shape {shape}."
            )

    def _global_model(self) -> None:
        """The model's global sample statements alone: what the global guide is built from."""
        self.prior(2, **self._example_covariates(2, self.device))
        if self._dispersion_prior_name is not None:
            pyro.sample("dispersion", self._dispersion_prior())

    @staticmethod
    def _get_fn_args_from_batch(batch: dict[str, torch.Tensor]) -> tuple[tuple, dict]:
        # a minified minibatch adds its stored posterior and library (see stored_posterior_kwargs)
        return (batch[REGISTRY_KEYS.X_KEY],), {**BaseModuleClass._covariate_kwargs(batch), **stored_posterior_kwargs(batch)}

    # ----------------------------------------------------------------------------------------------
    # the generative model, top to bottom

    def model(
        self,
        x: torch.Tensor,
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
        """p(x, z, l): the scVI generative process; ``x`` is observed (``latent_qzm``/``latent_qzv`` are the guide's)."""
        batch_index = self._batch_codes(batch_index, x)
        # global: the prior's hyperpriors (if any), then the dispersion when it has a prior
        p_z = self._latent(
            self.prior(x.shape[0], batch_index=batch_index, labels=labels, cat_covs=cat_covs, cont_covs=cont_covs)
        )
        theta = None
        if self._dispersion_prior_name is not None:
            theta = pyro.sample("dispersion", self._dispersion_prior())
        with cell_plate(x.shape[0], indices, n_obs):
            log_library = None
            with poutine.scale(scale=kl_weight):
                z = pyro.sample("z", p_z)
                if self.use_observed_lib_size:
                    library = observed_library(x, size_factor)
                else:
                    log_library = pyro.sample("log_library", library_prior(self, batch_index))
                    library = log_library.exp()
            # log space: log mu = log library + log_softmax(...), exact and one pass cheaper than log(mu)
            cats, cont = self._network_covariates(batch_index, cat_covs, cont_covs)
            log_rho, log_theta_cell, zi_logits = self.decoder.decode_log(z, *cats, cont=cont)
            rho = pyro.deterministic("rho", log_rho.exp(), event_dim=1)
            theta = self._theta(theta, log_theta_cell, batch_index, labels) if self._uses_dispersion else None
            inputs = LikelihoodInputs(library, rho, theta, zi_logits, log_rho=log_rho, log_library=log_library)
            pyro.sample("x", gene_likelihood(self.gene_likelihood, inputs).to_event(1), obs=x)

    def guide(
        self,
        x: torch.Tensor,
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
        """q(z, l | x): amortized Normal posteriors computed by the encoders (z through T for "ln").

        On minified data (``latent_qzm``/``latent_qzv`` given) ``q(u)`` is the stored Gaussian instead.
        """
        batch_index = self._batch_codes(batch_index, x)
        if self.global_guide is not None:
            self.global_guide()
        with cell_plate(x.shape[0], indices, n_obs), poutine.scale(scale=kl_weight):
            if latent_qzm is not None:
                z_loc, z_scale = stored_latent_params(latent_qzm, latent_qzv)
                q_u = dist.Normal(z_loc, z_scale).to_event(1)
            elif self.z_guide_head is None:
                z_loc, z_scale = self.latent_params(x, batch_index, cat_covs, cont_covs)
                q_u = dist.Normal(z_loc, z_scale).to_event(1)
            else:
                q_u = self.latent_posterior(x, batch_index, cat_covs, cont_covs)
            pyro.sample("z", self._latent(q_u))
            if not self.use_observed_lib_size:
                cats, cont = self._encoder_covariates(batch_index, cat_covs, cont_covs)
                l_loc, l_scale = self.l_encoder(x, *cats, cont=cont)
                pyro.sample("log_library", dist.Normal(l_loc, l_scale).to_event(1))

    def latent_params(
        self,
        x: torch.Tensor,
        batch_index: torch.Tensor | None = None,
        cat_covs: tuple[torch.Tensor, ...] = (),
        cont_covs: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Location and scale of the guide's Gaussian ``q(u | x)``, each ``(n_cells, n_latent_base)``.

        For ``latent_distribution="normal"`` this is ``q(z | x)`` itself; for ``"ln"`` it is the Gaussian
        that :attr:`latent_transform` maps onto the simplex (``n_latent - 1`` coordinates).

        Examples
        --------
        >>> vae = VAE(n_input=20, n_latent=4, latent_distribution="ln")
        >>> loc, scale = vae.latent_params(torch.poisson(torch.full((3, 20), 2.0)))
        >>> tuple(loc.shape)
        (3, 3)
        """
        batch_index = self._batch_codes(batch_index, x)
        cats, cont = self._encoder_covariates(batch_index, cat_covs, cont_covs)
        return self.z_encoder(x, *cats, cont=cont)

    def latent_posterior(
        self,
        x: torch.Tensor,
        batch_index: torch.Tensor | None = None,
        cat_covs: tuple[torch.Tensor, ...] = (),
        cont_covs: torch.Tensor | None = None,
    ) -> dist.Distribution:
        """The guide's ``q(u | x)`` of the chosen family (before :attr:`latent_transform`), batch ``(n_cells,)``.

        Examples
        --------
        >>> vae = VAE(n_input=20, n_latent=4, guide="lowrank", guide_kwargs={"rank": 2})
        >>> q = vae.latent_posterior(torch.poisson(torch.full((3, 20), 2.0)))
        >>> type(q).__name__, tuple(q.batch_shape), tuple(q.event_shape)
        ('LowRankPosterior', (3,), (4,))
        """
        batch_index = self._batch_codes(batch_index, x)
        cats, cont = self._encoder_covariates(batch_index, cat_covs, cont_covs)
        return encoder_posterior(self.z_encoder, self.z_guide_head, x, *cats, cont=cont)

    @property
    def latent_transform(self) -> dist.transforms.Transform | None:
        """The map from the Gaussian ``u`` to ``z``: None (identity) for ``"normal"``, stick-breaking for ``"ln"``.

        Examples
        --------
        >>> VAE(n_input=20, latent_distribution="ln").latent_transform(torch.zeros(1, 9)).sum().item()
        1.0
        """
        return logistic_normal_transform() if self.latent_distribution == "ln" else None

    def _latent(self, base: dist.Distribution) -> dist.Distribution:
        """The distribution of ``z`` from that of ``u``: ``base`` itself, or ``base`` pushed through ``T``."""
        transform = self.latent_transform
        return base if transform is None else dist.TransformedDistribution(base, transform)

    def _network_covariates(
        self, batch_index: torch.Tensor, cat_covs: tuple[torch.Tensor, ...], cont_covs: torch.Tensor | None
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
        """The decoder's covariates: categorical codes (one-hot inside the network) and continuous inputs.

        With ``batch_representation="embedding"`` the batch is its learned vector, appended to the
        continuous covariates, instead of a one-hot code.
        """
        if self.batch_representation == "one-hot":
            return (batch_index, *cat_covs), cont_covs
        embedded = self.compute_embedding(REGISTRY_KEYS.BATCH_KEY, batch_index)
        cont = embedded if cont_covs is None else torch.cat([cont_covs.to(embedded.dtype), embedded], dim=-1)
        return tuple(cat_covs), cont

    def _encoder_covariates(
        self, batch_index: torch.Tensor, cat_covs: tuple[torch.Tensor, ...], cont_covs: torch.Tensor | None
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
        """The encoders' covariates: those of the decoder with ``encode_covariates``, else none."""
        if not self.encode_covariates:
            return (), None
        return self._network_covariates(batch_index, cat_covs, cont_covs)

    # ----------------------------------------------------------------------------------------------
    # helpers

    def _theta(
        self,
        sampled: torch.Tensor | None,
        log_theta_cell: torch.Tensor | None,
        batch_index: torch.Tensor,
        labels: torch.Tensor | None,
    ) -> torch.Tensor:
        """Inverse dispersion per cell and gene: a decoder head, a sampled global, or a point estimate."""
        if self.dispersion == "gene-cell":
            return log_theta_cell.exp()
        theta = sampled if sampled is not None else self.log_theta.exp()
        if self.dispersion == "gene":
            return theta
        codes = batch_index if self.dispersion == "gene-batch" else (
            labels.reshape(-1) if labels is not None else torch.zeros_like(batch_index)
        )
        # index the per-batch (or per-label) rows; a leading sample dimension of `sampled` is kept
        return theta[..., codes, :]
