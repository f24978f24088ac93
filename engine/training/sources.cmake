# engine/training: the training loop, optimizer, checkpoints and the trainable
# adapters (torch side). Included from engine/CMakeLists.txt; paths relative
# to engine/. The prompt-learning trainables come from their own file when
# present (another branch); until then MakeTrainable reports them UNIMPLEMENTED.
set(ADAPTERD_TRAINING_SOURCES
  training/trainer.cc
  training/optim.cc
  training/checkpoint.cc
  training/lora_trainable.cc
  training/bottleneck_trainable.cc
)
set(ADAPTERD_TRAINING_DEFINITIONS)
if(EXISTS ${CMAKE_CURRENT_LIST_DIR}/prompt_trainables.cc)
  list(APPEND ADAPTERD_TRAINING_SOURCES training/prompt_trainables.cc)
  list(APPEND ADAPTERD_TRAINING_DEFINITIONS ADAPTERD_WITH_PROMPT_TRAINABLES=1)
endif()
