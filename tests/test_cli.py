"""The pyrovi command's help, version and output-directory guard (issue 19); training runs in test_cli_readme.py."""

import re

import pytest

import pyrovi
from pyrovi.cli import main


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"pyrovi {pyrovi.__version__}"


@pytest.mark.parametrize("argv", [["--help"], ["quickstart", "--help"]])
def test_help_is_plain_text_with_defaults(capsys, argv):
    with pytest.raises(SystemExit):
        main(argv)
    text = capsys.readouterr().out
    assert "``" not in text and not re.search(r":(class|func|meth|mod):", text)
    if argv[0] == "quickstart":
        assert "(default: 400)" in text and "(default: quickstart_output)" in text and "--overwrite" in text
    else:
        assert "--version" in text and "quickstart" in text


def test_max_epochs_zero_is_one_line(capsys, tmp_path):
    assert main(["quickstart", "--max-epochs", "0", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--max-epochs must be a positive integer" in err
    assert not (tmp_path / "o").exists()


def test_a_non_empty_output_directory_needs_overwrite(capsys, tmp_path, monkeypatch):
    (tmp_path / "latent_pbmc.png").write_bytes(b"earlier")
    assert main(["quickstart", "--max-epochs", "1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "pass --overwrite" in err and err.count("\n") == 1
    assert (tmp_path / "latent_pbmc.png").read_bytes() == b"earlier"
    # with --overwrite the guard lets it through (training itself is replaced here: it is tested elsewhere)
    seen = []
    monkeypatch.setattr(pyrovi.datasets, "pbmc68k_reduced", lambda: seen.append(True) or 1 / 0)
    with pytest.raises(ZeroDivisionError):
        main(["quickstart", "--max-epochs", "1", "--out", str(tmp_path), "--overwrite"])
    assert seen == [True]
