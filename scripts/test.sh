#!/usr/bin/env bash
# README command 2: the test suite (fast tests; `bash scripts/test.sh -m slow` for the slow ones).
set -eo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec python -m pytest "$@"
