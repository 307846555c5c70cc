"""Datasets for examples and tests.

:func:`pbmc68k_reduced` and :func:`pbmc_small` load small real PBMC count matrices bundled with pyrovi
(origin and licences in ``pyrovi/datasets/data/PROVENANCE.md``); :func:`synthetic_iid` simulates counts from
scVI's generative process with known labels, batches and latent positions; :func:`synthetic_citeseq` adds
surface-protein counts from totalVI's process with known background and foreground states;
:func:`synthetic_cellassign` simulates marker-gene counts of known cell types (CellAssign's process).
"""

from ._cellassign_sim import synthetic_cellassign
from ._citeseq import synthetic_citeseq
from ._pbmc import pbmc68k_reduced, pbmc_small
from ._synthetic import synthetic_iid

__all__ = ["synthetic_iid", "synthetic_citeseq", "synthetic_cellassign", "pbmc68k_reduced", "pbmc_small"]
