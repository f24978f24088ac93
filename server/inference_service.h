#pragma once

// The Inference service (Generate, GenerateStream, Score) on gRPC's callback
// API. Handlers validate the request, hand it with a sink to the engine and
// return at once; the engine thread delivers the output, which the reactors
// write back. A stream keeps at most one write in flight and batches the
// tokens that arrive meanwhile into the next message. A cancelled or
// expired call sets the request's CancellationToken so that the engine frees
// its slot; every reactor finishes only after the engine has finished with
// the request, so no engine callback ever outlives its call.

#include <atomic>

#include "adapterd/v1/inference.grpc.pb.h"
#include "engine/api/engine.h"
#include "server/adapter_resolver.h"
#include "server/auth.h"
#include "server/quota.h"

namespace adapterd {

// Every call is authenticated (any role), admitted against its tenant's
// request quotas (server/quota.h) and submitted with the tenant set; tokens
// are charged to the tenant as the engine produces them.
//
// Thread-safe. Does not own `engine`, `auth` or `quotas`, which must outlive
// the service and every call it started (shut the engine down before
// destroying it).
class InferenceService final : public v1::Inference::CallbackService {
 public:
  InferenceService(Engine* engine, const Authenticator* auth, QuotaManager* quotas);

  // From now on new calls fail with UNAVAILABLE "server is shutting down";
  // calls already submitted run on. Idempotent.
  void StopAccepting();

  // Resolves adapters through the store (tenant namespace) before submitting.
  // Null (the default): the engine resolves adapters by name. Set before the
  // server starts; not owned.
  void set_adapter_resolver(const AdapterResolver* resolver) { resolver_ = resolver; }

  grpc::ServerUnaryReactor* Generate(grpc::CallbackServerContext* context,
                                     const v1::GenerateRequest* request,
                                     v1::GenerateResponse* response) override;
  grpc::ServerWriteReactor<v1::GenerateStreamResponse>* GenerateStream(
      grpc::CallbackServerContext* context, const v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* Score(grpc::CallbackServerContext* context,
                                  const v1::ScoreRequest* request,
                                  v1::ScoreResponse* response) override;

 private:
  // Authentication, the shutdown check and quota admission, in that order.
  absl::StatusOr<std::unique_ptr<RequestLease>> Admit(const grpc::CallbackServerContext& context,
                                                      const char* method, Principal* who);

  // What every engine request carries (id, tenant, deadline, cancellation),
  // then its adapters resolved in the tenant's namespace; `served` becomes
  // the serving adapter's "name@version" where one was resolved (else it is
  // left as the request named it). Request: GenerateRequest, ScoreRequest.
  template <typename Request>
  absl::Status Prepare(Request& request, const std::string& request_id, const Principal& who,
                       grpc::CallbackServerContext* context,
                       std::shared_ptr<CancellationToken> cancel, std::string& served) const;

  Engine* const engine_;
  const Authenticator* const auth_;
  QuotaManager* const quotas_;
  const AdapterResolver* resolver_ = nullptr;
  std::atomic<bool> accepting_{true};
};

}  // namespace adapterd
