#pragma once

// Conversions between the Training API (adapterd/v1/training.proto) and the
// engine's plain training types (engine/api/training.h) and the job
// registry's records. Pure functions; thread-safe.

#include <string>

#include "absl/status/statusor.h"
#include "adapterd/v1/training.pb.h"
#include "adapters_store/job_registry.h"
#include "engine/api/training.h"

namespace adapterd {

// The spec of a create request with every default applied (see the proto's
// field comments). Checks what needs no model: a method is set, the output
// name, numbers in range, fusion with at least two adapters.
// INVALID_ARGUMENT naming the field otherwise. Dataset path, init adapter
// and fusion children are left for the caller to resolve.
absl::StatusOr<TrainingSpec> TrainingSpecFromProto(const v1::CreateTrainingJobRequest& request);

// "lora", "prefix_tuning", ...; empty when no method is set.
std::string MethodOf(const v1::CreateTrainingJobRequest& request);

// The request as stored in JobRecord::spec (protobuf JSON) and back.
std::string SerializeRequest(const v1::CreateTrainingJobRequest& request);
absl::StatusOr<v1::CreateTrainingJobRequest> ParseRequest(const std::string& text);

std::string SerializeReport(const DatasetReport& report);

void JobToProto(const JobRecord& job, v1::TrainingJob* out);
void DatasetToProto(const DatasetRecord& dataset, v1::DatasetInfo* out);

}  // namespace adapterd
