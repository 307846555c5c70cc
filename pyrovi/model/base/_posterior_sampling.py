"""Posterior draws and summaries of every latent and deterministic site of a model.

The query is generic: it reads whichever sites the module's guide and model declare, through Pyro's
effect handlers. One chunk of draws is one vectorised trace: the guide traced inside a particle plate
(``pyro.plate("_particles", S)`` left of every plate of the model), then the model replayed on the
guide's draws, which also evaluates deterministic sites such as ``rho``.

Sites inside the ``"cells"`` plate are *local*: they are drawn minibatch by minibatch and returned
cell axis first. Sites outside it are *global*: they are drawn once, on the first minibatch, and every
later minibatch is conditioned on those same draws, so that draw ``s`` of a local site and draw ``s``
of a global site come from one joint posterior sample.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pyro
import torch
from anndata import AnnData
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from ..._checks import check_bool, check_int
from ..._pyro_lock import serialised_query
from ...module.base import cell_plate_dim, trace_pair

if TYPE_CHECKING:  # the contract with the model class, seen by static checkers only (see _contracts.py)
    from ._contracts import LoaderHost as _Host
else:
    _Host = object

#: Name of the plate that vectorises posterior draws.
_PARTICLE_PLATE = "_particles"
#: Default chunk size aims at this many elements of trace values per chunk (64 MiB in float32).
_CHUNK_ELEMENT_BUDGET = 2**24
_QUANTILE_PATTERN = re.compile(r"^q(\d{1,3}(?:\.\d+)?)$")
_VALID_STATS = "'mean', 'std' or 'qNN' with NN a percentage in [0, 100] (e.g. 'q05', 'q50', 'q97.5')"


@dataclass(frozen=True)
class _SiteInfo:
    """Shape facts of a site, read off one unvectorised trace."""

    ndim: int  #: dimensions of one draw (batch and event)
    event_ndim: int  #: event dimensions
    cell_dim: int | None  #: the cell plate's batch dimension (negative), ``None`` for a global site
    deterministic: bool

    @property
    def is_local(self) -> bool:
        return self.cell_dim is not None


@dataclass(frozen=True)
class _Probe:
    """What one unvectorised trace of the first minibatch tells about the program."""

    sites: dict[str, _SiteInfo]  #: latent and deterministic sites of the model, in trace order
    observed: tuple[str, ...]  #: observed (data) sites of the model
    max_plate_nesting: int
    elements_per_draw: int  #: elements of all trace values for one draw of the minibatch


# ------------------------------------------------------------------------------------------------
# arguments


def parse_summary(summary: Sequence[str]) -> dict[str, float | None]:
    """Map each statistic's name to its quantile level (``None`` for ``"mean"`` and ``"std"``).

    Examples
    --------
    >>> parse_summary(["mean", "q05", "q97.5"])
    {'mean': None, 'q05': 0.05, 'q97.5': 0.975}
    """
    if isinstance(summary, str):
        summary = [summary]
    if not isinstance(summary, (Sequence, np.ndarray)) or not all(isinstance(name, str) for name in summary):
        raise TypeError(f"summary must be a list of statistic names such as ['mean', 'q05'], got {summary!r:.80}.")
    stats: dict[str, float | None] = {}
    for name in summary:
        if name in ("mean", "std"):
            stats[name] = None
            continue
        match = _QUANTILE_PATTERN.match(str(name))
        if match is None or float(match.group(1)) > 100:
            raise ValueError(f"Unknown summary statistic {name!r}: use {_VALID_STATS}.")
        stats[name] = float(match.group(1)) / 100
    return stats


def _select_sites(probe: _Probe, return_sites: Sequence[str] | None) -> list[str]:
    """The requested sites, checked against the model's latent and deterministic sites."""
    available = list(probe.sites)
    if return_sites is None:
        return available
    if isinstance(return_sites, str):
        return_sites = [return_sites]
    observed = [name for name in return_sites if name in probe.observed]
    if observed:
        raise ValueError(
            f"{observed} are observed sites: their values are the data, not posterior draws. "
            f"Use posterior_predictive_sample for replicated data; sampleable sites are {available}."
        )
    unknown = [name for name in return_sites if name not in probe.sites]
    if unknown:
        raise ValueError(f"Unknown sites {unknown}: the model's latent and deterministic sites are {available}.")
    return list(dict.fromkeys(return_sites))  # drop duplicates, keep order


def _chunk_sizes(num_samples: int, chunk_size: int) -> list[int]:
    """Split ``num_samples`` draws into chunks of at most ``chunk_size``.

    Examples
    --------
    >>> _chunk_sizes(10, 4)
    [4, 4, 2]
    """
    full, rest = divmod(num_samples, chunk_size)
    return [chunk_size] * full + ([rest] if rest else [])


# ------------------------------------------------------------------------------------------------
# traces


def _is_sample_site(site: dict) -> bool:
    # a subsampled plate records its indices as a sample site of its own
    return site["type"] == "sample" and not site_is_subsample(site)


def _site_numel(site: dict) -> int:
    return math.prod(torch.broadcast_shapes(site["value"].shape, site["fn"].shape()))


def _probe(model: Callable, guide: Callable, args: tuple, kwargs: dict[str, Any]) -> _Probe:
    """Trace one unvectorised draw to learn the sites, their shapes and the plates in use."""
    model_trace, guide_trace = trace_pair(model, guide, args, kwargs)
    sites: dict[str, _SiteInfo] = {}
    observed: list[str] = []
    nesting, elements = 0, 0
    for trace in (model_trace, guide_trace):
        for site in trace.nodes.values():
            if not _is_sample_site(site):
                continue
            elements += _site_numel(site)
            dims = [-frame.dim for frame in site["cond_indep_stack"] if frame.vectorized]
            nesting = max(nesting, *dims, 0)
    for name, site in model_trace.nodes.items():
        if not _is_sample_site(site):
            continue
        deterministic = bool(site["infer"].get("_deterministic", False))
        if site["is_observed"] and not deterministic:
            observed.append(name)
            continue
        shape = torch.broadcast_shapes(site["value"].shape, site["fn"].shape())
        sites[name] = _SiteInfo(len(shape), len(site["fn"].event_shape), cell_plate_dim(site), deterministic)
    return _Probe(sites, tuple(observed), nesting, max(elements, 1))


def _vectorised_trace(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict[str, Any],
    num_particles: int,
    particle_dim: int,
    fixed: dict[str, torch.Tensor] | None,
) -> poutine.Trace:
    """Model trace of ``num_particles`` joint draws: the guide, then the model replayed on it.

    ``fixed`` holds global draws to reuse. Conditioning both programs on them marks those sites
    observed, so that replay leaves them alone and local sites are drawn given the same globals.
    """
    if fixed:
        guide = poutine.condition(guide, data=fixed)
        model = poutine.condition(model, data=fixed)
    with pyro.plate(_PARTICLE_PLATE, num_particles, dim=particle_dim):
        model_trace, _ = trace_pair(model, guide, args, kwargs)
    return model_trace


def _draws(site: dict, info: _SiteInfo, particle_dim: int) -> torch.Tensor:
    """A site's value under the particle plate, as ``(S, *one draw)``; local sites ``(cells, S, ...)``.

    Plates broadcast a value to the particle plate's depth, so one draw's shape is recovered by
    dropping the size-one dimensions between the particle axis and the draw's own dimensions.
    """
    value, fn = site["value"], site["fn"]
    value = value.expand(torch.broadcast_shapes(value.shape, fn.shape()))
    axis = value.dim() - info.event_ndim + particle_dim
    padding = value.dim() - 1 - info.ndim
    if axis < 0 or padding < 0:
        raise RuntimeError(
            f"Site {site['name']!r} has shape {tuple(value.shape)} under the particle plate, which does "
            f"not hold one draw of {info.ndim} dimensions per particle: the model must let its sites "
            "broadcast over extra leading sample dimensions."
        )
    value = value.movedim(axis, 0)
    if any(size != 1 for size in value.shape[1 : 1 + padding]):
        raise RuntimeError(
            f"Site {site['name']!r} has shape {tuple(value.shape)} under the particle plate, with extra "
            "dimensions that are not broadcast padding: the model must let its sites broadcast over "
            "extra leading sample dimensions (give pyro.deterministic an explicit event_dim)."
        )
    value = value.reshape(value.shape[0], *value.shape[1 + padding :])
    if info.is_local:
        value = value.movedim(1 + info.ndim - info.event_ndim + info.cell_dim, 0)
    return value


# ------------------------------------------------------------------------------------------------
# summaries


class _RunningMoments:
    """Mean and standard deviation over draws, updated chunk by chunk (Chan et al.'s pairwise update).

    Examples
    --------
    >>> moments = _RunningMoments(axis=0)
    >>> for chunk in torch.arange(10.0).split(3):
    ...     moments.update(chunk)
    >>> float(moments.mean), round(float(moments.std), 4)
    (4.5, 2.8723)
    """

    def __init__(self, axis: int):
        self.axis = axis
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def update(self, draws: torch.Tensor) -> None:
        # float64 keeps the sums of many draws exact enough; MPS has no float64
        draws = draws.float() if draws.device.type == "mps" else draws.double()
        n = draws.shape[self.axis]
        mean = draws.mean(self.axis)
        m2 = ((draws - mean.unsqueeze(self.axis)) ** 2).sum(self.axis)
        if self.count == 0:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total

    @property
    def std(self) -> torch.Tensor:
        return (self.m2 / self.count).sqrt()


def _summarise_draws(draws: np.ndarray, axis: int, stats: dict[str, float | None]) -> dict[str, np.ndarray]:
    """Statistics of ``draws`` over the sample ``axis``, in the draws' float type."""
    dtype = draws.dtype if np.issubdtype(draws.dtype, np.floating) else np.float64
    out: dict[str, np.ndarray] = {}
    for name, level in stats.items():
        if name == "mean":
            value = draws.mean(axis, dtype=np.float64)
        elif name == "std":
            value = draws.std(axis, dtype=np.float64)
        else:
            value = np.quantile(draws, level, axis=axis)
        out[name] = np.asarray(value, dtype=dtype)
    return out


def _summarise_moments(moments: _RunningMoments, stats: dict[str, float | None], dtype: torch.dtype) -> dict:
    values = {"mean": moments.mean, "std": moments.std}
    return {name: values[name].to(dtype).cpu().numpy() for name in stats}


class _LocalSite:
    """Draws of one local site over one minibatch: kept whole or reduced to running moments.

    Quantiles need every draw of a cell, so the draws are kept (on the host) when a quantile or the
    samples themselves are asked for; mean and standard deviation stream over chunks instead.
    """

    def __init__(self, keep_draws: bool):
        self.chunks: list[torch.Tensor] | None = [] if keep_draws else None
        self.moments: _RunningMoments | None = None if keep_draws else _RunningMoments(axis=1)
        self.dtype: torch.dtype | None = None

    def add(self, draws: torch.Tensor) -> None:
        self.dtype = draws.dtype if draws.is_floating_point() else torch.float64
        if self.chunks is not None:
            self.chunks.append(draws.cpu())
        else:
            self.moments.update(draws)

    def samples(self) -> np.ndarray:
        return torch.cat(self.chunks, dim=1).numpy()

    def summary(self, stats: dict[str, float | None]) -> dict[str, np.ndarray]:
        if self.chunks is not None:
            return _summarise_draws(self.samples(), 1, stats)
        return _summarise_moments(self.moments, stats, self.dtype)


def _concat_summaries(per_batch: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {stat: np.concatenate([batch[stat] for batch in per_batch]) for stat in per_batch[0]}


# ------------------------------------------------------------------------------------------------


class PosteriorSamplingMixin(_Host):
    """Posterior draws and summaries of any site of a Pyro model/guide pair.

    Works for every module whose sites broadcast over extra leading sample dimensions, which lets
    draws be vectorised by a particle plate.

    The class it is mixed into provides (:class:`~pyrovi.model.base._contracts.LoaderHost`, as
    :class:`BaseModelClass` does): ``module``, the model/guide pair; ``_make_data_loader(adata, indices,
    batch_size)``, the minibatches of a query; ``_fn_args(batch)``, the model's and guide's arguments of one.
    """

    @serialised_query
    @torch.inference_mode()
    def sample_posterior(
        self,
        num_samples: int = 1000,
        return_sites: Sequence[str] | None = None,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        summary: Sequence[str] = ("mean", "std", "q05", "q50", "q95"),
        return_samples: bool = False,
        sample_chunk_size: int | None = None,
    ) -> dict[str, Any]:
        """Draw from the posterior of latent and deterministic sites and summarise the draws.

        Each joint draw traces the guide and replays the model on it, so deterministic sites (such as
        scVI's ``rho``) are computed from the drawn latents. Sites inside the ``"cells"`` plate
        (local) are drawn minibatch by minibatch; sites outside it (global) are drawn once, on the
        first minibatch, and every minibatch is conditioned on those same draws, so draw ``s`` of every
        site belongs to one joint posterior sample.

        Parameters
        ----------
        num_samples
            Posterior draws per cell.
        return_sites
            Sites to return (default: all latent and deterministic sites of the model). Observed sites
            are never returned: their values are the data (use ``posterior_predictive_sample`` for
            replicated data). Sites that exist in the guide only are not returned either.
        adata, indices, batch_size
            Cells to use (default: all training data) and minibatch size (default
            ``pyrovi.settings.batch_size``).
        summary
            Statistics over draws when ``return_samples`` is false: ``"mean"``, ``"std"`` (standard
            deviation of the draws, ``ddof=0``) and quantiles ``"qNN"`` with ``NN`` a percentage
            (``"q05"``: 5%, ``"q97.5"``: 97.5%).
        return_samples
            Return the draws themselves rather than summaries (``summary`` is then ignored).
        sample_chunk_size
            Draws traced at once. Default: as many as keep one chunk's trace values near 2**24 elements
            (64 MiB in float32) for a minibatch; the networks' intermediate tensors add a small
            multiple of that. Memory of a chunk grows as ``batch_size * sample_chunk_size * n_genes``.

        Returns
        -------
        With ``return_samples=False``, ``{site: {stat: array}}``: a local site's arrays are
        ``(n_cells, *site_shape)`` and a global site's ``site_shape``. With ``return_samples=True``,
        ``{site: array}``: a local site is ``(n_cells, num_samples, *site_shape)`` and a global site
        ``(num_samples, *site_shape)``. ``site_shape`` is the shape of one draw for one cell (for scVI:
        ``z`` is ``(n_latent,)``, ``rho`` ``(n_genes,)``, ``log_library`` ``(1,)``).

        Notes
        -----
        Mean and standard deviation stream over chunks of draws; quantiles (and ``return_samples``)
        keep every draw of a minibatch on the host, ``batch_size * num_samples * site_shape`` values
        per site: lower ``batch_size`` or summarise fewer sites when that is large. Global sites are
        read on the first minibatch, so a deterministic global site must not depend on the minibatch.
        Draws use torch's random state: set ``pyrovi.settings.seed`` to reproduce them.

        Draws are vectorised, so a module's sites must broadcast over extra leading sample
        dimensions; in particular ``pyro.deterministic`` needs an explicit ``event_dim`` (its default,
        the value's full rank, would count the sample dimension as part of one draw).

        Examples
        --------
        >>> post = model.sample_posterior(num_samples=200, return_sites=["z", "rho"])
        >>> post["z"]["mean"].shape, post["rho"]["q95"].shape
        ((200, 10), (200, 50))
        >>> draws = model.sample_posterior(100, return_sites=["z"], return_samples=True)
        >>> draws["z"].shape
        (200, 100, 10)
        """
        check_int("num_samples", num_samples, allow_none=True, expected="a positive integer")
        check_int("sample_chunk_size", sample_chunk_size, allow_none=True, expected="a positive integer")
        check_bool("return_samples", return_samples)
        stats = parse_summary(summary)
        keep_draws = return_samples or any(level is not None for level in stats.values())
        model, guide = self.module.model, self.module.guide
        self.module.eval()

        probe: _Probe | None = None
        names: list[str] = []
        chunks: list[int] = []
        fixed: list[dict[str, torch.Tensor]] = []  # global latent draws of each chunk, as traced
        global_draws: dict[str, list[torch.Tensor]] = {}
        local_out: dict[str, list] = {}
        for batch in self._make_data_loader(adata, indices, batch_size):
            args, kwargs = self._fn_args(batch)
            if probe is None:
                probe = _probe(model, guide, args, kwargs)
                names = _select_sites(probe, return_sites)
                chunk_size = sample_chunk_size or max(1, _CHUNK_ELEMENT_BUDGET // probe.elements_per_draw)
                chunks = _chunk_sizes(num_samples, min(chunk_size, num_samples))
                global_draws = {name: [] for name in names if not probe.sites[name].is_local}
                local_out = {name: [] for name in names if probe.sites[name].is_local}
            particle_dim = -(probe.max_plate_nesting + 1)
            local = {name: _LocalSite(keep_draws) for name in local_out}
            for c, num_particles in enumerate(chunks):
                first_batch = len(fixed) <= c
                trace = _vectorised_trace(
                    model, guide, args, kwargs, num_particles, particle_dim, None if first_batch else fixed[c]
                )
                if first_batch:
                    fixed.append(self._global_latents(trace, probe))
                    for name, draws in global_draws.items():
                        draws.append(_draws(trace.nodes[name], probe.sites[name], particle_dim).cpu())
                for name, site in local.items():
                    site.add(_draws(trace.nodes[name], probe.sites[name], particle_dim))
            for name, site in local.items():
                local_out[name].append(site.samples() if return_samples else site.summary(stats))

        out: dict[str, Any] = {}
        for name in names:
            if name in local_out:
                per_batch = local_out[name]
                out[name] = np.concatenate(per_batch) if return_samples else _concat_summaries(per_batch)
            else:
                draws = torch.cat(global_draws[name]).numpy()
                out[name] = draws if return_samples else _summarise_draws(draws, 0, stats)
        return out

    @staticmethod
    def _global_latents(trace: poutine.Trace, probe: _Probe) -> dict[str, torch.Tensor]:
        """The global latent draws of a vectorised trace, shaped as traced, to condition later minibatches."""
        return {
            name: trace.nodes[name]["value"]
            for name, info in probe.sites.items()
            if not info.is_local and not info.deterministic
        }


__all__ = ["PosteriorSamplingMixin"]
