#include "server/admin_service.h"

#include "absl/time/clock.h"
#include "server/proto_convert.h"

#ifndef ADAPTERD_VERSION
#define ADAPTERD_VERSION "0.0.0"
#endif

namespace adapterd {

AdminService::AdminService(Engine* engine, int64_t max_message_bytes, bool auth_enabled)
    : engine_(engine),
      max_message_bytes_(max_message_bytes),
      auth_enabled_(auth_enabled),
      start_(absl::Now()) {}

grpc::ServerUnaryReactor* AdminService::GetServerInfo(grpc::CallbackServerContext* context,
                                                      const v1::GetServerInfoRequest* /*request*/,
                                                      v1::ServerInfo* response) {
  response->set_version(ADAPTERD_VERSION);
  ModelInfoToProto(engine_->info(), response->mutable_model());
  LimitsToProto(engine_->limits(), max_message_bytes_, response->mutable_limits());
  response->set_auth_enabled(auth_enabled_);
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* AdminService::GetStats(grpc::CallbackServerContext* context,
                                                 const v1::GetStatsRequest* /*request*/,
                                                 v1::ServerStats* response) {
  StatsToProto(engine_->Stats(), absl::ToDoubleSeconds(absl::Now() - start_), response);
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace adapterd
