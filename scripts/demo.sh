#!/usr/bin/env bash
# The README's demo command: installs what it needs, then runs `gapless demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh demo
exec .venv/bin/gapless demo "$@"
