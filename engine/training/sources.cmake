# engine/training: the training loop, optimizer, checkpoints and the trainable
# adapters of every method (torch side). Included from engine/CMakeLists.txt;
# paths relative to engine/. The dataset reader (training/dataset.cc) is
# torch-free and lives in engine_base.
set(ADAPTERD_TRAINING_SOURCES
  training/trainer.cc
  training/optim.cc
  training/checkpoint.cc
  training/lora_trainable.cc
  training/bottleneck_trainable.cc
  training/prompt_trainables.cc
)
