#!/usr/bin/env bash
# Installs what the tests start (redis-server, PostgreSQL, and Chromium for the HTML report's
# headless browser test) from Debian's packages, only if missing.
# Idempotent. Run by `make test` before pytest (and by tests/test_report_html.py when Chromium
# is missing); the tests start each server themselves on a free loopback port
# (tests/conftest.py), never as a system service.
set -u
. "$(dirname "$0")/_install.sh"
missing=()
have redis-server || missing+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || have initdb || missing+=(postgresql)
find_chromium >/dev/null || missing+=(chromium)
have ip || missing+=(iproute2)  # ip netns: the network-namespace tests
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
apt_install ensure-servers.sh "${missing[@]}"
