"""The package's version: the one place it is written.

Hatchling reads it from here when it builds the wheel and the sdist
(``[tool.hatch.version]`` in pyproject.toml), so the installed metadata
(``importlib.metadata.version("proactive-async")``) and ``__version__`` cannot differ,
and a source tree that is not installed still knows its version.
"""

__version__ = "0.1.0"
