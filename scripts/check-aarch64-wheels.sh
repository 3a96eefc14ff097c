#!/usr/bin/env bash
# Check that every runtime dependency of kwstream, with the "mic" extra, installs from a
# binary wheel on Raspberry Pi OS bookworm: aarch64, glibc 2.36, CPython 3.11. A Pi without a
# wheel would compile from source (hours, and a compiler and headers it may not have).
#
# It runs `pip download --only-binary=:all:` against PyPI for the whole dependency tree,
# prints the wheel each package resolved to, and exits with status 1 naming the package that
# has no such wheel (2 for a usage or network error).
#
# NOTE: pip evaluates environment markers (such as platform_machine != 'armv7l') against the
# interpreter running this script, not against the target platform. Run it on x86_64 or
# aarch64 Linux, where the markers of pyproject.toml come out as on the Pi.
set -euo pipefail

usage() {
    cat <<'USAGE'
Usage: scripts/check-aarch64-wheels.sh [--extras LIST] [--pyproject FILE]

--extras LIST     comma-separated extras to check besides the runtime dependencies
                  (default: mic; an empty LIST checks the runtime dependencies only)
--pyproject FILE  the project file to read (default: pyproject.toml of this repository)
Environment: PYTHON, the interpreter whose pip runs (default .venv/bin/python, else python3).
USAGE
}

REPO_DIR=$(cd "$(dirname "$0")/.." && pwd)
EXTRAS=mic
PYPROJECT=$REPO_DIR/pyproject.toml
while (($#)); do
    case $1 in
        --extras) [[ $# -ge 2 ]] || { usage >&2; exit 2; }; EXTRAS=$2; shift ;;
        --pyproject) [[ $# -ge 2 ]] || { usage >&2; exit 2; }; PYPROJECT=$2; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "check-aarch64-wheels: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
if [[ ! -f $PYPROJECT ]]; then
    echo "check-aarch64-wheels: $PYPROJECT: file not found" >&2
    exit 2
fi

PYTHON=${PYTHON:-}
if [[ -z $PYTHON ]]; then
    if [[ -x $REPO_DIR/.venv/bin/python ]]; then PYTHON=$REPO_DIR/.venv/bin/python; else PYTHON=python3; fi
fi
# Bookworm's glibc 2.36 runs wheels of every manylinux tag from 2_17 (manylinux2014) to
# 2_36. pip 26 does not extend a --platform tag to the older ones, so each is listed, and
# ai-edge-litert 2.3.0, for one, ships manylinux_2_27_aarch64 only. Pure-Python wheels
# (py3-none-any) match any platform.
PLATFORMS=(manylinux2014_aarch64)
for glibc_minor in $(seq 17 36); do
    PLATFORMS+=("manylinux_2_${glibc_minor}_aarch64")
done

# Runtime dependencies and the requested extras, one requirement a line.
requirements_text=$("$PYTHON" - "$PYPROJECT" "$EXTRAS" <<'PY'
import sys
import tomllib

path, extras = sys.argv[1], sys.argv[2]
with open(path, "rb") as handle:
    project = tomllib.load(handle)["project"]
requirements = list(project.get("dependencies", []))
for extra in filter(None, extras.split(",")):
    if extra not in project.get("optional-dependencies", {}):
        sys.exit(f"check-aarch64-wheels: {path} has no extra {extra!r}")
    requirements += project["optional-dependencies"][extra]
print("\n".join(requirements))
PY
) || exit 2
mapfile -t requirements <<<"$requirements_text"
if [[ -z $requirements_text ]]; then
    echo "check-aarch64-wheels: no requirements read from $PYPROJECT" >&2
    exit 2
fi

download_dir=$(mktemp -d)
trap 'rm -rf "$download_dir"' EXIT

platform_options=()
for platform in "${PLATFORMS[@]}"; do
    platform_options+=(--platform "$platform")
done

echo "check-aarch64-wheels: resolving ${#requirements[@]} requirements (extras: ${EXTRAS:-none}) for" \
    "CPython 3.11 on manylinux2014_aarch64 and manylinux_2_17_aarch64 to manylinux_2_36_aarch64"
set +e
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-cache-dir \
    --only-binary=:all: "${platform_options[@]}" \
    --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
    --dest "$download_dir" "${requirements[@]}" >"$download_dir/pip.log" 2>&1
status=$?
set -e

if ((status != 0)); then
    # pip names the first requirement it could not satisfy with an allowed wheel.
    missing=$(sed -n 's/.*Could not find a version that satisfies the requirement \([^ ]*\).*/\1/p' \
        "$download_dir/pip.log" | head -n 1)
    if [[ -n $missing ]]; then
        echo "check-aarch64-wheels: FAILED: no CPython 3.11 aarch64 wheel for $missing" >&2
        sed -n '/ERROR/p' "$download_dir/pip.log" >&2
        exit 1
    fi
    echo "check-aarch64-wheels: pip download failed (status $status):" >&2
    cat "$download_dir/pip.log" >&2
    exit 2
fi

# Every downloaded file must be a wheel. --only-binary makes pip fail rather than fetch an
# sdist, so this only guards against a change in pip's behaviour.
shopt -s nullglob
not_wheels=()
for file in "$download_dir"/*; do
    case $file in
        *.whl | */pip.log) ;;
        *) not_wheels+=("$(basename "$file")") ;;
    esac
done
if ((${#not_wheels[@]})); then
    echo "check-aarch64-wheels: FAILED: not wheels: ${not_wheels[*]}" >&2
    exit 1
fi

"$PYTHON" - "$download_dir" "${requirements[@]}" <<'PY'
import re
import sys
from pathlib import Path


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


directory = Path(sys.argv[1])
direct = {normalize(re.match(r"[A-Za-z0-9._-]+", requirement).group()): requirement
          for requirement in sys.argv[2:]}
wheels = sorted(directory.glob("*.whl"))
width = max(len(wheel.name.split("-")[0]) for wheel in wheels)
for wheel in wheels:
    name = normalize(wheel.name.split("-")[0])
    origin = f"  ({direct[name]})" if name in direct else "  (dependency)"
    print(f"{name:<{width}}  {wheel.name}{origin}")
missing = sorted(set(direct) - {normalize(w.name.split("-")[0]) for w in wheels})
if missing:
    sys.exit(f"check-aarch64-wheels: FAILED: no wheel downloaded for {', '.join(missing)}")
print(f"check-aarch64-wheels: OK, {len(wheels)} wheels, {len(direct)} direct requirements")
PY
