#pragma once

// The Admin service: what the server serves (model, limits) and its counters.

#include <cstdint>

#include "absl/time/time.h"
#include "adapterd/v1/admin.grpc.pb.h"
#include "engine/api/engine.h"

namespace adapterd {

// Thread-safe. Does not own `engine`, which must outlive the service.
class AdminService final : public v1::Admin::CallbackService {
 public:
  AdminService(Engine* engine, int64_t max_message_bytes, bool auth_enabled);

  grpc::ServerUnaryReactor* GetServerInfo(grpc::CallbackServerContext* context,
                                          const v1::GetServerInfoRequest* request,
                                          v1::ServerInfo* response) override;
  grpc::ServerUnaryReactor* GetStats(grpc::CallbackServerContext* context,
                                     const v1::GetStatsRequest* request,
                                     v1::ServerStats* response) override;

 private:
  Engine* const engine_;
  const int64_t max_message_bytes_;
  const bool auth_enabled_;
  const absl::Time start_;
};

}  // namespace adapterd
