"""The docs site builds with ``mkdocs build --strict`` (no broken link, no docstring the
Google parser rejects, every nav page present) and documents every name of ``sdsnodes.__all__``.

A new public name goes into ``sdsnodes.__all__`` *and* into one ``docs/api/<area>.md`` page, as a
``::: sdsnodes.<Name>`` line or in the ``members`` option of its module's ``::: sdsnodes.<mod>``
block; the first test below says which names lack one. New pages join the nav by themselves.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import sdsnodes

ROOT = Path(__file__).resolve().parent.parent
API = ROOT / "docs" / "api"
BLOCK = re.compile(r"^::: (sdsnodes[\w.]*)\n((?:[ \t]+\S.*\n?)*)", re.MULTILINE)
MEMBER_ITEM = re.compile(r"^\s+- (\w+)\s*$", re.MULTILINE)
MEMBER_LIST = re.compile(r"members:\s*\[([^\]]*)\]")


def api_entries() -> dict[str, str]:
    """Each object an API page renders (``"sdsnodes.X"`` of a ``::: sdsnodes.X`` line, or
    ``"sdsnodes.mod.X"`` for ``X`` in its ``members`` option) → the page, ``docs/api/<area>.md``."""
    entries = {}
    for page in sorted(API.glob("*.md")):
        for path, options in BLOCK.findall(page.read_text()):
            entries[path] = page.name
            listed = MEMBER_ITEM.findall(options) + [
                m.strip() for inline in MEMBER_LIST.findall(options) for m in inline.split(",")
            ]
            entries.update({f"{path}.{m}": page.name for m in listed if m})
    return entries


def documented(name: str, paths: set[str] | dict[str, str]) -> bool:
    """``sdsnodes.<name>`` is among ``paths`` as itself or as the same object at another path."""
    target = getattr(sdsnodes, name)

    def same(path: str) -> bool:
        try:
            return resolve(path) is target
        except (ImportError, AttributeError):  # test_api_entries_name_real_objects reports it
            return False

    return f"sdsnodes.{name}" in paths or any(p.endswith(f".{name}") and same(p) for p in paths)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built by ``mkdocs build --strict`` (as README.md says) into a temporary folder."""
    out = tmp_path_factory.mktemp("site")
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **os.environ,
            "NO_MKDOCS_2_WARNING": "1",
            "SDS_DOCS_SEARCH": "false",  # the search index: ~20% of the build's CPU time
        },
    )
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, f"mkdocs build --strict failed ({elapsed:.1f} s):\n{proc.stderr}"
    return out


def test_every_public_name_has_an_api_entry():
    entries = api_entries()
    missing = sorted(n for n in sdsnodes.__all__ if not documented(n, entries))
    assert not missing, (
        f"add a '::: sdsnodes.<name>' line to a docs/api/*.md page for each of {missing}"
    )


def resolve(name: str) -> object:
    """The object at dotted ``name`` (a module, or an attribute of the longest module prefix)."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        return functools.reduce(getattr, parts[cut:], obj)
    raise ImportError(name)


def test_api_entries_name_real_objects():
    """An entry for a renamed or removed name is caught here, with the page to fix."""
    for name, page in api_entries().items():
        try:
            resolve(name)
        except (ImportError, AttributeError) as error:
            raise AssertionError(f"docs/api/{page}: {name} does not exist") from error


def test_strict_build_renders_every_public_name(site):
    html = "".join(p.read_text() for p in (site / "api").glob("*/index.html"))
    ids = set(re.findall(r'id="(sdsnodes[\w.]*)"', html))
    missing = [n for n in sdsnodes.__all__ if not documented(n, ids)]
    assert not missing, f"not rendered in the API reference: {missing}"
    # docstrings' Sphinx roles are shown as code, not printed as they are
    assert ":class:" not in html and ":func:" not in html


def test_strict_build_publishes_examples_and_benchmarks(site):
    """Links from docs/*.md to ../examples/*.py and ../benchmarks/README.md land on pages."""
    examples = sorted(p.stem for p in (ROOT / "examples").glob("*.py"))
    assert examples and all((site / "examples" / e / "index.html").exists() for e in examples)
    nodes = (site / "nodes" / "index.html").read_text()
    assert 'href="../examples/custom_graph/"' in nodes
    assert (site / "benchmarks" / "index.html").exists()


def test_docs_extra_and_readme_command():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert any(d.startswith("mkdocs-material") for d in extras["docs"])
    assert any(d.startswith("mkdocstrings[python]") for d in extras["docs"])
    assert any(d.startswith("sdsnodes[") and "docs" in d for d in extras["dev"])
    assert 'pip install -e ".[docs]" && mkdocs build --strict' in (ROOT / "README.md").read_text()
