#!/usr/bin/env bash
# Every public name typed for users' checkers: `pyright --verifytypes` on the installed wheel,
# failing below 100% or with a public function or class without a docstring. Run by
# `make lint`.
#
# The wheel, not the source tree: it is built (offline, with the hatchling of the project's
# virtualenv) and installed alone into a throwaway virtualenv whose dependencies come from
# the project's through a .pth line (which runs none of its .pth files, so the editable
# install stays out), and pyright runs from outside the source tree with that virtualenv
# first on PATH (--verifytypes finds packages through the `python` on PATH; --pythonpath
# does not reach it). --ignoreexternal: an untyped corner of aiohttp or rich is theirs.
#
# pyright is pinned and installed with npm into $VENV/pyright when missing; npm comes from
# Debian's packages when missing (as scripts/ensure-servers.sh installs the servers).
set -euo pipefail

PYRIGHT_VERSION=1.1.414
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
PYTHON=$VENV/bin/python
TOOLS=$VENV/pyright
PYRIGHT=$TOOLS/node_modules/.bin/pyright
. "$ROOT/scripts/_install.sh"

if [ ! -x "$PYRIGHT" ] || [ "$("$PYRIGHT" --version 2>/dev/null)" != "pyright $PYRIGHT_VERSION" ]; then
    command -v npm >/dev/null 2>&1 || apt_install verifytypes.sh nodejs npm || exit 1
    echo "verifytypes.sh: installing pyright $PYRIGHT_VERSION into $TOOLS" >&2
    npm install --loglevel=error --prefix "$TOOLS" --no-audit --no-fund --save-exact \
        "pyright@$PYRIGHT_VERSION" >&2
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
if ! "$PYTHON" -m build --wheel --no-isolation --outdir "$WORK/dist" "$ROOT" >"$WORK/build.log" 2>&1
then
    cat "$WORK/build.log" >&2
    exit 1
fi
"$PYTHON" -m venv --without-pip "$WORK/venv"
"$PYTHON" -m pip --python "$WORK/venv/bin/python" install --quiet --no-index --no-deps \
    "$WORK"/dist/*.whl
PURELIB=$("$WORK/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
"$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("purelib"))' >"$PURELIB/_deps.pth"

mkdir "$WORK/run"
cd "$WORK/run"
# pyright exits 1 when the score is under 100%: the verdict below is ours.
PATH="$WORK/venv/bin:$PATH" "$PYRIGHT" --verifytypes proactive_async --ignoreexternal \
    --outputjson >"$WORK/report.json" || true
"$PYTHON" - "$WORK/report.json" "$PURELIB" <<'EOF'
import json
import sys
from pathlib import Path

try:
    report = json.loads(Path(sys.argv[1]).read_text())
except ValueError:
    sys.exit("verifytypes.sh: pyright gave no report (run it by hand to see why)")
purelib = Path(sys.argv[2])
found = report["typeCompleteness"]
root = found.get("packageRootDirectory") or ""
if not Path(root).is_relative_to(purelib):
    sys.exit(f"verifytypes.sh: pyright did not find the installed wheel (found {root!r})")


def where(diagnostic: dict) -> str:
    if "file" not in diagnostic:
        return ""
    path = Path(diagnostic["file"])
    line = diagnostic["range"]["start"]["line"] + 1
    return f" ({path.relative_to(purelib) if path.is_relative_to(purelib) else path}:{line})"


problems = [
    f"{symbol['name']}: {diagnostic['message']}{where(diagnostic)}"
    for symbol in found["symbols"]
    for diagnostic in symbol["diagnostics"]
]
problems += [diagnostic["message"] for diagnostic in report["generalDiagnostics"]]
counts = found["exportedSymbolCounts"]
public = sum(counts.values())
score = found["completenessScore"]
undocumented = found["missingFunctionDocStringCount"] + found["missingClassDocStringCount"]
print(
    f"verifytypes: {score:.1%} of {public} public symbols typed "
    f"({counts['withAmbiguousType']} ambiguous, {counts['withUnknownType']} unknown), "
    f"{undocumented} without a docstring (pyright {report['version']})"
)
if score < 1 or undocumented or problems:
    print("\n".join(problems), file=sys.stderr)
    sys.exit(1)
EOF
