"""The benchmark scripts keep running: each is run end to end on tiny data (figures are not checked here).

Timing belongs in ``benchmarks/``, not in tests; these tests only guard the scripts against breaking as
pyrovi changes (a benchmark that fails on the day it is needed measures nothing). scvi-tools is not
installed in CI, so the comparison runs with ``--tools pyrovi``.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
_ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


def _run(script: str, *args: str) -> str:
    out = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                         env=_ENV, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def _json_line(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_compare_scvi_tools_runs_pyrovi_alone():
    figures = _json_line(_run("compare_scvi_tools.py", "--tools", "pyrovi", "--n-cells", "300", "--n-genes",
                              "60", "--epochs", "2", "--repeats", "1", "--likelihoods", "zinb", "--batch-sizes",
                              "64"))
    (run,) = figures["runs"]
    assert run["tool"] == "pyrovi" and run["likelihood"] == "zinb" and run["batch_size"] == 64
    assert run["cells_per_s"] > 0 and run["latent_s"] > 0 and run["peak_rss_mb"] > 0
    assert run["elbo_val"] < 0  # an ELBO per cell of count data: a log-probability bound, below zero
    assert figures["ratios"] == [] and figures["import_s"]["pyrovi"] > 0


def test_scale_trains_one_epoch_from_a_backed_file():
    figures = _json_line(_run("scale.py", "--n-cells", "600", "--n-genes", "40", "--batch-size", "128",
                              "--backed"))
    assert figures["backed"] and figures["n_cells"] == 600 and figures["nnz"] > 0
    assert figures["epoch_s"] > 0 and figures["peak_rss_mb"] > 0 and figures["file_mb"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the script would measure it")
def test_gpu_benchmark_without_a_gpu_says_so_and_succeeds():
    assert "no CUDA GPU" in _run("gpu.py")


def test_gpu_benchmark_runs_on_the_cpu_with_the_data_on_the_device():
    figures = _json_line(_run("gpu.py", "--accelerator", "cpu", "--n-cells", "400", "--n-genes", "40",
                              "--epochs", "2", "--likelihoods", "nb", "--batch-sizes", "128"))
    (run,) = figures["runs"]
    assert figures["device"].startswith("CPU") and run["cells_per_s"] > 0 and run["latent_s"] > 0


def _query_mapping(*tools: str) -> dict:
    figures = _json_line(_run("query_mapping.py", "--tools", *tools, "--epochs", "2", "--query-epochs", "2",
                              "--seeds", "0"))
    assert set(figures["mean_accuracy"]) == {"cell_type", "louvain"}
    for accuracy in figures["mean_accuracy"].values():
        assert set(accuracy) == set(tools) and all(0.0 <= a <= 1.0 for a in accuracy.values())
    (run, *_) = figures["runs"]
    assert run["n_reference"] + run["n_query"] == 700 and run["reference_s"] > 0 and run["query_s"] > 0
    return figures


def test_query_mapping_runs_pyrovi_alone():
    _query_mapping("pyrovi")


@pytest.mark.skipif(importlib.util.find_spec("scvi") is None, reason="scvi-tools is a benchmark-only extra")
def test_query_mapping_runs_both_tools_side_by_side():
    figures = _query_mapping("pyrovi", "scvi-tools")
    assert [r["tool"] for r in figures["runs"]] == ["pyrovi", "scvi-tools"]


def _scanvi(*tools: str, plot: Path | None = None) -> dict:
    figures = _json_line(_run("scanvi.py", "--tools", *tools, "--epochs", "2", "--scanvi-epochs", "2",
                              "--query-epochs", "2", "--seeds", "0", "--label-key", "louvain",
                              *(["--plot", str(plot)] if plot else [])))  # fmt: skip
    for experiment in ("hidden", "query"):
        louvain = figures["mean"][experiment]["louvain"]
        assert set(louvain["accuracy"]) == set(tools) and all(0.0 <= a <= 1.0 for a in louvain["accuracy"].values())
        assert all(0.0 <= e <= 1.0 for e in louvain["ece"].values())
    hidden, query = (next(r for r in figures["runs"] if r["experiment"] == e) for e in ("hidden", "query"))
    assert hidden["n_train"] == 700 and 345 <= hidden["n_scored"] <= 355  # half of each louvain cluster hidden
    assert query["n_train"] + query["n_scored"] == 700 and query["query_s"]["louvain"] > 0
    assert figures["scanvi_epochs"] == {"hidden": 2, "query": 2}
    return figures


def test_scanvi_runs_pyrovi_alone(tmp_path):
    _scanvi("pyrovi", plot=tmp_path / "reliability.png")
    assert (tmp_path / "reliability.png").stat().st_size > 0


@pytest.mark.skipif(importlib.util.find_spec("scvi") is None, reason="scvi-tools is a benchmark-only extra")
def test_scanvi_runs_both_tools_side_by_side():
    figures = _scanvi("pyrovi", "scvi-tools")
    assert [r["tool"] for r in figures["runs"]] == ["pyrovi", "scvi-tools", "pyrovi", "scvi-tools"]


def test_compare_models_runs_a_small_grid(tmp_path):
    out = tmp_path / "results.json"
    stdout = _run("compare_models.py", "--data", "sim:200x40", "--likelihoods", "nb", "poisson", "--guides",
                  "normal", "flow", "--objectives", "elbo", "iwelbo", "--num-particles", "2", "--seeds", "0", "1",
                  "--epochs", "2", "--n-particles", "25", "--json", str(out))  # fmt: skip
    results = json.loads(out.read_text())
    assert json.loads(stdout.strip().splitlines()[-1]) == results
    assert [(r["seed"], r["proposal"]) for r in results] == [(0, "guide"), (0, "refined"), (1, "guide"), (1, "refined")]
    for result in results:
        assert len(result["table"]) == 8 and result["n_cells"] == 40  # train_size 0.8 of 200 cells held out
        assert result["baseline"] == "nb/normal/elbo" and result["gains"]["nb/normal/elbo"]["gain_per_cell"] == 0
        assert all(seconds > 0 for seconds in result["seconds_per_epoch"].values())
    assert "guide proposal, against nb/normal/elbo" in stdout and "refined proposal, against" in stdout
