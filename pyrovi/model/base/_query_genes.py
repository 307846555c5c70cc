"""A query's genes in the reference's order: missing ones padded with zeros, extra ones dropped."""

from __future__ import annotations

import warnings

import anndata
import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

#: Below this share of the reference's genes a query is refused: the encoders would read mostly padding.
MIN_SHARED_GENES = 0.5
#: Below this share padding is worth a louder warning.
FEW_SHARED_GENES = 0.8


def pad_query_genes(adata: AnnData, reference_genes: pd.Index, inplace: bool) -> AnnData | None:
    """``adata`` with exactly ``reference_genes``, in their order (see ``prepare_query_anndata``)."""
    if adata.is_view:
        raise ValueError(
            "The query AnnData is a view (e.g. adata[mask]); its genes cannot be changed in place. Pass a copy: "
            "query = adata[mask].copy()."
        )
    names = pd.Index(adata.var_names.astype(str))
    if names.has_duplicates:
        dups = names[names.duplicated()].unique().tolist()
        raise ValueError(
            f"The query has duplicated gene names ({dups[:5]}{' ...' if len(dups) > 5 else ''}); a gene cannot be "
            "matched to the reference's twice. Make them unique first, e.g. adata.var_names_make_unique()."
        )
    shared = names.intersection(reference_genes)
    share = len(shared) / len(reference_genes)
    if share < MIN_SHARED_GENES:
        raise ValueError(
            f"The query holds {len(shared)} of the reference model's {len(reference_genes)} genes ({share:.0%}); at "
            f"least {MIN_SHARED_GENES:.0%} are needed, since the encoders would otherwise read mostly zeros. Check that "
            "both use the same gene identifiers (symbols vs Ensembl ids; see "
            "prepare_query_anndata(..., return_reference_var_names=True))."
        )
    missing = reference_genes.difference(names, sort=False)
    if len(missing):
        loud = " The mapping may be poor." if share < FEW_SHARED_GENES else ""
        warnings.warn(
            f"The query lacks {len(missing)} of the reference model's {len(reference_genes)} genes ({1 - share:.1%}); "
            f"they are added with zero counts.{loud}",
            UserWarning,
            stacklevel=4,
        )
    if len(missing) == 0 and names.equals(reference_genes):
        if inplace and not _named_by_strings(adata.var_names):
            adata.var_names = names  # the reference's genes are strings; anndata indexes by them
        if inplace:
            return None
        # a new AnnData, as documented: setting it up must not write into the user's
        adata = adata.to_memory() if adata.isbacked else adata.copy()
        if not _named_by_strings(adata.var_names):
            adata.var_names = names
        return adata
    if adata.isbacked:
        if inplace:
            raise ValueError(
                "The query AnnData is backed (read with backed='r'), so its genes cannot be padded or reordered in "
                "place. Pass inplace=False to get an in-memory AnnData, or read the data into memory first."
            )
        adata = adata.to_memory()
    out = _with_genes(adata, names, missing, reference_genes)
    if not inplace:
        return out
    adata._init_as_actual(out)  # noqa: SLF001 - anndata's own way to replace an object's contents in place
    return None


def _with_genes(adata: AnnData, names: pd.Index, missing: pd.Index, reference_genes: pd.Index) -> AnnData:
    if len(missing):
        zeros = sparse.csr_matrix((adata.n_obs, len(missing)), dtype=np.float32)
        padding = AnnData(X=zeros, layers={k: zeros.copy() for k in adata.layers}, obs=pd.DataFrame(index=adata.obs_names))
        padding.var_names = missing
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # anndata's notes about index types of the padding
            adata = anndata.concat([adata, padding], axis=1, join="outer", merge="first", uns_merge="first")
        names = pd.Index(adata.var_names.astype(str))
    if not _named_by_strings(adata.var_names):
        # anndata refuses positional indexing of genes named by numbers: name them as matched (strings)
        adata = adata.copy() if len(missing) == 0 else adata
        adata.var_names = names
    order = names.get_indexer(reference_genes)
    return adata[:, order].copy()


def _named_by_strings(index: pd.Index) -> bool:
    return index.dtype == object and all(isinstance(name, str) for name in index)
