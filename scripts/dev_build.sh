#!/usr/bin/env bash
# Rebuild the native parts into the editable install of .venv (incremental, under a lock so that
# two developers rebuilding at once do not clobber each other).
set -euo pipefail
cd "$(dirname "$0")/.."
exec 9>/tmp/updlrm-dev-build.lock
flock 9
.venv/bin/pip install --no-build-isolation --no-deps -e . -q "$@"
