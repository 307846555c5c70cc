"""`import pyrovi` stays light: subpackages (and Lightning with them) load on first use."""

import subprocess
import sys


def test_import_pyrovi_does_not_load_lightning_until_needed():
    code = (
        "import sys, pyrovi; "
        "assert 'lightning' not in sys.modules, 'lightning imported eagerly'; "
        "pyrovi.model.SCVI; "
        "assert 'lightning' in sys.modules; "
        "import pyro; assert pyro.settings.get('module_local_params')"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_attribute_is_an_attribute_error():
    import pyrovi

    try:
        pyrovi.not_a_subpackage
    except AttributeError as err:
        assert "not_a_subpackage" in str(err)
    else:
        raise AssertionError("expected AttributeError")
    assert "model" in dir(pyrovi)


def test_scvi_tools_module_paths():
    """Code written for scvi-tools ports by renaming the package: its module paths exist in pyrovi."""
    import pyrovi
    from pyrovi.data import synthetic_iid
    from pyrovi.external import CellAssign

    assert CellAssign is pyrovi.model.CellAssign
    assert pyrovi.external.CellAssign is CellAssign
    assert synthetic_iid(batch_size=3, n_genes=4, seed=0).shape == (6, 4)
