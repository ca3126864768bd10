#!/usr/bin/env bash
# Installs the benchmark-only tools (wrk, nginx) from Debian's packages, only if missing.
# Idempotent; never fails the run: a tool that cannot be had makes its row say "skipped".
set -u
. "$(dirname "$0")/../scripts/_install.sh"
missing=()
have wrk || missing+=(wrk)
have nginx || missing+=(nginx)
if [ ${#missing[@]} -eq 0 ]; then
    echo "setup.sh: wrk and nginx present"
    exit 0
fi
apt_install setup.sh "${missing[@]}" || true
exit 0
