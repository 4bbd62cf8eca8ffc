"""mkdocs hooks: publish the runnable examples and the benchmark figures in the site.

The pages in ``docs/`` link to ``../examples/<name>.py`` and ``../benchmarks/README.md``, which
are right on GitHub (the files sit beside ``docs/``) but outside the site's ``docs_dir``. This
hook adds a generated page per example (its docstring and source), an examples index, and
``benchmarks.md`` (``benchmarks/README.md`` with its links into ``docs/`` made site-relative),
then points those links at the generated pages, shows Sphinx roles left in docstrings as
plain code, and lists every ``docs/api/*.md`` page in the nav.
Hooks API: https://www.mkdocs.org/user-guide/configuration/#hooks
"""

from __future__ import annotations

import ast
import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
BENCHMARKS_README = ROOT / "benchmarks" / "README.md"

OUTSIDE_LINK = re.compile(
    r"\]\((?:\.\./)+(?:examples/(?P<example>[\w-]+)\.py|(?P<bench>benchmarks/README\.md))"
    r"(?P<anchor>#[^)\s]*)?\)"
)
DOCS_LINK = re.compile(r"\]\(\.\./docs/")
SPHINX_ROLE = re.compile(r":(?:class|func|meth|mod|attr|exc|data|obj):<code>(~?)([\w.]+)</code>")


def _example_page(path: Path) -> str:
    source = path.read_text()
    doc = ast.get_docstring(ast.parse(source)) or ""
    title = doc.split("\n", 1)[0].rstrip(".") if doc else path.name
    return (
        f"# `examples/{path.name}`\n\n{title}.\n\n"
        f"Run it from the repository root: `python examples/{path.name} --help`.\n\n"
        f"````python\n{source}````\n"  # 4 backticks: a docstring may hold 3
    )


def _examples_index(paths: list[Path]) -> str:
    lines = ["# Examples", "", "Short runnable scripts to copy from; each runs on CPU.", ""]
    for path in paths:
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        summary = doc.split("\n", 1)[0]
        lines.append(f"- [`{path.name}`]({path.stem}.md): {summary}")
    return "\n".join(lines) + "\n"


def on_config(config):
    """List every ``docs/api/*.md`` under "API reference" in the nav, those that ``mkdocs.yml``
    names first, then the others by name: a new API page needs no nav line."""
    section = next(
        e["API reference"] for e in config["nav"] if isinstance(e, dict) and "API reference" in e
    )
    listed = {e if isinstance(e, str) else next(iter(e.values())) for e in section}
    api = Path(config["docs_dir"]) / "api"
    section.extend(
        f"api/{p.name}" for p in sorted(api.glob("*.md")) if f"api/{p.name}" not in listed
    )
    return config


def on_files(files: Files, *, config) -> Files:
    """Add ``examples/index.md``, ``examples/<name>.md`` and ``benchmarks.md`` to the site."""
    paths = sorted(EXAMPLES.glob("*.py"))
    files.append(File.generated(config, "examples/index.md", content=_examples_index(paths)))
    for path in paths:
        files.append(
            File.generated(config, f"examples/{path.stem}.md", content=_example_page(path))
        )
    bench = DOCS_LINK.sub("](", BENCHMARKS_README.read_text())
    files.append(File.generated(config, "benchmarks.md", content=bench))
    return files


def on_page_markdown(markdown: str, *, page, config, files) -> str:
    """Point links to ``../examples/*.py`` and ``../benchmarks/README.md`` at the generated pages."""
    base = posixpath.dirname(page.file.src_uri)

    def replace(match: re.Match) -> str:
        target = f"examples/{match['example']}.md" if match["example"] else "benchmarks.md"
        return f"]({posixpath.relpath(target, base or '.')}{match['anchor'] or ''})"

    return OUTSIDE_LINK.sub(replace, markdown)


def on_page_content(html: str, *, page, config, files) -> str:
    """Show the docstrings' Sphinx roles (``:class:`~sdsnodes.Decoder```) as plain code
    (``Decoder``): mkdocstrings renders Markdown, where the role would be printed as is."""
    return SPHINX_ROLE.sub(
        lambda m: f"<code>{m[2].rpartition('.')[2] if m[1] else m[2]}</code>", html
    )
