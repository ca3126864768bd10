#!/usr/bin/env bash
# Installs what the tests start (redis-server, PostgreSQL, and Chromium for the HTML report's
# headless browser test) from Debian's packages, only if missing.
# Idempotent. Run by `make test` before pytest (and by tests/test_report_html.py when Chromium
# is missing); the tests start each server themselves on a free loopback port
# (tests/conftest.py), never as a system service.
set -u
missing=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/bin/$1" ] || [ -x "/usr/sbin/$1" ]; }
have redis-server || missing+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || have initdb || missing+=(postgresql)
have chromium || missing+=(chromium)
have ip || missing+=(iproute2)  # ip netns: the network-namespace tests
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
echo "ensure-servers.sh: installing ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "ensure-servers.sh: not root and no sudo; install ${missing[*]} by hand" >&2
        exit 1
    fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-servers.sh: no apt-get; install ${missing[*]} by hand" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d keeps a package's own service from starting (the tests start their own).
if [ -z "$SUDO" ] && [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get update -qq >/dev/null 2>&1 || echo "ensure-servers.sh: apt-get update failed" >&2
if ! $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
    echo "ensure-servers.sh: apt-get install ${missing[*]} failed" >&2
    exit 1
fi
