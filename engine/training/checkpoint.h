#pragma once

// Training checkpoints and the file helpers of training outputs.
// Engine-internal header (uses ATen).
//
// Layout of work_dir/checkpoint/ (replaced atomically: written to
// checkpoint.tmp/, fsynced, then renamed over; a crash between the two renames
// leaves checkpoint.old/, which LoadCheckpoint also accepts):
//   state.safetensors  F32 "param/<name>", "exp_avg/<name>", "exp_avg_sq/<name>"
//                      for every trainable parameter (NamedParameter::name).
//   state.json         {"format": 1, "method", "step", "epoch", "position",
//                       "seed", "tokens_seen", "parameters": [names]}
// The data order is a pure function of (seed, epoch), so (epoch, position)
// is all the data state there is; dropout is not replayed.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/model/safetensors.h"
#include "engine/training/trainable.h"

namespace adapterd {

class AdamW;

struct CheckpointState {
  std::string method;
  int64_t step = 0;        // Optimizer steps done.
  int epoch = 0;           // The epoch the next micro-batch belongs to.
  int64_t position = 0;    // Training rows of that epoch already consumed.
  uint64_t seed = 0;
  int64_t tokens_seen = 0;
};

// Writes the parameters, the optimizer's moments and `state` to
// `work_dir`/checkpoint. INTERNAL on an I/O failure.
absl::Status SaveCheckpoint(const std::string& work_dir, AdamW& optimizer,
                            const CheckpointState& state);

// Whether `work_dir` holds a checkpoint to resume from.
bool HasCheckpoint(const std::string& work_dir);

// Removes `work_dir`'s checkpoint (a finished job's output replaces it).
absl::Status RemoveCheckpoint(const std::string& work_dir);

// Restores the parameters (in place) and the optimizer's moments and step
// count, and returns the state. FAILED_PRECONDITION if the checkpoint belongs
// to another method, seed or parameter set; INVALID_ARGUMENT if it is corrupt.
absl::StatusOr<CheckpointState> LoadCheckpoint(const std::string& work_dir, AdamW& optimizer);

// A tensor as an F32 safetensors entry (copied to the CPU).
SafetensorsTensor ToSafetensorsF32(const std::string& name, const at::Tensor& tensor);

// The named F32 tensor of `file` with `shape`, on the CPU. INVALID_ARGUMENT
// if it is missing or differs.
absl::StatusOr<at::Tensor> ReadF32(const SafetensorsFile& file, const std::string& name,
                                   const std::vector<int64_t>& shape);

// Writes `contents` to `path` and fsyncs it. INTERNAL on failure.
absl::Status WriteFileSynced(const std::string& path, const std::string& contents);
// fsyncs the directory `dir` (makes renames and creations in it durable).
absl::Status SyncDir(const std::string& dir);
// Removes `path` and everything under it; OK if it does not exist.
absl::Status RemoveTree(const std::string& path);
// Copies the regular files of `from` (not recursive) into the new directory `to`.
absl::Status CopyFlatDir(const std::string& from, const std::string& to);
bool IsDirectory(const std::string& path);

}  // namespace adapterd
