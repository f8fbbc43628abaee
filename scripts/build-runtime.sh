#!/usr/bin/env bash
# Build the bot's runtime: a virtualenv at PREFIX holding the project and its runtime
# dependencies only (no dev extras), installed as a regular (non-editable) package.
#
# Why a script instead of RUN lines in the Dockerfile: the Dockerfile's builder stage and
# scripts/check-docker.sh (CI, where no Docker engine exists) run this same file, so CI
# proves the image's install step works.
#
# Usage: scripts/build-runtime.sh PREFIX [SOURCE_DIR]
#   PREFIX      where the venv is created (the Dockerfile uses /opt/venv)
#   SOURCE_DIR  the project directory holding pyproject.toml (default: current directory)
# Environment: PYTHON selects the interpreter that creates the venv (default python3).
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 || -z "$1" ]]; then
    echo "usage: $0 PREFIX [SOURCE_DIR]" >&2
    exit 2
fi
prefix=$1
src=${2:-.}
python=${PYTHON:-python3}

if [[ ! -f "$src/pyproject.toml" ]]; then
    echo "$0: no pyproject.toml in $src" >&2
    exit 2
fi

"$python" -m venv "$prefix"
# --no-cache-dir: nothing to reuse in a one-shot build, and it keeps the layer small.
"$prefix/bin/python" -m pip install --quiet --no-cache-dir --disable-pip-version-check "$src"
# Fail the build on conflicting dependency pins instead of at the bot's first import.
"$prefix/bin/python" -m pip check --disable-pip-version-check >/dev/null
