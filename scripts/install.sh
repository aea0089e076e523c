#!/usr/bin/env bash
# Install the project into a virtual environment:  bash scripts/install.sh [--dev]
#
# Creates .venv with python3 (or $PYTHON) when it is missing, then, unless the same files were installed into
# it already (a stamp holds their checksum):
#   pip install -r requirements.txt              (-r requirements-dev.txt with --dev: tests and Label Studio)
#   pip install -e .                             (the repo, editable; `litesam`, `litesam-backend`)
#   pip install --no-deps -r requirements-no-deps.txt
# The last step installs label-studio-ml 1.0.9 without its 2021 pins of Flask, Werkzeug, Jinja2 and
# itsdangerous; requirements.txt lists what it needs at run time. `pip check` therefore names those four
# pins (tests/test_web_stack.py), and without --dev the `attr` package label-studio-ml names but never imports.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3}"
VENV=.venv
requirements=requirements.txt
if [ "${1:-}" = "--dev" ]; then requirements=requirements-dev.txt; fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "[install] creating $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi

stamp="$VENV/.installed-stamp"
wanted="$requirements $(cat requirements*.txt pyproject.toml | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
    exit 0
fi
started=$SECONDS
echo "[install] installing $requirements, the repo (editable) and requirements-no-deps.txt into $VENV"
pip=("$VENV/bin/python" -m pip install --quiet)
"${pip[@]}" --upgrade pip
"${pip[@]}" -r "$requirements"
if [ "$requirements" = requirements-dev.txt ]; then
    # timm (a test-only dependency of MobileSAM's reference code) pulls torchvision from PyPI, which does not
    # import beside this torch build and breaks ptflops' import; the tests register a stand-in (tests/sam_reference.py).
    "$VENV/bin/python" -m pip uninstall --quiet --yes torchvision
fi
"${pip[@]}" -e .
"${pip[@]}" --no-deps -r requirements-no-deps.txt
echo "$wanted" >"$stamp"
echo "[install] installed in $((SECONDS - started)) s"
