#pragma once

// Per-tenant request quotas, enforced at admission by the Inference service:
// requests in flight (the server-side fairness mechanism: one tenant cannot
// hold more than its share of engine slots and queue), requests per second
// (a token bucket, burst max(1, rate)) and tokens per minute (a bucket of
// tokens_per_minute refilled continuously; prompt and completion tokens are
// charged as they are produced, so a running request may overdraw it and the
// tenant's next requests wait until it refills). The limits come with each
// request's Principal, so an UpdateTenant applies to the next request.
//
// Over a quota → RESOURCE_EXHAUSTED whose message says which quota and when
// to retry; the status carries the delay as a payload that the services send
// as the trailing metadata "retry-after-ms" (AddRetryHint).

#include <grpcpp/server_context.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/auth.h"

namespace adapterd {

inline constexpr char kRetryAfterMetadata[] = "retry-after-ms";

// `status` with a retry delay attached (for AddRetryHint).
absl::Status WithRetryAfter(absl::Status status, absl::Duration delay);
// Adds "retry-after-ms: N" to the call's trailing metadata if `status` carries
// a delay. Call before Finish.
void AddRetryHint(grpc::ServerContextBase* context, const absl::Status& status);

class QuotaManager;

// One admitted request. Releases its in-flight slot when destroyed.
// Thread-safe.
class RequestLease {
 public:
  ~RequestLease();
  // Charges `tokens` (prompt or completion) against tokens per minute.
  void ChargeTokens(int64_t tokens);

 private:
  friend class QuotaManager;
  struct TenantState;
  RequestLease(std::shared_ptr<TenantState> state, int64_t tokens_per_minute)
      : state_(std::move(state)), tokens_per_minute_(tokens_per_minute) {}

  const std::shared_ptr<TenantState> state_;
  const int64_t tokens_per_minute_;
};

// Thread-safe.
class QuotaManager {
 public:
  // Admits one request of `who` or says which quota it exceeds.
  absl::StatusOr<std::unique_ptr<RequestLease>> Admit(const Principal& who);
  // Requests in flight of `tenant` (tests).
  int64_t InFlight(const std::string& tenant);

 private:
  absl::Mutex mu_;  // Guards tenants_ (the map; each state has its own lock).
  std::map<std::string, std::shared_ptr<RequestLease::TenantState>> tenants_ ABSL_GUARDED_BY(mu_);
};

}  // namespace adapterd
