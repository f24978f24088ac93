# Batched heterogeneous LoRA kernels (engine/kernels): a grouped CPU path and,
# where ADAPTERD_WITH_CUDA is ON, CUDA kernels (and the decode attention). Included from
# engine/CMakeLists.txt; paths are relative to engine/.
set(ADAPTERD_KERNELS_SOURCES kernels/lora_kernels.cc kernels/decode_attention.cc)
if(ADAPTERD_WITH_CUDA)
  enable_language(CUDA)
  # TORCH_CUDA_ARCH_LIST ("9.0", "8.0;9.0", "9.0+PTX") -> CUDA_ARCHITECTURES ("90", "80;90").
  set(_kernels_archs "")
  set(_kernels_list "${TORCH_CUDA_ARCH_LIST}")
  if(NOT _kernels_list)
    set(_kernels_list "$ENV{TORCH_CUDA_ARCH_LIST}")
  endif()
  string(REPLACE " " ";" _kernels_list "${_kernels_list}")
  foreach(_arch IN LISTS _kernels_list)
    string(REPLACE "+PTX" "" _arch "${_arch}")
    string(REPLACE "." "" _arch "${_arch}")
    if(_arch)
      list(APPEND _kernels_archs ${_arch})
    endif()
  endforeach()
  if(NOT _kernels_archs)
    set(_kernels_archs 90)
  endif()
  set(CMAKE_CUDA_ARCHITECTURES ${_kernels_archs})
  list(APPEND ADAPTERD_KERNELS_SOURCES kernels/lora_kernels.cu kernels/decode_gemm.cu
       kernels/stream_gemm.cu kernels/decode_attention.cu kernels/blaslt_gemm.cc)
  # Device code is optimised by ptxas at -O3 whatever the host flags; add
  # -Xptxas=-v locally to read registers and spills (docs/kernels.md).
  set_source_files_properties(kernels/lora_kernels.cu kernels/decode_gemm.cu kernels/stream_gemm.cu
    kernels/decode_attention.cu PROPERTIES SKIP_PRECOMPILE_HEADERS ON)
endif()
