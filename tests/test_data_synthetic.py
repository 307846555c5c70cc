"""pyrovi.data.synthetic_iid: scvi-tools' arguments and layout, counts that carry the labels."""

import mudata
import numpy as np
import pytest
import scipy.sparse as sp

from pyrovi.data import synthetic_iid


def test_layout_matches_scvi_tools_conventions():
    adata = synthetic_iid(batch_size=30, n_genes=20, n_proteins=7, n_regions=5, n_batches=3, seed=0)
    assert adata.shape == (90, 20)
    assert list(adata.obs_names[:3]) == ["0", "1", "2"]
    assert list(adata.var_names[:2]) == ["gene_0", "gene_1"]
    assert list(adata.obs["batch"].cat.categories) == ["batch_0", "batch_1", "batch_2"]
    assert (adata.obs["batch"].iloc[:30] == "batch_0").all()  # batch after batch
    assert adata.obsm["protein_expression"].shape == (90, 7)
    assert list(adata.uns["protein_names"]) == [f"protein_{i}" for i in range(7)]
    assert adata.obsm["accessibility"].shape == (90, 5)
    assert np.issubdtype(adata.X.dtype, np.integer) and (adata.X >= 0).all()


def test_options_sparse_coordinates_no_labels_and_mudata():
    adata = synthetic_iid(batch_size=10, n_labels=0, sparse_format="csr_matrix", generate_coordinates=True, seed=1)
    assert sp.isspmatrix_csr(adata.X) and sp.isspmatrix_csr(adata.obsm["protein_expression"])
    assert "labels" not in adata.obs and adata.obsm["coordinates"].shape == (20, 2)
    mdata = synthetic_iid(batch_size=10, return_mudata=True, protein_expression_key="prot", seed=1)
    assert isinstance(mdata, mudata.MuData)
    assert set(mdata.mod) == {"rna", "prot", "accessibility"}
    assert list(mdata.obs["batch"].unique()) == ["batch_0", "batch_1"]


def test_dropout_ratio_and_label_signal():
    adata = synthetic_iid(batch_size=500, n_genes=50, n_batches=1, n_labels=2, dropout_ratio=0.5, seed=2)
    rna = np.asarray(adata.X, dtype=float)
    # Entries are zeroed with probability 0.5 on top of NB zeros (mean 10, theta 5: P(0) ~ 0.13 at the mean).
    assert 0.5 < (rna == 0).mean() < 0.7
    # The labels differ in mean expression: a mean-profile classifier beats chance by far.
    labels = adata.obs["labels"].cat.codes.to_numpy()
    logs = np.log1p(rna)
    centres = np.stack([logs[labels == k].mean(0) for k in range(2)])
    nearest = ((logs[:, None, :] - centres) ** 2).sum(-1).argmin(1)
    assert (nearest == labels).mean() > 0.7  # chance: 0.5


def test_seed_reproducible_and_bad_arguments():
    a, b = synthetic_iid(batch_size=5, seed=3), synthetic_iid(batch_size=5, seed=3)
    np.testing.assert_array_equal(a.X, b.X)
    with pytest.raises(ValueError, match="sparse_format"):
        synthetic_iid(sparse_format="coo")
    with pytest.raises(ValueError, match="dropout_ratio"):
        synthetic_iid(dropout_ratio=1.5)
    with pytest.raises(ValueError, match="batch_size"):
        synthetic_iid(batch_size=0)
