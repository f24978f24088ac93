#pragma once

// A real adapterd gRPC server on a loopback port picked by the OS, in front of
// a FakeEngine, with a client connected to it.

#include <grpcpp/client_context.h>

#include <memory>

#include "client/client.h"
#include "gtest/gtest.h"
#include "server/server.h"
#include "tests/server/fake_engine.h"

namespace adapterd::testing {

struct TestServer {
  explicit TestServer(FakeEngineOptions engine_options = {}, ServerOptions server_options = {}) {
    engine = std::make_unique<FakeEngine>(std::move(engine_options));
    server_options.listen = "127.0.0.1:0";
    absl::StatusOr<std::unique_ptr<Server>> started = Server::Start(server_options, engine.get());
    EXPECT_TRUE(started.ok()) << started.status();
    server = *std::move(started);
    ClientOptions client_options;
    client_options.target = server->address();
    client = std::make_unique<Client>(client_options);
    inference = v1::Inference::NewStub(client->channel());
    admin = v1::Admin::NewStub(client->channel());
  }

  ~TestServer() {
    server->BeginShutdown();
    engine->Shutdown(absl::ZeroDuration());
    server->Shutdown(absl::Seconds(5));
  }

  int64_t vocab() const { return engine->info().vocab_size; }

  std::unique_ptr<FakeEngine> engine;
  std::unique_ptr<Server> server;
  std::unique_ptr<Client> client;
  std::unique_ptr<v1::Inference::Stub> inference;
  std::unique_ptr<v1::Admin::Stub> admin;
};

inline v1::GenerateRequest MakeRequest(const std::string& prompt, int max_tokens,
                                       const std::string& adapter = "") {
  v1::GenerateRequest request;
  request.set_prompt(prompt);
  request.set_adapter(adapter);
  request.mutable_sampling()->set_max_tokens(max_tokens);
  return request;
}

}  // namespace adapterd::testing
