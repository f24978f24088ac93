# engine/peft: adapter parsing, validation and per-row application (torch side).
# Included from engine/CMakeLists.txt; paths relative to engine/.
set(ADAPTERD_PEFT_SOURCES
  peft/adapter.cc
  peft/adapter_cache.cc
  peft/batch_adapters.cc
)
