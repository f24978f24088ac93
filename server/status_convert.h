#pragma once

// The one place where absl::Status and grpc::Status meet. The canonical codes
// are the same numbers in both libraries; messages pass through unchanged.

#include <grpcpp/support/status.h>

#include <string>

#include "absl/status/status.h"

namespace adapterd {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

// "INVALID_ARGUMENT", "NOT_FOUND", ... for a gRPC code.
std::string GrpcCodeName(grpc::StatusCode code);

}  // namespace adapterd
