#!/usr/bin/env bash
# Installs what the demo or the tests need: Debian packages (when root and
# missing), then a virtualenv in .venv with gapless and its extras.
#
#   bash scripts/setup.sh demo    # the demo: wrk, and gapless with its plot extra
#   bash scripts/setup.sh         # the tests: wrk, systemd, the supervisors, haproxy, the
#                                 # extras the suite exercises and the dev group (PEP 735)
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${1:-test}
case $profile in
    demo) debian_packages=(wrk); install=(-e '.[plot]') ;;
    test) debian_packages=(systemd wrk daemontools runit s6 haproxy); install=(-e '.[serve,granian,bench,plot]' --group dev) ;;
    *) echo "setup: unknown profile '$profile': give demo or test" >&2; exit 2 ;;
esac

missing=()
for pkg in "${debian_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "setup: missing Debian packages ${missing[*]} (run as root to install them); what needs them is skipped" >&2
    fi
fi

python=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    "$python" -m venv .venv
fi
# The test profile installs a superset of the demo's, so its stamp serves both.
stamp=.venv/.gapless-installed-$profile
full=.venv/.gapless-installed-test
for done in "$stamp" "$full"; do
    if [[ -f $done && ! pyproject.toml -nt $done ]]; then
        exit 0
    fi
done
.venv/bin/python -m pip install -q --upgrade pip  # --group needs pip >= 25.1
.venv/bin/python -m pip install -q "${install[@]}"
touch "$stamp"
