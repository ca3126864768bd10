"""The package builds as a wheel and an sdist that twine accepts and that install and run.

Offline, as CI runs: ``python -m build --no-isolation`` uses the hatchling of this
environment (the test extra has it), and the wheel goes into a fresh virtualenv with
``--no-index --no-deps``; its dependencies (aiohttp, msgspec, ...) come from this
environment's site-packages through a ``.pth`` line, which adds the directory without
running its own ``.pth`` files, so the editable install of the source tree stays out.
"""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

import proactive_async

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _run(*args: str | Path, cwd: Path) -> str:
    done = subprocess.run(
        [str(arg) for arg in args], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _run(
        sys.executable, "-m", "build", "--no-isolation", "--sdist", "--wheel",
        "--outdir", out, ROOT, cwd=out,
    )  # fmt: skip
    return out


def _only(dist: Path, pattern: str) -> Path:
    (found,) = dist.glob(pattern)
    return found


def test_the_wheel_and_the_sdist_carry_the_version_written_in_version_py(dist: Path) -> None:
    version = proactive_async.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", version)
    wheel = _only(dist, "*.whl")
    sdist = _only(dist, "*.tar.gz")
    assert wheel.name.startswith(f"proactive_async-{version}-py3-none-any")
    assert sdist.name == f"proactive_async-{version}.tar.gz"
    with zipfile.ZipFile(wheel) as zipped:
        names = zipped.namelist()
        metadata = zipped.read(f"proactive_async-{version}.dist-info/METADATA").decode()
    assert f"Version: {version}" in metadata.splitlines()
    assert "proactive_async/py.typed" in names
    assert "proactive_async/simulator/pytest_plugin.py" in names
    assert not [name for name in names if "__pycache__" in name or name.startswith("tests/")]
    with tarfile.open(sdist) as tarred:
        members = tarred.getnames()
    prefix = f"proactive_async-{version}/"
    assert f"{prefix}pyproject.toml" in members
    assert f"{prefix}proactive_async/_version.py" in members
    assert not [name for name in members if "/.venv" in name or "__pycache__" in name]


def test_twine_check_passes_on_both(dist: Path) -> None:
    out = _run(
        sys.executable, "-m", "twine", "check", "--strict",
        _only(dist, "*.whl"), _only(dist, "*.tar.gz"), cwd=dist,
    )  # fmt: skip
    assert out.count("PASSED") == 2, out


def test_the_wheel_installs_in_a_fresh_virtualenv_and_runs(dist: Path, tmp_path: Path) -> None:
    env = tmp_path / "venv"
    venv.create(env, with_pip=False)
    python = env / "bin" / "python"
    purelib = Path(
        _run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=tmp_path)
        .strip()
    )  # fmt: skip
    # This environment's pip installs into the new one, from the wheel alone.
    _run(
        sys.executable, "-m", "pip", "--python", python, "install", "--quiet",
        "--no-index", "--no-deps", _only(dist, "*.whl"), cwd=tmp_path,
    )  # fmt: skip
    (purelib / "_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")

    where = _run(
        python, "-c",
        "import importlib.metadata as m, proactive_async as p;"
        " print(p.__file__); print(p.__version__); print(m.version('proactive-async'))",
        cwd=tmp_path,
    ).split()  # fmt: skip
    assert Path(where[0]).is_relative_to(purelib), where  # the wheel's, not the source tree's
    assert where[1] == where[2] == proactive_async.__version__

    out = _run(env / "bin" / "proactive-async", "--version", cwd=tmp_path)
    assert out.strip() == f"proactive-async {proactive_async.__version__}"
