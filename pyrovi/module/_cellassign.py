"""CellAssign (Zhang et al. 2019): marker-based cell typing, the cell type marginalised exactly.

Generative model for cell :math:`n`, marker gene :math:`g`, type :math:`c`, with a binary marker matrix
:math:`\\rho_{gc}`, size factor :math:`s_n` and design row :math:`d_n` (intercept, batch, covariates):

.. math::

    \\pi &\\sim \\mathrm{Dirichlet}(\\alpha) \\\\
    \\delta_{gc} &= \\delta_{\\min} + e^{\\eta_{gc}}, \\quad \\eta_{gc} \\sim
        \\mathcal{N}(m_\\delta, s_\\delta^2) \\quad\\text{where } \\rho_{gc} = 1 \\\\
    c_n &\\sim \\mathrm{Categorical}(\\pi) \\quad\\text{(enumerated: summed out exactly)} \\\\
    \\log \\mu_{ngc} &= \\log s_n + d_n^\\top \\beta_g + \\rho_{gc} \\delta_{gc} \\\\
    x_{ng} \\mid c_n = c &\\sim \\mathrm{NB}(\\mu_{ngc}, \\phi(\\mu_{ngc})), \\quad
        \\phi(\\mu) = \\textstyle\\sum_{b=1}^{10} a_b \\exp(-(\\mu - m_b)^2 / (2 w^2))

:math:`\\delta_{\\min}` (2 by default) is the least increase of a marker's log mean in its type. The
dispersion follows CellAssign's radial-basis trend in the mean (centres :math:`m_b` spread over the
range of the counts, width :math:`w` their spacing, weights :math:`a_b` learned). :math:`\\pi` and
:math:`\\eta` are global latent variables with a MAP guide (``AutoDelta``); :math:`\\beta`, :math:`a`,
:math:`m_\\delta`, :math:`s_\\delta` are parameters. Training maximises the exact marginal likelihood
(``TraceEnum_ELBO`` with the type enumerated in the model), or runs CellAssign's EM (see
:class:`~pyrovi.train.ExpectationMaximization`).
"""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import config_enumerate
from pyro.infer.autoguide import AutoDelta, init_to_mean
from torch import nn

from .._checks import check_number
from .._constants import REGISTRY_KEYS
from .base import BaseModuleClass, cell_plate, make_global_guide, materialise_guide
from .distributions import negative_binomial

N_BASIS = 10



def check_cellassign_priors(min_delta: float, dirichlet_concentration: float) -> None:
    """``min_delta`` is a finite number >= 0 and ``dirichlet_concentration`` a finite number > 0.

    Examples
    --------
    >>> check_cellassign_priors(2.0, 0.0)
    Traceback (most recent call last):
    ...
    ValueError: dirichlet_concentration must be a finite number in (0.0, ∞), got 0.0.
    """
    # delta = min_delta + exp(eta) is the least log over-expression of a marker: below 0 a marker may be lower
    # in its own type; a Dirichlet needs a positive concentration
    check_number("min_delta", min_delta, 0.0)
    check_number("dirichlet_concentration", dirichlet_concentration, 0.0, low_open=True)

class CellAssignModule(BaseModuleClass):
    """The CellAssign model, with the cell type enumerated in the model and a MAP guide of the globals.

    Parameters
    ----------
    marker_matrix
        ``(n_markers, n_types)`` 0/1 array; an all-zero column is the ``"other"`` type.
    gene_index
        Columns of the registered counts holding the marker genes, in the marker matrix's row order.
    n_batch, n_cats_per_cov, n_continuous_cov
        Design: intercept, batch one-hot (first batch as reference), categorical covariates one-hot,
        continuous covariates.
    min_delta
        Least log fold change of a marker in its type.
    dirichlet_concentration
        Concentration of the Dirichlet prior on the type proportions. The default 1 (uniform) keeps the
        MAP estimate away from the simplex boundary; CellAssign's 0.01 puts the prior's mode there.
    count_range
        ``(min, max)`` of the marker counts: spreads the dispersion trend's basis centres.
    log_mean_init
        ``(n_markers,)`` initial intercepts (log mean expression per unit size factor).

    Examples
    --------
    >>> module = CellAssignModule(np.eye(3), np.arange(3))  # three types, one marker gene each
    >>> module.n_markers, module.n_types
    (3, 3)
    >>> module.global_sites
    ('type_proportions', 'log_delta')
    """

    local_latent_sites = ()
    #: per-cell ELBO terms need every latent in the guide; the type is enumerated in the model instead
    per_cell_terms = False

    def __init__(
        self,
        marker_matrix: np.ndarray,
        gene_index: np.ndarray,
        n_batch: int = 1,
        n_cats_per_cov: list[int] | None = None,
        n_continuous_cov: int = 0,
        min_delta: float = 2.0,
        dirichlet_concentration: float = 1.0,
        count_range: tuple[float, float] = (0.0, 100.0),
        log_mean_init: np.ndarray | None = None,
    ):
        check_cellassign_priors(min_delta, dirichlet_concentration)
        super().__init__()
        rho = torch.as_tensor(np.asarray(marker_matrix), dtype=torch.float32)
        self.n_markers, self.n_types = rho.shape
        self.register_buffer("rho", rho)
        self.register_buffer("gene_index", torch.as_tensor(np.asarray(gene_index), dtype=torch.long))
        self.register_buffer("marker_positions", rho.flatten().nonzero().squeeze(-1))
        self.n_batch, self.n_cats_per_cov = n_batch, list(n_cats_per_cov or [])
        self.n_continuous_cov = n_continuous_cov
        self.min_delta, self.dirichlet_concentration = float(min_delta), float(dirichlet_concentration)
        n_design = 1 + (n_batch - 1) + sum(n - 1 for n in self.n_cats_per_cov) + n_continuous_cov
        beta = torch.zeros(n_design, self.n_markers)
        if log_mean_init is not None:
            beta[0] = torch.as_tensor(np.asarray(log_mean_init), dtype=torch.float32)
        self.beta = nn.Parameter(beta)
        self.delta_loc = nn.Parameter(torch.zeros(()))
        self.delta_log_scale = nn.Parameter(torch.zeros(()))
        low, high = count_range
        centres = torch.linspace(float(low), float(max(high, low + 1.0)), N_BASIS)
        self.register_buffer("basis_centres", centres)
        self.register_buffer("basis_width", (centres[1] - centres[0]).clamp_min(1.0))
        self.log_basis_weights = nn.Parameter(torch.zeros(N_BASIS))

        self.global_sites = ("type_proportions", "log_delta")
        # MAP, started at the prior means (uniform proportions, delta = min_delta + 1): no random
        # initialisation, so the fit does not depend on the order of genes or types
        self.global_guide = make_global_guide(
            self._global_model, self.global_sites, lambda m: AutoDelta(m, init_loc_fn=init_to_mean)
        )
        materialise_guide(self.global_guide)

    # ----------------------------------------------------------------------------------------------

    @staticmethod
    def _get_fn_args_from_batch(batch: dict[str, torch.Tensor]) -> tuple[tuple, dict]:
        cat_covs = batch.get(REGISTRY_KEYS.CAT_COVS_KEY)
        kwargs = {
            "size_factor": batch[REGISTRY_KEYS.SIZE_FACTOR_KEY],
            "batch_index": batch.get(REGISTRY_KEYS.BATCH_KEY),
            "cat_covs": tuple(cat_covs.unbind(-1)) if cat_covs is not None else (),
            "cont_covs": batch.get(REGISTRY_KEYS.CONT_COVS_KEY),
            "indices": batch.get(REGISTRY_KEYS.INDICES_KEY),
        }
        return (batch[REGISTRY_KEYS.X_KEY],), kwargs

    def _global_model(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Type proportions and marker over-expression: the global latents."""
        pi = pyro.sample(
            "type_proportions",
            dist.Dirichlet(self.rho.new_full((self.n_types,), self.dirichlet_concentration)),
        )
        n_markers = self.marker_positions.numel()
        eta = pyro.sample(
            "log_delta",
            dist.Normal(self.delta_loc * self.rho.new_ones(n_markers), self.delta_log_scale.exp()).to_event(1),
        )
        delta = self.rho.new_zeros(self.n_markers * self.n_types)
        delta = delta.index_put((self.marker_positions,), self.min_delta + eta.exp())
        return pi, delta.reshape(self.n_markers, self.n_types)

    def _design(self, x, batch_index, cat_covs, cont_covs) -> torch.Tensor:
        columns = [x.new_ones(x.shape[0], 1)]
        if self.n_batch > 1:
            columns.append(F.one_hot(batch_index.reshape(-1).long(), self.n_batch)[:, 1:].to(x.dtype))
        for codes, n in zip(cat_covs, self.n_cats_per_cov):
            if n > 1:
                columns.append(F.one_hot(codes.reshape(-1).long(), n)[:, 1:].to(x.dtype))
        if self.n_continuous_cov:
            columns.append(cont_covs.to(x.dtype))
        return torch.cat(columns, -1)

    def dispersion(self, mu: torch.Tensor) -> torch.Tensor:
        """CellAssign's dispersion trend: a positive sum of Gaussian bumps in the mean."""
        bumps = torch.exp(-((mu.unsqueeze(-1) - self.basis_centres) ** 2) / (2 * self.basis_width**2))
        return (bumps * self.log_basis_weights.exp()).sum(-1) + 1e-4

    @config_enumerate
    def model(
        self,
        x: torch.Tensor,
        size_factor: torch.Tensor,
        batch_index: torch.Tensor | None = None,
        cat_covs: tuple[torch.Tensor, ...] = (),
        cont_covs: torch.Tensor | None = None,
        indices: torch.Tensor | None = None,
        n_obs: int | None = None,
        kl_weight: float = 1.0,
    ) -> None:
        """p(x, c, pi, delta): the type of each cell is a discrete latent, enumerated."""
        pi, delta = self._global_model()
        x = x[..., self.gene_index]
        base = torch.log(size_factor.reshape(-1, 1)) + self._design(x, batch_index, cat_covs, cont_covs) @ self.beta
        with cell_plate(x.shape[0], indices, n_obs):
            cell_type = pyro.sample("cell_type", dist.Categorical(pi))
            # with enumeration cell_type has shape (n_types, 1): one hypothesis per type, broadcast
            mu = torch.exp(base + (self.rho * delta).T[cell_type])
            pyro.sample("x", negative_binomial(mu, self.dispersion(mu)).to_event(1), obs=x)

    def guide(self, x: torch.Tensor, size_factor: torch.Tensor, **kwargs) -> None:
        """MAP of the global latents; the cell types need no guide (enumerated in the model)."""
        self.global_guide()

    # ----------------------------------------------------------------------------------------------

    def type_log_posterior(self, x: torch.Tensor, size_factor: torch.Tensor, **kwargs) -> torch.Tensor:
        """``log p(c_n = c | x_n)`` under the fitted globals, ``(n_cells, n_types)``, computed exactly."""
        kwargs = {k: v for k, v in kwargs.items() if k not in ("n_obs", "kl_weight")}
        guide_trace = poutine.trace(self.guide).get_trace(x, size_factor, **kwargs)
        enumerated = poutine.enum(poutine.replay(self.model, trace=guide_trace), first_available_dim=-2)
        trace = poutine.trace(enumerated).get_trace(x, size_factor, **kwargs)
        joint = trace.nodes["cell_type"]["fn"].log_prob(trace.nodes["cell_type"]["value"])  # (n_types, 1)
        joint = joint + trace.nodes["x"]["fn"].log_prob(trace.nodes["x"]["value"])  # (n_types, n_cells)
        return torch.log_softmax(joint, 0).T
