# The CUDA backend (src/backend/cuda) and its Triton kernels, compiled ahead of time by
# kernels/aot_build.py into C++ that embeds the cubins in trident_lib. Needs the CUDA toolkit's
# headers (the driver itself is loaded at run time, so the library still runs without one) and a
# Python with triton==3.6.0; no GPU. Included at the end of CMakeLists.txt.
if(NOT TRIDENT_CUDA)
  return()
endif()

find_package(CUDAToolkit REQUIRED)

set(TRIDENT_CUDA_ARCHS "90" CACHE STRING
  "GPU architectures to compile the kernels for, as compute capabilities: 90 = sm_90, 80;90;100")
set(TRIDENT_KERNEL_CACHE "${CMAKE_BINARY_DIR}/kernels-cache" CACHE PATH
  "Compiled kernel variants, kept by a hash of source, signature, options and target")
set(TRIDENT_KERNEL_JOBS "0" CACHE STRING "Kernel compiles run in parallel (0: one per CPU)")

# The Python that runs the kernel build: TRIDENT_KERNEL_PYTHON if given, else the repository's
# .venv if there is one, else python3.
if(NOT TRIDENT_KERNEL_PYTHON)
  if(EXISTS "${CMAKE_CURRENT_SOURCE_DIR}/.venv/bin/python3")
    set(_trident_python "${CMAKE_CURRENT_SOURCE_DIR}/.venv/bin/python3")
  else()
    find_package(Python3 REQUIRED COMPONENTS Interpreter)
    set(_trident_python "${Python3_EXECUTABLE}")
  endif()
  set(TRIDENT_KERNEL_PYTHON "${_trident_python}" CACHE FILEPATH
    "Python with triton==3.6.0 that compiles the kernels")
endif()
execute_process(
  COMMAND "${TRIDENT_KERNEL_PYTHON}" -c "import triton; print(triton.__version__)"
  OUTPUT_VARIABLE _trident_triton OUTPUT_STRIP_TRAILING_WHITESPACE
  RESULT_VARIABLE _trident_triton_rc ERROR_QUIET)
if(NOT _trident_triton_rc EQUAL 0 OR NOT _trident_triton MATCHES "^3\\.6\\.")
  message(FATAL_ERROR
    "TRIDENT_CUDA needs triton==3.6.0 to compile the GPU kernels, but ${TRIDENT_KERNEL_PYTHON} "
    "has '${_trident_triton}'. Either: python3 -m venv .venv && .venv/bin/pip install -r "
    "kernels/requirements.txt (CMake uses .venv when it exists); or pass "
    "-DTRIDENT_KERNEL_PYTHON=<python with triton 3.6.0>; or configure with -DTRIDENT_CUDA=OFF.")
endif()
message(STATUS "CUDA backend: kernels for sm_${TRIDENT_CUDA_ARCHS} with triton ${_trident_triton} "
  "(${TRIDENT_KERNEL_PYTHON})")

set(_trident_generated "${CMAKE_BINARY_DIR}/generated")
set(_trident_kernel_out "${_trident_generated}/backend/cuda")
file(GLOB _trident_kernel_inputs CONFIGURE_DEPENDS
  "${CMAKE_CURRENT_SOURCE_DIR}/kernels/*.py" "${CMAKE_CURRENT_SOURCE_DIR}/kernels/tuned/*.json")
string(REPLACE ";" "," _trident_archs "${TRIDENT_CUDA_ARCHS}")
set(_trident_jobs_arg "")
if(TRIDENT_KERNEL_JOBS GREATER 0)
  set(_trident_jobs_arg --jobs ${TRIDENT_KERNEL_JOBS})
endif()
# The stamp is the output; the generated files are byproducts that the script rewrites only when
# their content changes, so an edit to one kernel recompiles one variant set and one C++ file.
add_custom_command(
  OUTPUT "${_trident_kernel_out}/kernels.stamp"
  BYPRODUCTS "${_trident_kernel_out}/trident_kernels.h" "${_trident_kernel_out}/trident_kernels.cpp"
  COMMAND "${TRIDENT_KERNEL_PYTHON}" "${CMAKE_CURRENT_SOURCE_DIR}/kernels/aot_build.py"
    --out-dir "${_trident_kernel_out}" --cache-dir "${TRIDENT_KERNEL_CACHE}"
    --archs "${_trident_archs}" --stamp "${_trident_kernel_out}/kernels.stamp" ${_trident_jobs_arg}
  DEPENDS ${_trident_kernel_inputs}
  COMMENT "Compiling Triton kernels for sm_${TRIDENT_CUDA_ARCHS}"
  VERBATIM)
add_custom_target(trident_kernels DEPENDS "${_trident_kernel_out}/kernels.stamp")

file(GLOB TRIDENT_CUDA_SOURCES CONFIGURE_DEPENDS src/backend/cuda/*.cpp)
target_sources(trident_lib PRIVATE ${TRIDENT_CUDA_SOURCES}
  "${_trident_kernel_out}/trident_kernels.cpp")
add_dependencies(trident_lib trident_kernels)
target_include_directories(trident_lib PUBLIC "${_trident_generated}" ${CUDAToolkit_INCLUDE_DIRS})
target_compile_definitions(trident_lib PUBLIC TRIDENT_CUDA=1)
target_link_libraries(trident_lib PUBLIC ${CMAKE_DL_LIBS})

if(TRIDENT_TESTS)
  # Not registered with CTest: CI has no GPU. `make test-gpu` builds and runs it.
  file(GLOB TRIDENT_GPU_TEST_SOURCES CONFIGURE_DEPENDS tests/gpu/*.cpp)
  add_executable(trident_gpu_tests ${TRIDENT_GPU_TEST_SOURCES})
  target_compile_options(trident_gpu_tests PRIVATE ${TRIDENT_WARNINGS})
  target_link_libraries(trident_gpu_tests PRIVATE trident_lib GTest::gtest GTest::gtest_main)
  target_compile_definitions(trident_gpu_tests PRIVATE
    TRIDENT_TEST_DATA="${CMAKE_CURRENT_SOURCE_DIR}/tests/data"
    TRIDENT_MODELS_DIR="${CMAKE_CURRENT_SOURCE_DIR}/models")
endif()

# Times the kernels for bench/bench_kernels.py.
add_executable(trident_kernel_bench bench/kernel_bench.cpp)
target_compile_options(trident_kernel_bench PRIVATE ${TRIDENT_WARNINGS})
target_link_libraries(trident_kernel_bench PRIVATE trident_lib)
