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
