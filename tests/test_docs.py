"""The documentation site keeps up with the package (the build itself is `make docs`)."""

from __future__ import annotations

import re
from pathlib import Path

import proactive_async

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def test_every_public_name_has_its_place_in_the_api_reference() -> None:
    page = (DOCS / "reference" / "proactive_async.md").read_text(encoding="utf-8")
    documented = re.findall(r"^::: proactive_async\.(\w+)$", page, flags=re.MULTILINE)
    assert sorted(documented) == sorted(proactive_async.__all__)


def test_every_page_and_recipe_is_reachable_from_the_site() -> None:
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = {
        path.relative_to(DOCS).as_posix()
        for path in DOCS.rglob("*.md")
        if "__pycache__" not in path.parts
    }
    in_nav = set(re.findall(r"^\s+- (?:[^:\n]+: )?(\S+\.md)$", config, re.MULTILINE))
    assert pages == in_nav - {"benchmarks/README.md"}  # added by docs/_hooks.py
    recipes_page = (DOCS / "guides" / "recipes.md").read_text(encoding="utf-8")
    included = set(re.findall(r'^--8<-- "docs/recipes/(\w+\.py)"$', recipes_page, re.MULTILINE))
    assert included == {path.name for path in (DOCS / "recipes").glob("*.py")}


README = ROOT / "README.md"
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_the_readme_links_only_files_that_exist() -> None:
    """Relative links go to the repository's files, which GitHub shows (the site's pages)."""
    links = [link.split("#")[0] for link in LINK.findall(README.read_text(encoding="utf-8"))]
    relative = [link for link in links if link and "://" not in link]
    assert relative
    assert [link for link in relative if not (ROOT / link).is_file()] == []


def test_the_readme_links_every_guide_and_the_benchmarks_page() -> None:
    linked = set(LINK.findall(README.read_text(encoding="utf-8")))
    guides = {f"docs/{path.relative_to(DOCS).as_posix()}" for path in DOCS.glob("guides/*.md")}
    assert guides | {"docs/benchmark-results.md", "docs/installing.md"} <= linked


def test_the_readme_keeps_the_markers_make_bench_writes_its_table_between() -> None:
    text = README.read_text(encoding="utf-8")
    start, end = text.index("<!-- bench-table -->"), text.index("<!-- /bench-table -->")
    assert "| benchmark | SDK | baseline |" in text[start:end]
