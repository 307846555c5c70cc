"""scvi-tools' ``scvi.external`` names for the pyrovi models that scvi-tools keeps there.

scvi-tools ships CellAssign under ``scvi.external``; pyrovi's is :class:`pyrovi.model.CellAssign`, and this
module offers it under the same path so that ``from scvi.external import CellAssign`` ports as
``from pyrovi.external import CellAssign``.

Examples
--------
>>> from pyrovi.external import CellAssign
>>> from pyrovi.model import CellAssign as SameClass
>>> CellAssign is SameClass
True
"""

from ..model import CellAssign

__all__ = ["CellAssign"]
