# vivace_kernel_library(name sources...): the shared library of vivace's torch operators. Built for the
# machine it is built on (-march=native where the compiler takes it, VIVACE_NATIVE=OFF for a portable build),
# as inductor compiles the artifacts' own kernels for it; the inner loops are `omp simd` along channels.
# at::parallel_for is an inline `omp parallel` in torch's headers (AT_PARALLEL_OPENMP): without OpenMP the
# operators would run on one thread whatever torch.set_num_threads says. The runtime resolves to the libgomp.so.1
# that torch already loaded, so both share one thread pool and one thread count.
include(CheckCXXCompilerFlag)
find_package(OpenMP REQUIRED COMPONENTS CXX)
option(VIVACE_NATIVE "compile vivace's operators for this machine's vector instructions" ON)
check_cxx_compiler_flag("-march=native" VIVACE_HAS_MARCH_NATIVE)

function(vivace_kernel_library name)
  add_library(${name} SHARED ${ARGN})
  target_include_directories(${name} PUBLIC "${CMAKE_CURRENT_FUNCTION_LIST_DIR}/../lammps_plugin/core")
  target_link_libraries(${name} PRIVATE "${TORCH_LIBRARIES}" OpenMP::OpenMP_CXX)
  target_compile_options(${name} PRIVATE -O3 -fopenmp-simd)
  if(VIVACE_NATIVE AND VIVACE_HAS_MARCH_NATIVE)
    target_compile_options(${name} PRIVATE -march=native)
  endif()
endfunction()
