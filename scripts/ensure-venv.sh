#!/usr/bin/env bash
# Create or refresh the project's virtualenv at .venv, so `./run` and `./test` work on a
# fresh machine with nothing but Python 3.11+. Reinstalls only when pyproject.toml
# changed since the last install (a stamp file holds its hash).
# Usage: scripts/ensure-venv.sh   (from anywhere; prints nothing when up to date)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv"
python=${PYTHON:-python3}
stamp="$venv/.installed"
want=$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)

if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    exit 0
fi

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "Python 3.11 or newer is needed (found: $("$python" --version 2>&1)). Set PYTHON=/path/to/python3.11." >&2
    exit 1
fi

if [[ ! -x "$venv/bin/python" ]]; then
    echo "Creating the virtualenv in .venv (first run only) ..." >&2
    if ! "$python" -m venv "$venv" 2>/dev/null; then
        # Debian's python3 without the python3-venv package: use virtualenv from PyPI.
        rm -rf "$venv"
        "$python" -m pip install --quiet --user virtualenv
        "$python" -m virtualenv --quiet "$venv"
    fi
fi

echo "Installing dependencies into .venv ..." >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$root[dev]"
echo "$want" > "$stamp"
