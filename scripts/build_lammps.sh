#!/usr/bin/env bash
# Builds a LAMMPS with the PLUGIN package (and KOKKOS when asked) from a LAMMPS source tree you have, then
# vivace's plugins against it:
#
#     bash scripts/build_lammps.sh LAMMPS_SOURCE PREFIX [--kokkos openmp | --kokkos cuda ARCH] [--jobs N]
#
# LAMMPS_SOURCE: a LAMMPS source tree (a git checkout or release tarball; the folder holding cmake/ and src/).
# PREFIX: where everything is installed:
#     PREFIX/bin/lmp                          LAMMPS (MPI: the one CMake finds first, e.g. OpenMPI or MPICH)
#     PREFIX/lib/vivace/vivaceplugin.so       pair_style allegro / nequip  (plugin load ...)
#     PREFIX/lib/vivace/vivacekkplugin.so     pair_style allegro/kk (Kokkos builds)
#     PREFIX/vivace-lammps.env                LMP, MPIEXEC, KOKKOS, VIVACE_PLUGIN[_KK] for tests and scripts
# ARCH (cuda): a Kokkos architecture name such as HOPPER90, AMPERE80, VOLTA70.
# torch is taken from the python that runs vivace (PYTHON, default: python3 on PATH); it needs
# `import torch` to work.  Kokkos is built first from LAMMPS_SOURCE/lib/kokkos and installed in PREFIX, so
# that LAMMPS and vivace compile against the same Kokkos configuration.
set -euo pipefail

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 2 ] || usage
source_dir=$(realpath "$1")
prefix=$(realpath -m "$2")
shift 2
kokkos="" arch="" jobs=$(nproc)
while [ $# -gt 0 ]; do
  case "$1" in
    --kokkos) kokkos=$2; shift 2
      if [ "$kokkos" = cuda ]; then [ $# -ge 1 ] || usage; arch=$1; shift; fi ;;
    --jobs) jobs=$2; shift 2 ;;
    *) usage ;;
  esac
done
case "$kokkos" in ""|openmp|cuda) ;; *) echo "build_lammps.sh: --kokkos takes openmp or cuda, not '$kokkos'" >&2; exit 2 ;; esac
[ -f "$source_dir/cmake/CMakeLists.txt" ] && [ -d "$source_dir/src" ] ||
  { echo "build_lammps.sh: $source_dir is not a LAMMPS source tree (no cmake/CMakeLists.txt)" >&2; exit 2; }
# LAMMPS's install step copies these; a tree without them fails only after the whole compile
for part in doc/lammps.1 potentials ${kokkos:+lib/kokkos/CMakeLists.txt}; do
  [ -e "$source_dir/$part" ] ||
    { echo "build_lammps.sh: $source_dir lacks $part: use a complete LAMMPS source tree" >&2; exit 2; }
done
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
torch_prefix=$("$python" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)') ||
  { echo "build_lammps.sh: '$python -c \"import torch\"' failed; set PYTHON to vivace's python" >&2; exit 2; }
mkdir -p "$prefix"
log="$prefix/build.log"
: > "$log"
step() { echo "build_lammps.sh: $1 ($(date +%T); log: $log)"; }
run() { "$@" >> "$log" 2>&1 || { tail -40 "$log"; echo "build_lammps.sh: failed: $*" >&2; exit 1; }; }

common=(-DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$prefix" -DCMAKE_INSTALL_LIBDIR=lib
        -DCMAKE_INSTALL_RPATH="$prefix/lib"
        -DBUILD_SHARED_LIBS=ON -DCMAKE_CXX_STANDARD=17 -DCMAKE_CXX_STANDARD_REQUIRED=ON)
lammps_opts=(-DPKG_PLUGIN=ON -DBUILD_MPI=ON -DLAMMPS_EXCEPTIONS=ON -DBUILD_OMP=ON)
if [ -n "$kokkos" ]; then
  kokkos_opts=(-DKokkos_ENABLE_SERIAL=ON -DKokkos_ENABLE_OPENMP=ON)
  if [ "$kokkos" = cuda ]; then
    wrapper="$source_dir/lib/kokkos/bin/nvcc_wrapper"
    kokkos_opts+=(-DKokkos_ENABLE_CUDA=ON -DKokkos_ENABLE_CUDA_LAMBDA=ON "-DKokkos_ARCH_${arch}=ON"
                  -DCMAKE_CXX_COMPILER="$wrapper")
    lammps_opts+=(-DCMAKE_CXX_COMPILER="$wrapper")
  fi
  step "Kokkos ($kokkos) from $source_dir/lib/kokkos"
  run cmake -S "$source_dir/lib/kokkos" -B "$prefix/build-kokkos" "${common[@]}" "${kokkos_opts[@]}"
  run cmake --build "$prefix/build-kokkos" -j "$jobs" --target install
  lammps_opts+=(-DPKG_KOKKOS=ON -DEXTERNAL_KOKKOS=ON -DKokkos_DIR="$prefix/lib/cmake/Kokkos")
fi

step "LAMMPS (PLUGIN${kokkos:+, KOKKOS $kokkos})"
run cmake -S "$source_dir/cmake" -B "$prefix/build-lammps" "${common[@]}" "${lammps_opts[@]}"
run cmake --build "$prefix/build-lammps" -j "$jobs" --target install

step "vivace plugins"
run cmake -S "$here/lammps_plugin" -B "$prefix/build-vivace" "${common[@]}" -DLAMMPS_SOURCE_DIR="$source_dir" \
  -DCMAKE_PREFIX_PATH="$prefix;$torch_prefix"
run cmake --build "$prefix/build-vivace" -j "$jobs" --target install

mpiexec=$(sed -n 's/^MPIEXEC_EXECUTABLE:FILEPATH=//p' "$prefix/build-lammps/CMakeCache.txt")
{
  echo "LMP=$prefix/bin/lmp"
  echo "MPIEXEC=${mpiexec:-mpirun}"
  echo "KOKKOS=$kokkos"
  echo "VIVACE_PLUGIN=$prefix/lib/vivace/vivaceplugin.so"
  [ -n "$kokkos" ] && echo "VIVACE_PLUGIN_KK=$prefix/lib/vivace/vivacekkplugin.so"
} > "$prefix/vivace-lammps.env"
step "done: $prefix/vivace-lammps.env"
cat "$prefix/vivace-lammps.env"
