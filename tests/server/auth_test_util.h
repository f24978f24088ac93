#pragma once

// A real adapterd server on loopback with authentication on, an adapter
// store in a temp dir and a fake engine; tenants "a" and "b" with keys, a
// revoked key of "a", the bootstrap admin key, and stubs that send any of them.

#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>

#include <memory>
#include <string>

#include "adapterd/v1/adapters.grpc.pb.h"
#include "adapterd/v1/admin.grpc.pb.h"
#include "adapterd/v1/inference.grpc.pb.h"
#include "adapterd/v1/training.grpc.pb.h"
#include "client/client.h"
#include "gtest/gtest.h"
#include "server/server.h"
#include "tests/server/fake_engine.h"
#include "tests/store/store_test_util.h"

namespace adapterd::testing {

// What a call sends as its "authorization" header.
struct Cred {
  std::string name;    // For messages.
  std::string header;  // Empty: none sent.
};

inline Cred Bearer(const std::string& name, const std::string& key) {
  return {name, "Bearer " + key};
}

inline void Attach(grpc::ClientContext* context, const Cred& cred) {
  if (!cred.header.empty()) context->AddMetadata("authorization", cred.header);
  context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
}

struct AuthServer {
  explicit AuthServer(FakeEngineOptions engine_options = {}, TenantQuotas quotas_a = {},
                      TenantQuotas quotas_b = {}) {
    engine = std::make_unique<FakeEngine>(std::move(engine_options));
    ServerOptions options;
    options.listen = "127.0.0.1:0";
    options.auth_enabled = true;
    options.admin_key = admin_key;
    options.adapter_store.root = tmp / "data";
    absl::StatusOr<std::unique_ptr<Server>> started = Server::Start(options, engine.get());
    EXPECT_TRUE(started.ok()) << started.status();
    server = *std::move(started);
    TenantRegistry* tenants = server->tenant_registry();
    for (auto [id, quotas] : {std::make_pair("a", quotas_a), std::make_pair("b", quotas_b)}) {
      Tenant t;
      t.id = id;
      t.quotas = quotas;
      EXPECT_TRUE(tenants->CreateTenant(t).ok());
    }
    key_a = NewApiKey();
    key_b = NewApiKey();
    key_revoked = NewApiKey();
    EXPECT_TRUE(tenants->AddKey("a", key_a, "a").ok());
    EXPECT_TRUE(tenants->AddKey("b", key_b, "b").ok());
    absl::StatusOr<ApiKey> revoked = tenants->AddKey("a", key_revoked, "to revoke");
    EXPECT_TRUE(revoked.ok());
    EXPECT_TRUE(tenants->RevokeKey(revoked->id).ok());
    channel = grpc::CreateChannel(server->address(), grpc::InsecureChannelCredentials());
    inference = v1::Inference::NewStub(channel);
    admin = v1::Admin::NewStub(channel);
    adapters = v1::Adapters::NewStub(channel);
    training = v1::Training::NewStub(channel);
  }

  ~AuthServer() {
    server->BeginShutdown();
    engine->Shutdown(absl::ZeroDuration());
    server->Shutdown(absl::Seconds(5));
  }

  // A client library instance that sends `key`.
  std::unique_ptr<Client> ClientFor(const std::string& key) const {
    ClientOptions o;
    o.target = server->address();
    o.token = key;
    return std::make_unique<Client>(o);
  }

  // Uploads a small JSONL dataset as the holder of `key`; returns its id.
  std::string UploadDataset(const std::string& key, const std::string& name) {
    const std::string path = tmp / ("ds_" + name + std::to_string(counter++) + ".jsonl");
    std::ofstream(path) << "{\"prompt\": \"1\", \"completion\": \" odd\"}\n";
    v1::DatasetInfo info;
    EXPECT_TRUE(ClientFor(key)->UploadDataset(path, name, &info).ok());
    return info.dataset_id();
  }

  grpc::Status Upload(const std::string& key, const std::string& name, v1::AdapterInfo* info,
                      uint64_t seed = 1) {
    const std::string dir = tmp / ("up_" + name + std::to_string(counter++));
    WriteFiles(dir, LoraFiles(seed));
    UploadAdapterOptions o;
    o.name = name;
    return ClientFor(key)->UploadAdapter(Client::AdapterFilesIn(dir), o, info);
  }

  TempDir tmp;
  int counter = 0;
  const std::string admin_key = "adk_test-bootstrap-admin-key-0123456789abcdef";
  std::string key_a, key_b, key_revoked;
  std::unique_ptr<FakeEngine> engine;
  std::unique_ptr<Server> server;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::Inference::Stub> inference;
  std::unique_ptr<v1::Admin::Stub> admin;
  std::unique_ptr<v1::Adapters::Stub> adapters;
  std::unique_ptr<v1::Training::Stub> training;
  // Tenant a's dataset and long-running job, for the Training cells of the
  // authorization matrix.
  std::string dataset_a;
  std::string job_a;
};

}  // namespace adapterd::testing
