"""The module contract (:class:`BaseModuleClass`) and per-cell quantities read off Pyro traces."""

from ._base_module import BaseModuleClass
from ._cell_plate import cell_plate
from ._embedding_mixin import EmbeddingModuleMixin
from ._freeze import QueryFreezing, freeze_for_query
from ._global_guide import GlobalGuide, check_global_guide, make_global_guide, materialise_guide
from ._library import library_prior, observed_library, register_library_prior
from ._refined_proposal import refine_proposal, refined_guide
from ._surgery import graft_reference
from ._per_cell import (
    CELL_PLATE,
    cell_plate_dim,
    per_cell_elbo_terms,
    per_cell_log_likelihood,
    per_cell_log_weights,
    trace_pair,
)

__all__ = [
    "BaseModuleClass",
    "EmbeddingModuleMixin",
    "GlobalGuide",
    "make_global_guide",
    "materialise_guide",
    "CELL_PLATE",
    "cell_plate",
    "cell_plate_dim",
    "trace_pair",
    "per_cell_elbo_terms",
    "per_cell_log_weights",
    "per_cell_log_likelihood",
    "QueryFreezing",
    "graft_reference",
    "freeze_for_query",
]
