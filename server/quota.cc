#include "server/quota.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"

namespace adapterd {
namespace {

constexpr char kRetryPayload[] = "type.adapterd/retry-after-ms";

// A continuously refilled bucket.
struct Bucket {
  double level = 0;
  absl::Time last = absl::InfinitePast();
  double capacity = -1;  // Unset until first used.

  // Refills at `rate` per second up to `capacity`.
  void Refill(double rate, double cap, absl::Time now) {
    if (capacity < 0 || last == absl::InfinitePast()) {
      level = cap;
    } else {
      level = std::min(cap, level + rate * absl::ToDoubleSeconds(now - last));
    }
    capacity = cap;
    last = now;
  }
};

std::string FormatDelay(absl::Duration d) {
  return absl::StrFormat("%.3fs", absl::ToDoubleSeconds(d));
}

}  // namespace

struct RequestLease::TenantState {
  absl::Mutex mu;  // Guards the fields below.
  int64_t in_flight ABSL_GUARDED_BY(mu) = 0;
  Bucket requests ABSL_GUARDED_BY(mu);
  Bucket tokens ABSL_GUARDED_BY(mu);
};

absl::Status WithRetryAfter(absl::Status status, absl::Duration delay) {
  const int64_t ms =
      std::max<int64_t>(1, absl::ToInt64Milliseconds(absl::Ceil(delay, absl::Milliseconds(1))));
  status.SetPayload(kRetryPayload, absl::Cord(absl::StrCat(ms)));
  return status;
}

void AddRetryHint(grpc::ServerContextBase* context, const absl::Status& status) {
  const auto payload = status.GetPayload(kRetryPayload);
  if (!payload.has_value()) return;
  context->AddTrailingMetadata(kRetryAfterMetadata, std::string(*payload));
}

RequestLease::~RequestLease() {
  absl::MutexLock lock(&state_->mu);
  --state_->in_flight;
}

void RequestLease::ChargeTokens(int64_t tokens) {
  if (tokens_per_minute_ <= 0 || tokens <= 0) return;
  absl::MutexLock lock(&state_->mu);
  const double rate = static_cast<double>(tokens_per_minute_) / 60.0;
  state_->tokens.Refill(rate, static_cast<double>(tokens_per_minute_), absl::Now());
  state_->tokens.level -= static_cast<double>(tokens);
}

absl::StatusOr<std::unique_ptr<RequestLease>> QuotaManager::Admit(const Principal& who) {
  std::shared_ptr<RequestLease::TenantState> state;
  {
    absl::MutexLock lock(&mu_);
    std::shared_ptr<RequestLease::TenantState>& slot = tenants_[who.tenant];
    if (slot == nullptr) slot = std::make_shared<RequestLease::TenantState>();
    state = slot;
  }
  const TenantQuotas& q = who.quotas;
  const absl::Time now = absl::Now();
  absl::MutexLock lock(&state->mu);
  if (q.max_concurrent_requests > 0 && state->in_flight >= q.max_concurrent_requests) {
    const absl::Duration retry = absl::Milliseconds(100);
    return WithRetryAfter(
        absl::ResourceExhaustedError(absl::StrCat(
            "quota: tenant ", who.tenant, " has ", state->in_flight, " requests in flight (limit ",
            q.max_concurrent_requests, "); retry after ", FormatDelay(retry))),
        retry);
  }
  if (q.tokens_per_minute > 0) {
    const double rate = static_cast<double>(q.tokens_per_minute) / 60.0;
    state->tokens.Refill(rate, static_cast<double>(q.tokens_per_minute), now);
    if (state->tokens.level <= 0) {
      const absl::Duration retry = absl::Seconds((1.0 - state->tokens.level) / rate);
      return WithRetryAfter(absl::ResourceExhaustedError(absl::StrCat(
                                "quota: tenant ", who.tenant, " used its ", q.tokens_per_minute,
                                " tokens per minute; retry after ", FormatDelay(retry))),
                            retry);
    }
  }
  if (q.requests_per_second > 0) {
    const double rate = q.requests_per_second;
    state->requests.Refill(rate, std::max(1.0, rate), now);
    if (state->requests.level < 1.0) {
      const absl::Duration retry = absl::Seconds((1.0 - state->requests.level) / rate);
      return WithRetryAfter(absl::ResourceExhaustedError(absl::StrCat(
                                "quota: tenant ", who.tenant, " is over ", q.requests_per_second,
                                " requests per second; retry after ", FormatDelay(retry))),
                            retry);
    }
    state->requests.level -= 1.0;
  }
  ++state->in_flight;
  return std::unique_ptr<RequestLease>(new RequestLease(state, q.tokens_per_minute));
}

int64_t QuotaManager::InFlight(const std::string& tenant) {
  std::shared_ptr<RequestLease::TenantState> state;
  {
    absl::MutexLock lock(&mu_);
    auto it = tenants_.find(tenant);
    if (it == tenants_.end()) return 0;
    state = it->second;
  }
  absl::MutexLock lock(&state->mu);
  return state->in_flight;
}

}  // namespace adapterd
