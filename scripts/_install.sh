# Shell functions shared by the scripts that install what they need (sourced, never run):
# scripts/ensure-servers.sh, scripts/verifytypes.sh, benchmarks/setup.sh.

# have NAME: NAME is a command on PATH, or in /usr/bin or /usr/sbin (off a non-root PATH).
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/bin/$1" ] || [ -x "/usr/sbin/$1" ]; }

# find_chromium: prints the first Chromium found under any of its names (Debian's, Ubuntu's,
# Google's builds, the headless shell); fails when there is none.
find_chromium() {
    local name
    for name in chromium chromium-browser google-chrome google-chrome-stable headless_shell; do
        if command -v "$name" 2>/dev/null; then
            return 0
        fi
    done
    return 1
}

# apt_install WHO PACKAGE...: installs Debian's PACKAGEs with apt-get (as root, or through
# sudo -n), quietly and without recommends, keeping each package's own service from
# starting (the tests and the benchmarks start their own). Says why on stderr (as WHO) and
# returns 1 when it cannot: not root and no sudo, no apt-get, the install failed. The
# caller decides whether that is fatal.
apt_install() {
    local who=$1
    shift
    local sudo="" policy="" saved_trap status=0
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo="sudo -n"
        else
            echo "$who: not root and no sudo; install $* by hand" >&2
            return 1
        fi
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "$who: no apt-get; install $* by hand" >&2
        return 1
    fi
    echo "$who: installing $*" >&2
    # policy-rc.d answers "not now" to a package that would start its service.
    saved_trap=$(trap -p EXIT)
    if [ -z "$sudo" ] && [ -d /usr/sbin ] && [ ! -e /usr/sbin/policy-rc.d ]; then
        policy=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy"
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    # env: sudo does not pass the caller's environment on.
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 \
        || echo "$who: apt-get update failed" >&2
    $sudo env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "$@" >/dev/null || status=1
    if [ -n "$policy" ]; then
        rm -f "$policy"
        eval "${saved_trap:-trap - EXIT}"
    fi
    if [ "$status" -ne 0 ]; then
        echo "$who: apt-get install $* failed" >&2
    fi
    return "$status"
}
