"""Maths in the built documentation renders without network access (issue 19).

MathJax is served with the site (``docs/assets/mathjax``) and configured by ``docs/javascripts/mathjax.js``
for both sources of maths: pymdownx.arithmatex's elements on Markdown pages and the notebooks' ``$...$`` /
``$$...$$`` in mkdocs-jupyter's rendered Markdown cells. The checks on the HTML need only the docs tools
(the ``docs`` or ``dev`` extra); the check in a browser runs where Debian's ``chromium`` is installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

CONFIG_JS = "javascripts/mathjax.js"
MATHJAX_JS = "assets/mathjax/tex-svg-full.js"
# a Markdown page typeset through arithmatex, and a tutorial whose notebook writes $...$ and $$...$$
MATHS_PAGES = ["models/scvi/index.html", "tutorials/scvi_quickstart/index.html"]
_SCRIPT_SRC = re.compile(r'<script[^>]*\bsrc="([^"]*)"')
# mkdocs-jupyter puts a notebook's Markdown cells in elements of this class; the MathJax set-up typesets them
_NOTEBOOK_MARKDOWN = "jp-RenderedMarkdown"


@pytest.fixture(scope="module")
def site(built_site: Path) -> Path:
    return built_site


def _pages_with_maths(site: Path) -> list[Path]:
    pages = []
    for page in sorted(site.rglob("*.html")):
        html = page.read_text(encoding="utf-8")
        if 'class="arithmatex"' in html or _NOTEBOOK_MARKDOWN in html:
            pages.append(page)
    return pages


def test_no_maths_script_from_the_network(site: Path) -> None:
    for page in site.rglob("*.html"):
        for src in _SCRIPT_SRC.findall(page.read_text(encoding="utf-8")):
            remote = src.startswith(("http:", "https:", "//"))
            assert not (remote and re.search("mathjax|katex", src, re.IGNORECASE)), (page, src)


def test_every_page_with_maths_loads_the_served_mathjax(site: Path) -> None:
    pages = _pages_with_maths(site)
    assert {str(p.relative_to(site)) for p in pages} >= set(MATHS_PAGES)
    for page in pages:
        sources = _SCRIPT_SRC.findall(page.read_text(encoding="utf-8"))
        local = {}
        for src in sources:
            target = (page.parent / src).resolve()
            for name in (CONFIG_JS, MATHJAX_JS):
                if not src.startswith(("http:", "https:", "/")) and target == (site / name).resolve():
                    local[name] = sources.index(src)
        assert set(local) == {CONFIG_JS, MATHJAX_JS}, f"{page}: MathJax not loaded by a relative URL: {sources}"
        # the configuration has to be in place before MathJax starts
        assert local[CONFIG_JS] < local[MATHJAX_JS], page
    assert (site / MATHJAX_JS).stat().st_size > 1_000_000  # the real library, not a placeholder
    assert (site / "assets/mathjax/LICENSE").is_file()


def test_configuration_covers_arithmatex_and_notebook_delimiters(site: Path) -> None:
    config = (site / CONFIG_JS).read_text(encoding="utf-8")
    for delimiters in ('["$", "$"]', '["\\\\(", "\\\\)"]', '["$$", "$$"]', '["\\\\[", "\\\\]"]'):
        assert delimiters in config, delimiters
    selector = re.search(r'MATHS_SELECTOR = "([^"]*)"', config)
    assert selector is not None
    assert {s.strip() for s in selector[1].split(",")} == {".arithmatex", f".{_NOTEBOOK_MARKDOWN}"}
    # the notebooks' maths is still written with $ inside the class the configuration typesets
    tutorial = (site / MATHS_PAGES[1]).read_text(encoding="utf-8")
    cells = tutorial.split(f'class="jp-RenderedHTMLCommon {_NOTEBOOK_MARKDOWN}')[1:]
    assert any("$$" in cell.split("</div>")[0] for cell in cells)
    assert 'class="arithmatex"' in (site / MATHS_PAGES[0]).read_text(encoding="utf-8")


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="needs Debian's chromium (apt-get install chromium)")
@pytest.mark.parametrize("page", MATHS_PAGES)
def test_maths_typeset_in_a_browser_offline(site: Path, page: str) -> None:
    command = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        # no network: every host name fails to resolve and every proxied request goes nowhere
        "--proxy-server=127.0.0.1:9",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--virtual-time-budget=20000",
        "--dump-dom",
        (site / page).as_uri(),
    ]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=180).stdout
    assert dom.count("<mjx-container") >= 5, f"{page}: no typeset maths in the browser's DOM"
    assert "data-mjx-error" not in dom
    # outside code, no TeX is left as text
    text = re.sub(r"<mjx-container.*?</mjx-container>", "", dom, flags=re.DOTALL)
    text = re.sub(r"<(code|pre|script|style)\b.*?</\1>", "", text, flags=re.DOTALL)
    assert "\\begin{aligned}" not in text and "\\(" not in text and "$$" not in text, page
