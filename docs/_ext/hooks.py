"""MkDocs hook: quote pyrovi's source code in pages, always in step with the code.

A line ``<!-- source: pyrovi/module/_vae.py::VAE.model -->`` in a page becomes a Python code block
holding that function or class (decorators included), read from the file with :mod:`ast`. A path or
name that does not exist stops the build, so a renamed function cannot leave a page quoting stale code.

The tutorials are symlinks ``docs/tutorials/*.ipynb -> ../../notebooks/*.ipynb``; a link whose notebook
is missing stops the build with the notebook's name (rather than a traceback from MkDocs).
"""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

from mkdocs.exceptions import PluginError

ROOT = Path(__file__).resolve().parents[2]
_DIRECTIVE = re.compile(r"^<!-- source: (?P<path>[\w./-]+)::(?P<name>[\w.]+) -->$", re.MULTILINE)


def _find(tree: ast.Module, qualname: str) -> ast.AST | None:
    node: ast.AST = tree
    for part in qualname.split("."):
        body = getattr(node, "body", [])
        matches = [
            child
            for child in body
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and child.name == part
        ]
        if not matches:
            return None
        node = matches[0]
    return node


def quote_source(path: str, qualname: str) -> str:
    """The source of ``qualname`` (``Class.method``) in ``path`` (relative to the repository root)."""
    file = ROOT / path
    if not file.is_file():
        raise PluginError(f"source directive: no file {path}")
    lines = file.read_text(encoding="utf-8").splitlines()
    node = _find(ast.parse("\n".join(lines)), qualname)
    if node is None:
        raise PluginError(f"source directive: {path} defines no {qualname}")
    start = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
    code = textwrap.dedent("\n".join(lines[start - 1 : node.end_lineno]))
    return f'```python title="{path}, lines {start}-{node.end_lineno}"\n{code}\n```'


def on_page_markdown(markdown: str, **kwargs) -> str:
    return _DIRECTIVE.sub(lambda m: quote_source(m["path"], m["name"]), markdown)



def on_files(files, **kwargs):
    missing = [
        f"{file.src_uri} (-> {Path(file.abs_src_path).resolve()})"
        for file in files
        if file.src_uri.endswith(".ipynb") and not Path(file.abs_src_path).exists()
    ]
    if missing:
        raise PluginError("tutorial notebooks missing: " + "; ".join(missing))
    return files
