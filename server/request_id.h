#pragma once

#include <string>

namespace adapterd {

// A fresh request id, "req-" and 16 hex digits, unique with high probability
// across processes. Thread-safe.
std::string NewRequestId();

}  // namespace adapterd
