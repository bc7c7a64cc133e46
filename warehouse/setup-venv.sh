#!/usr/bin/env bash
# Creates (or refreshes) the Python venv of the warehouse runners in warehouse/.venv
# (git-ignored; override with TIERING_WAREHOUSE_VENV): duckdb always, pyspark with --spark.
# Reinstalls only when a requirements file changed. Prints the venv's python path last.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${TIERING_WAREHOUSE_VENV:-$(pwd)/.venv}
want=(requirements.txt)
[[ "${1:-}" == "--spark" ]] && want+=(requirements-spark.txt)
[[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV" >&2
for req in "${want[@]}"; do
    stamp="$VENV/.installed-$(basename "$req")"
    if ! cmp -s "$req" "$stamp"; then
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" >&2
        cp "$req" "$stamp"
    fi
done
echo "$VENV/bin/python"
