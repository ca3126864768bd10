"""The README's "Installing", "Testing your code" and "Tracing" sections run as written.

In "Testing your code", each code block marked ``<!-- readme-test: NAME -->`` is saved as
NAME and the lot run by pytest in a subprocess, under pytest-asyncio's default (strict)
mode, as in a user's project. In "Tracing", the block marked ``<!-- readme-run: NAME -->``
is run as a script. The last test does all three in a fresh virtualenv holding the wheel
(offline, as ``tests/test_packaging.py`` does): each ``pip install`` line of "Installing"
and "Tracing" is run there, from the wheel, with the dependencies this environment has.
"""

from __future__ import annotations

import email.parser
import re
import shlex
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCK = re.compile(r"<!-- readme-test: (\S+) -->\n```python\n(.*?)```", re.DOTALL)
SCRIPT = re.compile(r"<!-- readme-run: (\S+) -->\n```python\n(.*?)```", re.DOTALL)
CONSOLE = re.compile(r"```console\n(.*?)```", re.DOTALL)
PYTEST_INI = (
    # A user's configuration: nothing but pytest-asyncio's default mode, spelled out.
    "[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n"
    "filterwarnings = error\n"
)


def section(title: str = "Testing your code") -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def pip_installs(title: str) -> list[list[str]]:
    """The arguments of each ``pip install`` line of a section's console blocks."""
    lines = [line for block in CONSOLE.findall(section(title)) for line in block.splitlines()]
    return [
        shlex.split(line, comments=True)[2:] for line in lines if line.startswith("pip install ")
    ]


def write_testing_examples(where: Path) -> None:
    for name, code in BLOCK.findall(section()):
        (where / name).write_text(code, encoding="utf-8")
    (where / "pytest.ini").write_text(PYTEST_INI, encoding="utf-8")


def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(arg) for arg in args], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def test_the_section_has_the_mock_the_plugin_and_the_simulator_examples() -> None:
    names = [name for name, _ in BLOCK.findall(section())]
    assert names == ["test_mock.py", "conftest.py", "test_simulator.py"]


def test_the_testing_examples_pass_under_strict_mode(tmp_path: Path) -> None:
    write_testing_examples(tmp_path)
    done = run(
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", tmp_path, cwd=tmp_path
    )
    assert "4 passed" in done.stdout, done.stdout


def test_the_tracing_section_installs_the_extra_and_prints_a_client_span(tmp_path: Path) -> None:
    assert pip_installs("Tracing") == [["proactive-async[otel]", "opentelemetry-sdk"]]
    [(name, code)] = SCRIPT.findall(section("Tracing"))
    (tmp_path / name).write_text(code, encoding="utf-8")
    out = run(sys.executable, name, cwd=tmp_path).stdout
    assert '"name": "POST /api/Conversation/proactive-conversation"' in out
    assert '"kind": "SpanKind.CLIENT"' in out and '"http.response.status_code": 200' in out
    assert "simulator-token" not in out  # the simulator's token, never in a span


@pytest.mark.slow
def test_install_testing_and_tracing_run_as_written_in_a_fresh_virtualenv(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    run(
        sys.executable,
        "-m",
        "build",
        "--no-isolation",
        "--wheel",
        "--outdir",
        dist,
        ROOT,
        cwd=tmp_path,
    )
    (wheel,) = dist.glob("*.whl")
    env = tmp_path / "venv"
    venv.create(env, with_pip=False)
    python = env / "bin" / "python"
    purelib = Path(
        run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=tmp_path)
        .stdout.strip()
    )  # fmt: skip
    # This environment's pip installs into the new one, offline: the wheel from dist, and
    # the dependencies from this environment's site-packages through a .pth line (which
    # does not run that directory's own .pth files: the source tree's editable install
    # stays out).
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-index"]
    run(*pip, "--no-deps", wheel, cwd=tmp_path)
    (purelib / "_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")

    with zipfile.ZipFile(wheel) as zipped:
        name = next(n for n in zipped.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(zipped.read(name).decode())
    extras = set(metadata.get_all("Provides-Extra") or ())
    installs = pip_installs("Installing")
    assert ["proactive-async[otel]"] in installs
    for arguments in installs:  # each line, from the wheel (the extras' packages are not here)
        named = re.findall(r"\[(\w[\w,-]*)\]", " ".join(arguments))
        assert {extra for group in named for extra in group.split(",")} <= extras, arguments
        run(*pip, "--find-links", dist, "--no-deps", *arguments, cwd=tmp_path)
    for arguments in pip_installs("Tracing"):  # whole: every requirement is resolved
        run(*pip, "--find-links", dist, *arguments, cwd=tmp_path)

    where = run(python, "-c", "import proactive_async as p; print(p.__file__)", cwd=tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(purelib)  # the wheel's, not the source's

    project = tmp_path / "project"
    project.mkdir()
    write_testing_examples(project)
    done = run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", project, cwd=project)
    assert "4 passed" in done.stdout, done.stdout

    [(script, code)] = SCRIPT.findall(section("Tracing"))
    (project / script).write_text(code, encoding="utf-8")
    out = run(python, script, cwd=project).stdout
    assert '"name": "POST /api/Conversation/proactive-conversation"' in out
