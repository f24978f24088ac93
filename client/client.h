#pragma once

// A C++ client for adapterd: thin, blocking wrappers over the generated stubs
// that add the bearer token and the per-call deadline. Errors are returned as
// the grpc::Status the server sent.

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>
#include <grpcpp/support/status.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "adapterd/v1/admin.grpc.pb.h"
#include "adapterd/v1/inference.grpc.pb.h"

namespace adapterd {

struct ClientOptions {
  std::string target = "127.0.0.1:50051";
  std::string token;                     // Non-empty: sent as "authorization: Bearer <token>".
  std::chrono::milliseconds timeout{0};  // Per call; 0 = no deadline.
  int max_message_bytes = 64 << 20;
};

// Thread-safe: calls may run concurrently on one Client.
class Client {
 public:
  // Creates the channel; does not connect until the first call.
  explicit Client(ClientOptions options);

  // Called for each streamed message in order; return false to cancel the
  // stream (GenerateStream then returns CANCELLED).
  using ChunkCallback = std::function<bool(const v1::GenerateStreamResponse&)>;

  grpc::Status Generate(const v1::GenerateRequest& request, v1::GenerateResponse* response);
  grpc::Status GenerateStream(const v1::GenerateRequest& request, const ChunkCallback& on_chunk);
  grpc::Status Score(const v1::ScoreRequest& request, v1::ScoreResponse* response);
  grpc::Status GetServerInfo(v1::ServerInfo* response);
  grpc::Status GetStats(v1::ServerStats* response);

  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }

 private:
  void Prepare(grpc::ClientContext* context) const;

  const ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Inference::Stub> inference_;
  std::unique_ptr<v1::Admin::Stub> admin_;
};

}  // namespace adapterd
