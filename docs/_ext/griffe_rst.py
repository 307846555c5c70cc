"""Griffe extension: render pyrovi's reStructuredText markup in docstrings as Markdown.

pyrovi's docstrings are numpydoc with a few Sphinx constructs; mkdocstrings renders Markdown, so before
rendering: ``:math:`x``` becomes ``$x$``, a ``.. math::`` block a ``$$`` block (aligned when it has
``&`` or ``\\``), a cross-reference role (``:class:`~pyrovi.priors.LatentPrior```, or a short name such
as ``:meth:`save``` resolved from the documented object outwards) a link to the object's entry in the API
reference, and a paragraph ending in ``::`` a plain colon before its indented code block.

Links are mkdocs-autorefs' *optional* references: a target the site does not document (``torch.Tensor``,
a private helper) is shown as inline code instead of failing the strict build.

Grouped parameters (``n_hidden, n_latent`` sharing one description) are split into one entry each:
griffe gives every name of a group the type and default of the first one.
"""

from __future__ import annotations

import re
import textwrap

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj):`(?P<target>[^`]+)`")
_MATH_ROLE = re.compile(r":math:`(?P<tex>[^`]+)`")
_MATH_BLOCK = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*\n(?P<body>(?:[ \t]*\n|(?P=indent)[ \t]+\S.*\n?)+)", re.MULTILINE)


def _role(match: re.Match, resolve=None) -> str:
    target = match["target"]
    shown = target[1:].rsplit(".", 1)[-1] if target.startswith("~") else target.lstrip(".")
    identifier = resolve(target.lstrip("~.")) if resolve is not None else None
    if identifier is None:
        return f"`{shown}`"
    return f'<autoref identifier="{identifier}" optional><code>{shown}</code></autoref>'


def _resolver(obj: griffe.Object):
    """Map a role's target, as written in ``obj``'s docstring, to the full path of a documented object.

    A dotted ``pyrovi.`` path is taken as it is; a short name (``save``, ``FCLayers``) is looked up in the
    object itself, then in each enclosing class, module and package, as Sphinx does.
    """

    def resolve(target: str) -> str | None:
        if target.startswith("pyrovi."):
            return target
        scope: griffe.Object | None = obj
        while scope is not None:
            try:
                scope[target]
                return f"{scope.path}.{target}"
            except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
                pass
            if scope.is_class and target in scope.all_members:  # inherited: link to where it is defined
                try:
                    return scope.all_members[target].canonical_path
                except (griffe.AliasResolutionError, griffe.CyclicAliasError):
                    return None
            scope = scope.parent
        return None

    return resolve


def _math_block(match: re.Match) -> str:
    indent = match["indent"]
    body = textwrap.dedent(match["body"]).strip("\n")
    if "&" in body or "\\\\" in body:
        body = "\\begin{aligned}\n" + body + "\n\\end{aligned}"
    block = "$$\n" + body + "\n$$"
    return textwrap.indent(block, indent) + "\n\n"


_GROUPED_SECTIONS = ("Parameters", "Other Parameters", "Attributes")
_GROUP = re.compile(r"^(?P<names>[*\w]+(?:, [*\w]+)+)(?P<rest> : .*)?$")


def split_grouped_parameters(text: str) -> str:
    """Write ``a, b`` followed by a description as ``a`` and ``b``, each with that description."""
    lines = text.split("\n")
    out: list[str] = []
    section = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if i + 1 < len(lines) and line.strip() and set(lines[i + 1].strip()) == {"-"} and not line.startswith(" "):
            section = line.strip()
            out += [line, lines[i + 1]]
            i += 2
            continue
        match = _GROUP.match(line) if section in _GROUPED_SECTIONS else None
        if match is None:
            out.append(line)
            i += 1
            continue
        j = i + 1
        while j < len(lines) and (lines[j].startswith(" ") or not lines[j].strip()):
            j += 1
        body = lines[i + 1 : j]
        while body and not body[-1].strip():
            body.pop()
        trailing = j - (i + 1) - len(body)
        for name in match["names"].split(", "):
            out += [name + (match["rest"] or ""), *body]
        out += [""] * trailing
        i = j
    return "\n".join(out)


def rst_to_markdown(text: str, resolve=None) -> str:
    """Translate the reStructuredText constructs pyrovi's docstrings use into Markdown.

    ``resolve`` maps a cross-reference's target to the identifier to link to (or ``None``: inline code).
    """
    text = split_grouped_parameters(text)
    text = _MATH_BLOCK.sub(_math_block, text)
    text = _MATH_ROLE.sub(lambda m: f"${m['tex']}$", text)
    text = _ROLE.sub(lambda m: _role(m, resolve), text)
    return re.sub(r"(\S)::$", r"\1:", text, flags=re.MULTILINE)


class RstToMarkdown(griffe.Extension):
    """Rewrite every docstring's text before mkdocstrings parses its sections.

    Runs once the whole package is loaded, so short names can be resolved against it.
    """

    def on_object(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None and not obj.is_alias:
            obj.docstring.value = rst_to_markdown(obj.docstring.value, _resolver(obj))
