"""MkDocs hook: the benchmarks' own files join the site where they live.

``benchmarks/README.md`` and ``benchmarks/plots/*.png`` are added under the same paths, so
their relative links work on the site as on GitHub, and nothing is copied into ``docs/``
to drift. ``docs/benchmark-results.md`` gets, in place of its markers, the table of
``benchmarks/RESULTS.md`` (written by ``make bench``) and every picture the last full run
left in ``benchmarks/plots``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

_SHARED = ("benchmarks/README.md", "benchmarks/plots/*.png")
BENCHMARKS_PAGE = "benchmark-results.md"
RESULTS_MARKER = "<!-- results -->"
PLOTS_MARKER = "<!-- plots -->"
# A row's note names its picture relative to benchmarks/: "plot plots/6-simulator-limit.png".
_PLOT_NOTE = re.compile(r"\bplot (plots/[\w.-]+\.png)")


def _root(config: Any) -> Path:
    return Path(config.config_file_path).parent


def on_files(files: Files, config: Any) -> Files:
    root = _root(config)
    for pattern in _SHARED:
        for path in sorted(root.glob(pattern)):
            files.append(
                File(
                    path.relative_to(root).as_posix(),
                    src_dir=str(root),
                    dest_dir=config.site_dir,
                    use_directory_urls=config.use_directory_urls,
                )
            )
    return files


def _results(root: Path) -> str:
    """RESULTS.md without its title and byline, each plot it names linked."""
    path = root / "benchmarks" / "RESULTS.md"
    if not path.exists():
        return "No results yet: `make bench` writes them.\n"
    lines = path.read_text(encoding="utf-8").splitlines()
    body = "\n".join(
        line for line in lines if not line.startswith("# ") and not line.startswith("Written by")
    ).strip()

    def link(match: re.Match[str]) -> str:
        picture = match.group(1)
        if not (root / "benchmarks" / picture).exists():
            return match.group(0)  # a note naming a picture that is gone stays text
        return f"[plot](benchmarks/{picture})"

    return _PLOT_NOTE.sub(link, body) + "\n"


def _plots(root: Path) -> str:
    pictures = sorted(root.glob("benchmarks/plots/*.png"))
    if not pictures:
        return "No plots yet: a full `make bench` draws them (matplotlib).\n"
    return "\n".join(
        f"### {path.stem}\n\n![{path.stem}](benchmarks/plots/{path.name})\n" for path in pictures
    )


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    if page.file.src_uri != BENCHMARKS_PAGE:
        return markdown
    root = _root(config)
    for marker in (RESULTS_MARKER, PLOTS_MARKER):
        if marker not in markdown:
            raise ValueError(f"docs/{BENCHMARKS_PAGE} lost its {marker} marker")
    markdown = markdown.replace(RESULTS_MARKER, _results(root))
    return markdown.replace(PLOTS_MARKER, _plots(root))
