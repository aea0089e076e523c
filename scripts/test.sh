#!/usr/bin/env bash
# The project's one test command:  bash scripts/test.sh [pytest arguments]
#
# Creates .venv with python3 when it is missing, installs requirements-dev.txt and the repo (editable) into it
# when the requirements changed since the last install, then runs pytest from that venv. pytest's exit code is
# this script's exit code; "no tests collected" (exit 5) is a failure too.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3}"
VENV=.venv
STAMP="$VENV/.installed-stamp"

if [ ! -x "$VENV/bin/python" ]; then
    echo "[test.sh] creating $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi

needs_install=0
if [ ! -f "$STAMP" ]; then
    needs_install=1
else
    for f in requirements.txt requirements-dev.txt pyproject.toml; do
        if [ "$f" -nt "$STAMP" ]; then needs_install=1; fi
    done
fi
if [ "$needs_install" = 1 ]; then
    started=$SECONDS
    echo "[test.sh] installing requirements-dev.txt and the repo into $VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -r requirements-dev.txt
    # timm (a test-only reference dependency of MobileSAM's code) pulls torchvision from PyPI, which does not
    # import beside this torch build and so breaks ptflops' import; the tests use a stand-in (tests/sam_reference.py).
    "$VENV/bin/python" -m pip uninstall --quiet --yes torchvision
    "$VENV/bin/python" -m pip install --quiet -e .
    touch "$STAMP"
    echo "[test.sh] installed in $((SECONDS - started)) s"
fi

set +e
"$VENV/bin/python" -m pytest "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
    echo "[test.sh] pytest collected no tests (exit 5): treated as a failure" >&2
fi
exit "$code"
