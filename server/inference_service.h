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

namespace adapterd {

// Thread-safe. Does not own `engine`, which must outlive the service and
// every call it started (shut the engine down before destroying it).
class InferenceService final : public v1::Inference::CallbackService {
 public:
  explicit InferenceService(Engine* engine);

  // From now on new calls fail with UNAVAILABLE "server is shutting down";
  // calls already submitted run on. Idempotent.
  void StopAccepting();

  grpc::ServerUnaryReactor* Generate(grpc::CallbackServerContext* context,
                                     const v1::GenerateRequest* request,
                                     v1::GenerateResponse* response) override;
  grpc::ServerWriteReactor<v1::GenerateStreamResponse>* GenerateStream(
      grpc::CallbackServerContext* context, const v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* Score(grpc::CallbackServerContext* context,
                                  const v1::ScoreRequest* request,
                                  v1::ScoreResponse* response) override;

 private:
  Engine* const engine_;
  std::atomic<bool> accepting_{true};
};

}  // namespace adapterd
