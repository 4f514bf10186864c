#!/usr/bin/env bash
# Run benchmarks/gpu_check.py on a machine without internet that lacks some of its packages.
#
#   bash benchmarks/gpu_check.sh WHEEL_DIR [gpu_check.py arguments ...]
#
# Installs every wheel in WHEEL_DIR (no index, no dependency resolution) into a target folder ($GPU_CHECK_SITE,
# default /tmp/site), puts that folder and the repository root first on PYTHONPATH and runs the check with
# $PYTHON (default python3). How to build WHEEL_DIR: docs/benchmarks.md, "GPU check".
set -euo pipefail

if [[ $# -lt 1 || ! -d $1 ]]; then
    echo "usage: bash benchmarks/gpu_check.sh WHEEL_DIR [gpu_check.py arguments ...]" >&2
    exit 2
fi
wheels=$1
shift
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
site=${GPU_CHECK_SITE:-/tmp/site}
python=${PYTHON:-python3}

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
shopt -s nullglob
files=("$wheels"/*.whl)
if [[ ${#files[@]} -gt 0 ]] && "$python" -m pip --version >/dev/null 2>&1; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
        "${files[@]}"
elif [[ ${#files[@]} -gt 0 ]]; then
    echo "gpu_check.sh: no pip for $python; unpacking the wheels into $site" >&2
    mkdir -p "$site"
    "$python" -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]' \
        "$site" "${files[@]}"
fi
export PYTHONPATH="$site:$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" "$repo/benchmarks/gpu_check.py" "$@"
