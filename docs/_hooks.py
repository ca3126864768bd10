"""MkDocs hook: the benchmarks' own pages and plots join the site where they live.

``benchmarks/README.md``, ``benchmarks/RESULTS.md`` (written by ``make bench``) and
``benchmarks/plots/*.png`` are added under the same paths, so their relative links work on
the site as on GitHub, and nothing is copied into ``docs/`` to drift. The plots' page is
made from whatever pictures the last full ``make bench`` left.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

_SHARED = ("benchmarks/*.md", "benchmarks/plots/*.png")
PLOTS_PAGE = "benchmarks-plots.md"

_PLOTS_INTRO = """# Plots

Every adaptive run of benchmark 6, and benchmark 9, drawn from the server's log by
`benchmarks/_plots.py`: accepted targets/s in 100 ms bins and over a sliding second, the
limit dashed, each 429 a red tick on the time axis and 429s/s on the right axis. What each
run is, and its figures, are in [How they are run](benchmarks/README.md) and
[Latest results](benchmarks/RESULTS.md).
"""


def _plots_page(pictures: list[str]) -> str:
    parts = [_PLOTS_INTRO]
    for picture in pictures:
        name = Path(picture).stem
        parts.append(f"## {name}\n\n![{name}]({picture})\n")
    if not pictures:
        parts.append("No plots yet: a full `make bench` draws them (matplotlib).\n")
    return "\n".join(parts)


def on_files(files: Files, config: Any) -> Files:
    root = Path(config.config_file_path).parent
    pictures = []
    for pattern in _SHARED:
        for path in sorted(root.glob(pattern)):
            uri = path.relative_to(root).as_posix()
            files.append(
                File(
                    uri,
                    src_dir=str(root),
                    dest_dir=config.site_dir,
                    use_directory_urls=config.use_directory_urls,
                )
            )
            if uri.endswith(".png"):
                pictures.append(uri)
    files.append(File.generated(config, PLOTS_PAGE, content=_plots_page(pictures)))
    return files
