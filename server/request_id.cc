#include "server/request_id.h"

#include <cstdint>
#include <random>

#include "absl/strings/str_format.h"

namespace adapterd {

std::string NewRequestId() {
  thread_local std::mt19937_64 rng(std::random_device{}());
  return absl::StrFormat("req-%016x", rng());
}

}  // namespace adapterd
