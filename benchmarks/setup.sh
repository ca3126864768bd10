#!/usr/bin/env bash
# Installs the benchmark-only tools (wrk, nginx) from Debian's packages, only if missing.
# Idempotent; never fails the run: a tool that cannot be had makes its row say "skipped".
set -u
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
# nginx lives in /usr/sbin, which may be off a non-root PATH.
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
if [ ${#missing[@]} -eq 0 ]; then
    echo "setup.sh: wrk and nginx present"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup.sh: apt-get unavailable; missing: ${missing[*]}" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "setup.sh: not root and no sudo; missing: ${missing[*]}" >&2
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null 2>&1 || echo "setup.sh: apt-get update failed" >&2
# policy-rc.d keeps the package's own nginx service from starting on port 80.
if [ -d /usr/sbin ] && [ ! -e /usr/sbin/policy-rc.d ] && [ -z "$SUDO" ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 \
    || echo "setup.sh: apt-get install ${missing[*]} failed" >&2
exit 0
