"""The README's "Testing your code" section runs as written: each code block marked
``<!-- readme-test: NAME -->`` is saved as NAME and the lot run by pytest in a subprocess,
under pytest-asyncio's default (strict) mode, as in a user's project."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"<!-- readme-test: (\S+) -->\n```python\n(.*?)```", re.DOTALL)


def section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## Testing your code\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def test_the_section_has_the_mock_the_plugin_and_the_simulator_examples() -> None:
    names = [name for name, _ in BLOCK.findall(section())]
    assert names == ["test_mock.py", "conftest.py", "test_simulator.py"]


def test_the_testing_examples_pass_under_strict_mode(tmp_path: Path) -> None:
    for name, code in BLOCK.findall(section()):
        (tmp_path / name).write_text(code, encoding="utf-8")
    # A user's configuration: nothing but pytest-asyncio's default mode, spelled out.
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n"
        "filterwarnings = error\n",
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 passed" in done.stdout, done.stdout
