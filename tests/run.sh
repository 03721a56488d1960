#!/usr/bin/env bash
# `make test` ends here: every test (service, page, collection) in one pytest run, with a junit report.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p artifacts
.venv/bin/pytest tests -p no:cacheprovider --junitxml=artifacts/junit.xml "$@"
rc=$?
# pytest's 5 means no test was collected: for CI that is a failure, not a pass.
[ "$rc" -eq 5 ] && { echo "tests/run.sh: pytest collected no tests" >&2; exit 1; }
exit "$rc"
