#pragma once

// The model a benchmark runs: --model DIR, or the embedded default model
// written under the data dir (seed 1234, EngineOptions::default_model_seed's default).

#include <cstdio>
#include <string>

#include "engine/runtime/default_model.h"

namespace adapterd::bench {

// `model` if given, else the default model under `data_dir`; empty (the
// error printed) if that cannot be written.
inline std::string ModelDirOrDefault(const std::string& model, const std::string& data_dir) {
  if (!model.empty()) return model;
  absl::StatusOr<std::string> dir = MaterializeDefaultModel(data_dir, 1234);
  if (!dir.ok()) {
    std::fprintf(stderr, "%s\n", dir.status().ToString().c_str());
    return std::string();
  }
  return *dir;
}

}  // namespace adapterd::bench
