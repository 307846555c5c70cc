"""The module contract (:class:`BaseModuleClass`) and per-cell quantities read off Pyro traces."""

from ._base_module import BaseModuleClass
from ._per_cell import CELL_PLATE, cell_plate_dim, per_cell_elbo_terms, per_cell_log_weights, trace_pair

__all__ = ["BaseModuleClass", "CELL_PLATE", "cell_plate_dim", "trace_pair", "per_cell_elbo_terms", "per_cell_log_weights"]
