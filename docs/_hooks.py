"""MkDocs hook: the benchmarks' own pages and plots join the site where they live.

``benchmarks/README.md``, ``benchmarks/RESULTS.md`` (written by ``make bench``) and
``benchmarks/plots/*.png`` are added under the same paths, so their relative links work on
the site as on GitHub, and nothing is copied into ``docs/`` to drift.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

_SHARED = ("benchmarks/*.md", "benchmarks/plots/*.png")


def on_files(files: Files, config: Any) -> Files:
    root = Path(config.config_file_path).parent
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
