"""scANVI (Xu et al. 2021) as a Pyro model/guide pair, the cell-type label summed out exactly.

Generative model for cell :math:`n` with label :math:`y_n \\in \\{1, \\dots, K\\}` (observed for labelled
cells), batch :math:`s_n` and counts :math:`x_n`:

.. math::

    y_n &\\sim \\mathrm{Categorical}(\\pi) \\\\
    u_n &\\sim p(u) \\quad\\text{(default } \\mathcal{N}(0, I)\\text{; any } \\texttt{prior=}\\text{)} \\\\
    z_n \\mid u_n, y_n &\\sim \\mathcal{N}(\\mu_\\psi(u_n, y_n), \\sigma^2_\\psi(u_n, y_n)) \\\\
    x_n \\mid z_n &\\sim \\text{scVI's likelihood of } x_n \\text{ given } z_n, s_n \\text{ (see } \\texttt{VAE}\\text{)}

Guide (amortized): :math:`q(z_n \\mid x_n)\\, q(y_n \\mid z_n)\\, q(u_n \\mid z_n, y_n)`, with a classifier
:math:`q(y \\mid z)` and Normal encoders. For an unlabelled cell the label is enumerated: ``TraceEnum_ELBO``
sums the ELBO over its :math:`K` values weighted by :math:`q(y \\mid z)`, exactly. A labelled cell observes
its label: :math:`\\log \\pi_{y_n}` enters the ELBO and :math:`u_n` is inferred under :math:`y_n`.

One plate holds both kinds of cells. The site ``y`` is enumerated for every cell, but for a labelled cell
both the model's and the guide's distributions of ``y`` are uniform and every term after it reads the
observed label instead of the enumerated one; its :math:`K` weights :math:`1/K` then sum the cell's terms
once, and :math:`\\log p(y) - \\log q(y) = 0`. Its label enters through a separate observed site
``y_observed``. (Masking the enumerated site instead would weight the :math:`K` copies by 1 each.)

The KL warm-up weight (``kl_weight``) scales the terms of :math:`y`, :math:`u` and the library, as scANVI's
KL terms; the terms of :math:`z` (:math:`\\log p(z \\mid u, y) - \\log q(z \\mid x)`) are not scaled, as scANVI counts
them with the reconstruction. Scaling them too would leave, early in training, the label's entropy at full
weight against down-weighted evidence, and the classifier needlessly unsure.

The classifier is also trained directly on labelled cells, as in scANVI: the model adds
:math:`\\alpha\\, w_{y_n} \\log q(y_n \\mid \\bar z_n)` per labelled cell, with :math:`\\bar z_n` the mean of
:math:`q(z_n \\mid x_n)`, :math:`\\alpha` the ``classification_ratio`` and :math:`w` per-label weights set by
the model (see ``SCANVI.train``). This term is not part of the generative model: it is the auxiliary
objective of Kingma et al. (2014), without which the classifier would learn only from the unlabelled
cells' ELBO.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType
from typing import Any, Literal

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from .._checks import check_bool, check_number
from .._constants import REGISTRY_KEYS
from ._arguments import check_option
from ._vae import VAE
from .base import cell_plate, library_prior, observed_library
from .base._minified import stored_latent_params
from .distributions import LikelihoodInputs, gene_likelihood
from .nn import Encoder, FCLayers

LabelPrior = Literal["uniform", "labelled", "learned"]


class SCANVAE(VAE):
    """The scANVI generative model and its amortized guide, the label of unlabelled cells enumerated.

    Takes :class:`~pyrovi.module.VAE`'s arguments (the counts given :math:`z` are scVI's) and:

    Parameters
    ----------
    n_labels
        Number of cell types :math:`K`. Label codes ``0 .. K-1`` are types; code ``K`` (or any code
        ``>= K``) marks an unlabelled cell.
    linear_classifier
        A single linear map from :math:`z` to the label logits instead of a one-hidden-layer network.
    classifier_parameters
        Arguments of the classifier network (``n_hidden``, ``n_layers``, ``dropout_rate``).
    label_proportions
        :math:`\\pi`: ``None`` (uniform) or ``K`` proportions (e.g. of the labelled cells).
    learn_label_proportions
        Learn :math:`\\pi` (a point estimate, as the other parameters) from its starting value.
    classification_ratio
        :math:`\\alpha`, the weight of the classification term (scvi-tools' default 50).
    **vae_kwargs
        :class:`~pyrovi.module.VAE`'s arguments (``n_input``, ``n_batch``, ``n_hidden``, ``n_latent``,
        ``gene_likelihood``, ``prior`` for :math:`u`, ...); ``latent_distribution`` must be ``"normal"``.

    Examples
    --------
    >>> module = SCANVAE(n_input=30, n_labels=3, n_latent=4)
    >>> x = torch.poisson(torch.full((6, 30), 2.0))
    >>> labels = torch.tensor([[0], [1], [3], [2], [3], [3]])  # 3: unlabelled
    >>> args, kwargs = SCANVAE._get_fn_args_from_batch({"X": x, "labels": labels, "indices": torch.arange(6)})
    >>> loss = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(module.model, module.guide,
    ...                                                                          *args, **kwargs)
    >>> bool(torch.isfinite(loss))
    True
    """

    local_latent_sites = ("z", "u", "log_library")
    modality_sites = MappingProxyType({"rna": ("x",), "labels": ("y_observed",)})
    proposal_sites = ("z", "log_library")

    def marginal_args(self, modality: str, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
        """Without the label among the evidence, every cell is read as unlabelled: its label is summed out.

        The observed label conditions ``u`` and ``z``; leaving its term out of the weights would give
        ``p(x | y)`` for labelled cells, not the marginal ``p(x)`` that models without labels estimate.

        Examples
        --------
        >>> module = SCANVAE(n_input=30, n_labels=3)
        >>> _, kwargs = module.marginal_args("rna", (torch.ones(2, 30),), {"labels": torch.tensor([[1], [3]])})
        >>> kwargs["labels"].tolist()  # 3: unlabelled
        [[3], [3]]
        """
        labels = kwargs.get("labels")
        if modality in ("joint", "labels") or labels is None:
            return args, kwargs
        return args, {**kwargs, "labels": torch.full_like(labels, self.n_types)}

    def __init__(
        self,
        n_input: int,
        n_labels: int,
        linear_classifier: bool = False,
        classifier_parameters: dict[str, Any] | None = None,
        label_proportions: Sequence[float] | None = None,
        learn_label_proportions: bool = False,
        classification_ratio: float = 50.0,
        **vae_kwargs: Any,
    ):
        if vae_kwargs.get("latent_distribution", "normal") != "normal":
            raise ValueError("SCANVAE supports latent_distribution='normal' only (z is Gaussian given u and y).")
        if vae_kwargs.get("guide", "normal") != "normal":
            raise ValueError(
                f"SCANVAE supports guide='normal' only (got guide={vae_kwargs['guide']!r}): its guide of z given x is "
                "the mean-field Normal; train SCVI with the richer guide instead."
            )
        if isinstance(n_labels, bool) or not isinstance(n_labels, int) or n_labels < 1:
            raise ValueError(f"n_labels must be a positive integer (the number of cell types), got {n_labels!r}.")
        check_bool("linear_classifier", linear_classifier)
        check_bool("learn_label_proportions", learn_label_proportions)
        check_number("classification_ratio", classification_ratio, 0.0)
        super().__init__(n_input, n_labels=n_labels + 1, **vae_kwargs)
        self.n_types = n_labels
        self.classification_ratio = float(classification_ratio)
        n_latent, n_hidden = self.n_latent, self._n_hidden(vae_kwargs)
        options = _classifier_options(classifier_parameters, n_hidden)
        if linear_classifier:
            self.classifier = nn.Linear(n_latent, n_labels)
        else:
            self.classifier = nn.Sequential(
                FCLayers(n_latent, options["n_hidden"], n_layers=options["n_layers"], n_hidden=options["n_hidden"],
                         dropout_rate=options["dropout_rate"], use_batch_norm=options["use_batch_norm"],
                         use_layer_norm=options["use_layer_norm"]),  # fmt: skip
                nn.Linear(options["n_hidden"], n_labels),
            )
        # q(u | z, y) and p(z | u, y): the label enters as a one-hot covariate; each network normalises as the
        # encoders or the decoder of the counts do (use_batch_norm / use_layer_norm), as in scANVI
        batch_norm, layer_norm = vae_kwargs.get("use_batch_norm", "both"), vae_kwargs.get("use_layer_norm", "none")
        shared = {"n_cat_list": [n_labels], "n_layers": vae_kwargs.get("n_layers", 1), "n_hidden": n_hidden,
                  "log1p_input": False}  # fmt: skip
        self.encoder_z2_z1 = Encoder(n_latent, n_latent, dropout_rate=vae_kwargs.get("dropout_rate", 0.1),
                                     use_batch_norm=batch_norm in ("encoder", "both"),
                                     use_layer_norm=layer_norm in ("encoder", "both"), **shared)  # fmt: skip
        self.decoder_z1_z2 = Encoder(n_latent, n_latent, dropout_rate=0.0, use_batch_norm=batch_norm in ("decoder", "both"),
                                     use_layer_norm=layer_norm in ("decoder", "both"), **shared)  # fmt: skip
        proportions = torch.full((n_labels,), 1.0 / n_labels)
        if label_proportions is not None:
            proportions = torch.as_tensor(label_proportions, dtype=torch.float32).reshape(-1)
            if proportions.numel() != n_labels or not torch.isfinite(proportions).all() or (proportions < 0).any():
                raise ValueError(f"label_proportions must be {n_labels} non-negative numbers, got {label_proportions!r}.")
            proportions = (proportions + 1e-8) / (proportions + 1e-8).sum()
        self.learn_label_proportions = learn_label_proportions
        if learn_label_proportions:
            self.label_logits = nn.Parameter(proportions.log())
        else:
            self.register_buffer("label_logits", proportions.log())
        #: per-label weight of the classification term, set by the model from its training cells
        self.register_buffer("classification_weights", torch.ones(n_labels))

    @staticmethod
    def _n_hidden(vae_kwargs: dict[str, Any]) -> int:
        return int(vae_kwargs.get("n_hidden", 128))

    # ----------------------------------------------------------------------------------------------
    # labels

    def _labels(self, labels: torch.Tensor | None, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each cell's label code (0 for unlabelled cells, never read) and whether it is labelled."""
        if labels is None:
            codes = torch.full((x.shape[0],), self.n_types, dtype=torch.long, device=x.device)
        else:
            codes = labels.reshape(-1).long()
        labelled = codes < self.n_types
        return torch.where(labelled, codes, torch.zeros_like(codes)), labelled

    def _label_probs(self, labelled: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """``probs`` for unlabelled cells, uniform for labelled ones (see the module docstring)."""
        uniform = torch.full_like(probs, 1.0 / self.n_types)
        return torch.where(labelled.unsqueeze(-1), uniform, probs)

    @staticmethod
    def _effective(labelled: torch.Tensor, observed: torch.Tensor, enumerated: torch.Tensor) -> torch.Tensor:
        """The label every later term reads: the observed one for labelled cells, else the enumerated one."""
        return torch.where(labelled, observed, enumerated)

    def classify(
        self,
        x: torch.Tensor,
        batch_index: torch.Tensor | None = None,
        cat_covs: tuple[torch.Tensor, ...] = (),
        cont_covs: torch.Tensor | None = None,
        use_posterior_mean: bool = True,
        latent_qzm: torch.Tensor | None = None,
        latent_qzv: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits of :math:`q(y \\mid z)` at the posterior mean of :math:`z` (or a draw), ``(n_cells, K)``.

        ``latent_qzm``/``latent_qzv`` (minified data) replace the encoder's posterior.

        Examples
        --------
        >>> module = SCANVAE(n_input=30, n_labels=3)
        >>> module.classify(torch.poisson(torch.full((2, 30), 2.0))).shape
        torch.Size([2, 3])
        """
        if latent_qzm is not None:
            loc, scale = stored_latent_params(latent_qzm, latent_qzv)
        else:
            loc, scale = self.latent_params(x, batch_index, cat_covs, cont_covs)
        z = loc if use_posterior_mean else dist.Normal(loc, scale).rsample()
        return self.classifier(z)

    def label_log_probs(
        self, x: torch.Tensor, labels: torch.Tensor | None = None, batch_index: torch.Tensor | None = None,
        cat_covs: tuple[torch.Tensor, ...] = (), cont_covs: torch.Tensor | None = None, **_: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        """``(log q(y | x), label codes, labelled mask)`` of a minibatch: what the training plan scores.

        Examples
        --------
        >>> module = SCANVAE(n_input=30, n_labels=3)
        >>> log_probs, codes, labelled = module.label_log_probs(torch.ones(2, 30), torch.tensor([[1], [3]]))
        >>> log_probs.shape, labelled.tolist()
        (torch.Size([2, 3]), [True, False])
        """
        codes, labelled = self._labels(labels, x)
        batch_index = self._batch_codes(batch_index, x)
        return torch.log_softmax(self.classify(x, batch_index, cat_covs, cont_covs), -1), codes, labelled

    def _per_label(self, net: Encoder, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``net(inputs, labels)`` for labels of any leading shape (an enumeration dimension in front)."""
        lead = torch.broadcast_shapes(inputs.shape[:-1], labels.shape)
        flat_inputs = inputs.expand(*lead, inputs.shape[-1]).reshape(-1, inputs.shape[-1])
        loc, scale = net(flat_inputs, labels.expand(lead).reshape(-1))
        return loc.reshape(*lead, -1), scale.reshape(*lead, -1)

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
        """p(x, z, u, y): the label, then u, then z given both, then the counts given z (scVI's)."""
        batch_index = self._batch_codes(batch_index, x)
        observed, labelled = self._labels(labels, x)
        p_u = self.prior(x.shape[0], batch_index=batch_index, labels=observed, cat_covs=cat_covs, cont_covs=cont_covs)
        theta = pyro.sample("dispersion", self._dispersion_prior()) if self._dispersion_prior_name else None
        pi = torch.softmax(self.label_logits, -1)
        with cell_plate(x.shape[0], indices, n_obs):
            with poutine.scale(scale=kl_weight):
                enumerated = pyro.sample("y", dist.Categorical(self._label_probs(labelled, pi.expand(x.shape[0], -1))))
                pyro.sample("y_observed", dist.Categorical(pi).mask(labelled), obs=observed)
                y = self._effective(labelled, observed, enumerated)
                u = pyro.sample("u", p_u)
            z_loc, z_scale = self._per_label(self.decoder_z1_z2, u, y)
            z = pyro.sample("z", dist.Normal(z_loc, z_scale).to_event(1))
            log_library = None
            with poutine.scale(scale=kl_weight):
                if self.use_observed_lib_size:
                    library = observed_library(x, size_factor)
                else:
                    log_library = pyro.sample("log_library", library_prior(self, batch_index))
                    library = log_library.exp()
            cats, cont = self._network_covariates(batch_index, cat_covs, cont_covs)
            log_rho, log_theta_cell, zi_logits = self.decoder.decode_log(z, *cats, cont=cont)
            rho = pyro.deterministic("rho", log_rho.exp(), event_dim=1)
            theta = self._theta(theta, log_theta_cell, batch_index, labels) if self._uses_dispersion else None
            inputs = LikelihoodInputs(library, rho, theta, zi_logits, log_rho=log_rho, log_library=log_library)
            pyro.sample("x", gene_likelihood(self.gene_likelihood, inputs).to_event(1), obs=x)
            if self.classification_ratio > 0 and self.training:
                self._classification_term(x, batch_index, cat_covs, cont_covs, observed, labelled)

    def _classification_term(self, x, batch_index, cat_covs, cont_covs, observed, labelled) -> None:  # noqa: ANN001
        """:math:`\\alpha w_y \\log q(y \\mid \\bar z)` for each labelled cell (an auxiliary objective, see above)."""
        log_q = torch.log_softmax(self.classify(x, batch_index, cat_covs, cont_covs), -1)
        term = log_q.gather(-1, observed.unsqueeze(-1)).squeeze(-1) * self.classification_weights[observed]
        pyro.factor("classification", self.classification_ratio * torch.where(labelled, term, torch.zeros_like(term)))

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
        """q(z | x) q(y | z) q(u | z, y): the label of unlabelled cells enumerated in parallel.

        On minified data (``latent_qzm``/``latent_qzv`` given) ``q(z)`` is the stored Gaussian.
        """
        batch_index = self._batch_codes(batch_index, x)
        observed, labelled = self._labels(labels, x)
        if self.global_guide is not None:
            self.global_guide()
        with cell_plate(x.shape[0], indices, n_obs):
            if latent_qzm is not None:
                z_loc, z_scale = stored_latent_params(latent_qzm, latent_qzv)
            else:
                z_loc, z_scale = self.latent_params(x, batch_index, cat_covs, cont_covs)
            z = pyro.sample("z", dist.Normal(z_loc, z_scale).to_event(1))
            probs = torch.softmax(self.classifier(z), -1)
            with poutine.scale(scale=kl_weight):
                enumerated = pyro.sample("y", dist.Categorical(self._label_probs(labelled, probs)),
                                         infer={"enumerate": "parallel"})  # fmt: skip
                y = self._effective(labelled, observed, enumerated)
                u_loc, u_scale = self._per_label(self.encoder_z2_z1, z, y)
                pyro.sample("u", dist.Normal(u_loc, u_scale).to_event(1))
                if not self.use_observed_lib_size:
                    cats, cont = self._encoder_covariates(batch_index, cat_covs, cont_covs)
                    l_loc, l_scale = self.l_encoder(x, *cats, cont=cont)
                    pyro.sample("log_library", dist.Normal(l_loc, l_scale).to_event(1))


def _classifier_options(given: dict[str, Any] | None, n_hidden: int) -> dict[str, Any]:
    """The classifier network's settings (scvi-tools' ``classifier_parameters`` names), checked."""
    options = {"n_hidden": n_hidden, "n_layers": 1, "dropout_rate": 0.1, "use_batch_norm": False,
               "use_layer_norm": True, "logits": True}  # fmt: skip
    given = dict(given or {})
    unknown = sorted(set(given) - set(options))
    if unknown:
        raise ValueError(f"classifier_parameters has {unknown}; it takes {sorted(options)}.")
    options.update(given)
    if options["logits"] is not True:
        raise ValueError(
            "classifier_parameters={'logits': False} asks for a classifier returning probabilities (scvi-tools' "
            "behaviour before 1.1); pyrovi's classifier returns logits, and predict(soft=True) gives probabilities."
        )
    return options
