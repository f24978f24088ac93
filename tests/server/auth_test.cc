// The authorization matrix (every RPC of every adapterd service × every kind
// of caller), cross-tenant indistinguishability, public adapters, key
// storage and the tenant/key admin RPCs, over real loopback gRPC.

#include "server/auth.h"

#include <google/protobuf/descriptor.h>
#include <grpcpp/generic/generic_stub.h>
#include <sqlite3.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "tests/server/auth_test_util.h"

namespace adapterd::testing {
namespace {

// One RPC issued with a credential: its status and, on OK, the response.
struct Outcome {
  grpc::Status status;
  std::string response_debug;             // The response's text format.
  std::vector<v1::AdapterInfo> adapters;  // Adapters the response carries.
};

using Call = std::function<Outcome(AuthServer&, const Cred&)>;

template <typename Response>
Outcome Done(const grpc::Status& status, const Response& response) {
  Outcome o;
  o.status = status;
  if (status.ok()) o.response_debug = response.DebugString();
  return o;
}

Outcome WithAdapters(Outcome o, const google::protobuf::RepeatedPtrField<v1::AdapterInfo>& list) {
  o.adapters.assign(list.begin(), list.end());
  return o;
}

// Uploads on one stream with `cred`.
Outcome UploadWith(AuthServer& s, const Cred& cred, const std::string& name,
                   v1::Visibility visibility = v1::VISIBILITY_UNSPECIFIED) {
  const auto files = LoraFiles(7);
  grpc::ClientContext context;
  Attach(&context, cred);
  v1::AdapterInfo info;
  auto writer = s.adapters->UploadAdapter(&context, &info);
  v1::UploadAdapterRequest header;
  header.mutable_header()->set_name(name);
  header.mutable_header()->set_visibility(visibility);
  int64_t total = 0;
  for (const auto& [file, data] : files) {
    v1::AdapterFile* f = header.mutable_header()->add_files();
    f->set_name(file);
    f->set_size(static_cast<int64_t>(data.size()));
    f->set_sha256(Sha256::Hex(data));
    total += static_cast<int64_t>(data.size());
  }
  header.mutable_header()->set_total_size(total);
  bool ok = writer->Write(header);
  for (const auto& [file, data] : files) {
    v1::UploadAdapterRequest chunk;
    chunk.mutable_chunk()->set_file(file);
    chunk.mutable_chunk()->set_offset(0);
    chunk.mutable_chunk()->set_data(data);
    ok = ok && writer->Write(chunk);
  }
  writer->WritesDone();
  Outcome o = Done(writer->Finish(), info);
  if (o.status.ok()) o.adapters.push_back(info);
  return o;
}

// Every RPC, by full method name, with a request that an authorized caller
// of the right tenant completes. A new RPC without an entry fails the
// CoversEveryMethod test.
std::map<std::string, Call> Calls() {
  std::map<std::string, Call> c;
  static int unique = 0;
  c["adapterd.v1.Inference.Generate"] = [](AuthServer& s, const Cred& cred) {
    grpc::ClientContext context;
    Attach(&context, cred);
    v1::GenerateRequest r;
    r.set_prompt("hi");
    r.mutable_sampling()->set_max_tokens(2);
    v1::GenerateResponse response;
    return Done(s.inference->Generate(&context, r, &response), response);
  };
  c["adapterd.v1.Inference.GenerateStream"] = [](AuthServer& s, const Cred& cred) {
    grpc::ClientContext context;
    Attach(&context, cred);
    v1::GenerateRequest r;
    r.set_prompt("hi");
    r.mutable_sampling()->set_max_tokens(2);
    auto reader = s.inference->GenerateStream(&context, r);
    v1::GenerateStreamResponse chunk, last;
    while (reader->Read(&chunk)) last = chunk;
    return Done(reader->Finish(), last);
  };
  c["adapterd.v1.Inference.Score"] = [](AuthServer& s, const Cred& cred) {
    grpc::ClientContext context;
    Attach(&context, cred);
    v1::ScoreRequest r;
    r.set_prompt("hi");
    r.add_continuations(" there");
    v1::ScoreResponse response;
    return Done(s.inference->Score(&context, r, &response), response);
  };
  c["adapterd.v1.Admin.GetServerInfo"] = [](AuthServer& s, const Cred& cred) {
    grpc::ClientContext context;
    Attach(&context, cred);
    v1::ServerInfo response;
    return Done(s.admin->GetServerInfo(&context, v1::GetServerInfoRequest(), &response), response);
  };
  c["adapterd.v1.Admin.GetStats"] = [](AuthServer& s, const Cred& cred) {
    grpc::ClientContext context;
    Attach(&context, cred);
    v1::ServerStats response;
    return Done(s.admin->GetStats(&context, v1::GetStatsRequest(), &response), response);
  };
  c["adapterd.v1.Admin.CreateTenant"] = [](AuthServer& s, const Cred& cred) {
    grpc::ClientContext context;
    Attach(&context, cred);
    v1::CreateTenantRequest r;
    r.set_id("t" + std::to_string(unique++));
    v1::Tenant response;
    return Done(s.admin->CreateTenant(&context, r, &response), response);
  };
  c["adapterd.v1.Admin.ListTenants"] = [](AuthServer& s, const Cred& cred) {
    grpc::ClientContext context;
    Attach(&context, cred);
    v1::ListTenantsResponse response;
    return Done(s.admin->ListTenants(&context, v1::ListTenantsRequest(), &response), response);
  };
  c["adapterd.v1.Admin.GetTenant"] = [](AuthServer& s, const Cred& cred) {
    grpc::ClientContext context;
    Attach(&context, cred);
    v1::GetTenantRequest r;
    r.set_id("a");
    v1::Tenant response;
    return Done(s.admin->GetTenant(&context, r, &response), response);
  };
  c["adapterd.v1.Admin.UpdateTenant"] = [](AuthServer& s, const Cred& cred) {
    grpc::ClientContext context;
    Attach(&context, cred);
    v1::UpdateTenantRequest r;
    r.set_id("b");
    r.set_name("bee");
    r.add_update_paths("name");
    v1::Tenant response;
    return Done(s.admin->UpdateTenant(&context, r, &response), response);
  };
  c["adapterd.v1.Admin.CreateApiKey"] = [](AuthServer& s, const Cred& cred) {
    grpc::ClientContext context;
    Attach(&context, cred);
    v1::CreateApiKeyRequest r;
    r.set_tenant("b");
    v1::CreateApiKeyResponse response;
    return Done(s.admin->CreateApiKey(&context, r, &response), response);
  };
  c["adapterd.v1.Admin.ListApiKeys"] = [](AuthServer& s, const Cred& cred) {
    grpc::ClientContext context;
    Attach(&context, cred);
    v1::ListApiKeysResponse response;
    return Done(s.admin->ListApiKeys(&context, v1::ListApiKeysRequest(), &response), response);
  };
  c["adapterd.v1.Admin.RevokeApiKey"] = [](AuthServer& s, const Cred& cred) {
    absl::StatusOr<ApiKey> spare = s.server->tenant_registry()->AddKey("b", NewApiKey(), "spare");
    EXPECT_TRUE(spare.ok());
    grpc::ClientContext context;
    Attach(&context, cred);
    v1::RevokeApiKeyRequest r;
    r.set_id(spare->id);
    v1::ApiKeyInfo response;
    return Done(s.admin->RevokeApiKey(&context, r, &response), response);
  };
  c["adapterd.v1.Admin.SetAdapterVisibility"] = [](AuthServer& s, const Cred& cred) {
    grpc::ClientContext context;
    Attach(&context, cred);
    v1::SetAdapterVisibilityRequest r;
    r.set_tenant("a");
    r.set_adapter("a-private");
    r.set_make_public(false);
    v1::SetAdapterVisibilityResponse response;
    return Done(s.admin->SetAdapterVisibility(&context, r, &response), response);
  };
  c["adapterd.v1.Adapters.UploadAdapter"] = [](AuthServer& s, const Cred& cred) {
    return UploadWith(s, cred, "up" + std::to_string(unique++));
  };
  c["adapterd.v1.Adapters.RegisterAdapter"] = [](AuthServer& s, const Cred& cred) {
    grpc::ClientContext context;
    Attach(&context, cred);
    v1::RegisterAdapterRequest r;
    r.set_name("reg");
    r.set_path("/nonexistent");
    v1::AdapterInfo response;
    return Done(s.adapters->RegisterAdapter(&context, r, &response), response);
  };
  c["adapterd.v1.Adapters.GetAdapter"] = [](AuthServer& s, const Cred& cred) {
    grpc::ClientContext context;
    Attach(&context, cred);
    v1::GetAdapterRequest r;
    r.set_adapter("a-private");
    v1::AdapterInfo response;
    Outcome o = Done(s.adapters->GetAdapter(&context, r, &response), response);
    if (o.status.ok()) o.adapters.push_back(response);
    return o;
  };
  c["adapterd.v1.Adapters.ListAdapters"] = [](AuthServer& s, const Cred& cred) {
    grpc::ClientContext context;
    Attach(&context, cred);
    v1::ListAdaptersResponse response;
    Outcome o =
        Done(s.adapters->ListAdapters(&context, v1::ListAdaptersRequest(), &response), response);
    return WithAdapters(o, response.adapters());
  };
  c["adapterd.v1.Adapters.DeleteAdapter"] = [](AuthServer& s, const Cred& cred) {
    grpc::ClientContext context;
    Attach(&context, cred);
    v1::DeleteAdapterRequest r;
    r.set_adapter("a-doomed");
    r.set_all_versions(true);
    v1::DeleteAdapterResponse response;
    Outcome o = Done(s.adapters->DeleteAdapter(&context, r, &response), response);
    return WithAdapters(o, response.deleted());
  };
  c["adapterd.v1.Adapters.LoadAdapter"] = [](AuthServer& s, const Cred& cred) {
    grpc::ClientContext context;
    Attach(&context, cred);
    v1::LoadAdapterRequest r;
    r.set_adapter("a-private");
    v1::LoadAdapterResponse response;
    return Done(s.adapters->LoadAdapter(&context, r, &response), response);
  };
  c["adapterd.v1.Adapters.UnloadAdapter"] = [](AuthServer& s, const Cred& cred) {
    grpc::ClientContext context;
    Attach(&context, cred);
    v1::UnloadAdapterRequest r;
    r.set_adapter("a-private");
    v1::UnloadAdapterResponse response;
    return Done(s.adapters->UnloadAdapter(&context, r, &response), response);
  };
  c["adapterd.v1.Training.UploadDataset"] = [](AuthServer& s, const Cred& cred) {
    grpc::ClientContext context;
    Attach(&context, cred);
    v1::DatasetInfo response;
    auto writer = s.training->UploadDataset(&context, &response);
    const std::string data = "{\"text\": \"hello\"}\n";
    v1::UploadDatasetRequest header;
    header.mutable_header()->set_name("up-data");
    header.mutable_header()->set_size(static_cast<int64_t>(data.size()));
    header.mutable_header()->set_sha256(Sha256::Hex(data));
    v1::UploadDatasetRequest chunk;
    chunk.mutable_chunk()->set_data(data);
    if (writer->Write(header) && writer->Write(chunk)) writer->WritesDone();
    return Done(writer->Finish(), response);
  };
  c["adapterd.v1.Training.ListDatasets"] = [](AuthServer& s, const Cred& cred) {
    grpc::ClientContext context;
    Attach(&context, cred);
    v1::ListDatasetsResponse response;
    return Done(s.training->ListDatasets(&context, v1::ListDatasetsRequest(), &response), response);
  };
  c["adapterd.v1.Training.DeleteDataset"] = [](AuthServer& s, const Cred& cred) {
    // A fresh dataset of a's each time: a and the admin delete it, b cannot see it.
    const std::string id = s.UploadDataset(s.key_a, "a-data");
    grpc::ClientContext context;
    Attach(&context, cred);
    v1::DeleteDatasetRequest r;
    r.set_dataset_id(id);
    v1::DatasetInfo response;
    return Done(s.training->DeleteDataset(&context, r, &response), response);
  };
  c["adapterd.v1.Training.CreateTrainingJob"] = [](AuthServer& s, const Cred& cred) {
    grpc::ClientContext context;
    Attach(&context, cred);
    v1::CreateTrainingJobRequest r;
    r.set_output_adapter("made");
    r.set_dataset_id(s.dataset_a);
    r.mutable_lora();
    r.mutable_hyperparameters()->set_max_steps(1);
    v1::TrainingJob response;
    return Done(s.training->CreateTrainingJob(&context, r, &response), response);
  };
  c["adapterd.v1.Training.GetTrainingJob"] = [](AuthServer& s, const Cred& cred) {
    grpc::ClientContext context;
    Attach(&context, cred);
    v1::GetTrainingJobRequest r;
    r.set_job_id(s.job_a);
    v1::TrainingJob response;
    return Done(s.training->GetTrainingJob(&context, r, &response), response);
  };
  c["adapterd.v1.Training.ListTrainingJobs"] = [](AuthServer& s, const Cred& cred) {
    grpc::ClientContext context;
    Attach(&context, cred);
    v1::ListTrainingJobsResponse response;
    return Done(s.training->ListTrainingJobs(&context, v1::ListTrainingJobsRequest(), &response),
                response);
  };
  c["adapterd.v1.Training.CancelTrainingJob"] = [](AuthServer& s, const Cred& cred) {
    grpc::ClientContext context;
    Attach(&context, cred);
    v1::CancelTrainingJobRequest r;
    r.set_job_id(s.job_a);
    v1::TrainingJob response;
    return Done(s.training->CancelTrainingJob(&context, r, &response), response);
  };
  c["adapterd.v1.Training.WatchTrainingJob"] = [](AuthServer& s, const Cred& cred) {
    grpc::ClientContext context;
    Attach(&context, cred);
    v1::WatchTrainingJobRequest r;
    r.set_job_id(s.job_a);
    auto reader = s.training->WatchTrainingJob(&context, r);
    v1::TrainingJob update, last;
    while (reader->Read(&update)) last = update;
    return Done(reader->Finish(), last);
  };
  return c;
}

std::set<std::string> AdminOnly() {
  return {"adapterd.v1.Admin.GetStats",
          "adapterd.v1.Admin.CreateTenant",
          "adapterd.v1.Admin.ListTenants",
          "adapterd.v1.Admin.GetTenant",
          "adapterd.v1.Admin.UpdateTenant",
          "adapterd.v1.Admin.CreateApiKey",
          "adapterd.v1.Admin.ListApiKeys",
          "adapterd.v1.Admin.RevokeApiKey",
          "adapterd.v1.Admin.SetAdapterVisibility",
          "adapterd.v1.Adapters.RegisterAdapter"};
}

// What an authorized caller (tenant a, tenant b or the admin) gets.
grpc::StatusCode Authorized(const std::string& method, const std::string& tenant) {
  if (method == "adapterd.v1.Adapters.RegisterAdapter") {
    return grpc::StatusCode::FAILED_PRECONDITION;  // No --allowed-adapter-root.
  }
  // A tenant's datasets and jobs: b meets NOT_FOUND, the admin sees them.
  if (method == "adapterd.v1.Training.DeleteDataset" ||
      method == "adapterd.v1.Training.CreateTrainingJob" ||
      method == "adapterd.v1.Training.GetTrainingJob" ||
      method == "adapterd.v1.Training.CancelTrainingJob" ||
      method == "adapterd.v1.Training.WatchTrainingJob") {
    return tenant == "b" ? grpc::StatusCode::NOT_FOUND : grpc::StatusCode::OK;
  }
  if (method == "adapterd.v1.Adapters.GetAdapter" ||
      method == "adapterd.v1.Adapters.DeleteAdapter") {
    return tenant == "a" ? grpc::StatusCode::OK : grpc::StatusCode::NOT_FOUND;
  }
  if (method == "adapterd.v1.Adapters.LoadAdapter" ||
      method == "adapterd.v1.Adapters.UnloadAdapter") {
    // The owner reaches the (missing) cache; everyone else meets NOT_FOUND.
    return tenant == "a" ? grpc::StatusCode::FAILED_PRECONDITION : grpc::StatusCode::NOT_FOUND;
  }
  return grpc::StatusCode::OK;
}

std::vector<std::string> AllMethods() {
  std::vector<std::string> out;
  const google::protobuf::DescriptorPool* pool = google::protobuf::DescriptorPool::generated_pool();
  for (const char* name : {v1::Inference::service_full_name(), v1::Admin::service_full_name(),
                           v1::Adapters::service_full_name(), v1::Training::service_full_name()}) {
    const google::protobuf::ServiceDescriptor* service = pool->FindServiceByName(name);
    EXPECT_NE(service, nullptr) << name;
    if (service == nullptr) continue;
    for (int i = 0; i < service->method_count(); ++i) {
      out.push_back(service->method(i)->full_name());
    }
  }
  return out;
}

TEST(AuthTest, TheMatrixCoversEveryMethodOfEveryService) {
  const std::map<std::string, Call> calls = Calls();
  for (const std::string& method : AllMethods()) {
    EXPECT_EQ(calls.count(method), 1u) << method << " has no entry in the authorization matrix";
  }
  EXPECT_EQ(calls.size(), AllMethods().size());
}

TEST(AuthTest, EveryRpcTimesEveryCallerGivesTheExpectedCodeAndNoOtherTenantsData) {
  FakeEngineOptions engine_options;
  engine_options.train_step_delay = absl::Milliseconds(20);
  AuthServer s(engine_options);
  v1::AdapterInfo info;
  ASSERT_TRUE(s.Upload(s.key_a, "a-private", &info).ok());
  // The Delete cells run for "b" and the admin first (NOT_FOUND), then for "a".
  ASSERT_TRUE(s.Upload(s.key_a, "a-doomed", &info).ok());
  ASSERT_TRUE(s.Upload(s.key_b, "b-private", &info).ok());
  // a's job runs until the admin's CancelTrainingJob cell; the Watch cells
  // after it end with its final state.
  s.dataset_a = s.UploadDataset(s.key_a, "a-data");
  {
    v1::CreateTrainingJobRequest r;
    r.set_output_adapter("a-job-out");
    r.set_dataset_id(s.dataset_a);
    r.mutable_lora();
    r.mutable_hyperparameters()->set_max_steps(1000000);
    v1::TrainingJob job;
    ASSERT_TRUE(s.ClientFor(s.key_a)->CreateTrainingJob(r, &job).ok());
    s.job_a = job.job_id();
  }

  struct Caller {
    Cred cred;
    std::string tenant;  // Empty: not authenticated.
    bool admin = false;
    grpc::StatusCode refused = grpc::StatusCode::OK;
    const char* message = "";
  };
  const std::vector<Caller> callers = {
      {{"no token", ""}, "", false, grpc::StatusCode::UNAUTHENTICATED, kMissingToken},
      {{"malformed", "Bearer short"}, "", false, grpc::StatusCode::UNAUTHENTICATED, kMissingToken},
      {Bearer("unknown key", NewApiKey()), "", false, grpc::StatusCode::UNAUTHENTICATED,
       kInvalidKey},
      {Bearer("revoked key", s.key_revoked), "", false, grpc::StatusCode::UNAUTHENTICATED,
       kInvalidKey},
      {Bearer("tenant b", s.key_b), "b"},
      {Bearer("admin", s.admin_key), "admin", true},
      {Bearer("tenant a", s.key_a), "a"},
  };
  const std::map<std::string, Call> calls = Calls();
  const std::set<std::string> admin_only = AdminOnly();
  int cells = 0;
  for (const Caller& caller : callers) {
    for (const auto& [method, call] : calls) {
      ++cells;
      const Outcome o = call(s, caller.cred);
      const std::string cell = method + " × " + caller.cred.name + ": " + o.status.error_message();
      if (caller.tenant.empty()) {
        EXPECT_EQ(o.status.error_code(), caller.refused) << cell;
        EXPECT_EQ(o.status.error_message(), caller.message) << cell;
        continue;
      }
      if (admin_only.count(method) > 0 && !caller.admin) {
        EXPECT_EQ(o.status.error_code(), grpc::StatusCode::PERMISSION_DENIED) << cell;
        EXPECT_NE(o.status.error_message().find("needs the admin role"), std::string::npos) << cell;
        continue;
      }
      EXPECT_EQ(o.status.error_code(), Authorized(method, caller.tenant)) << cell;
      for (const v1::AdapterInfo& a : o.adapters) {
        EXPECT_TRUE(a.owner() == caller.tenant || a.visibility() == v1::VISIBILITY_PUBLIC)
            << cell << " carries " << a.owner() << "'s adapter " << a.name();
      }
      if (caller.tenant != "a") {
        EXPECT_EQ(o.response_debug.find("a-private"), std::string::npos) << cell;
        EXPECT_EQ(o.response_debug.find("a-doomed"), std::string::npos) << cell;
      }
      if (caller.tenant != "b") {
        EXPECT_EQ(o.response_debug.find("b-private"), std::string::npos) << cell;
      }
    }
  }
  EXPECT_EQ(cells, 7 * static_cast<int>(AllMethods().size()));
  // The engine saw each tenant's requests under its own name.
  std::set<std::string> seen;
  for (const GenerateRequest& r : s.engine->requests()) seen.insert(r.tenant);
  EXPECT_EQ(seen, (std::set<std::string>{"a", "b", "admin"}));
}

TEST(AuthTest, HealthStaysOpenWithoutAToken) {
  AuthServer s;
  grpc::GenericStub stub(s.channel);
  for (const std::string& service : {std::string(), std::string("adapterd.v1.Inference")}) {
    grpc::ClientContext context;
    std::string bytes;
    if (!service.empty()) {
      bytes.push_back(static_cast<char>((1 << 3) | 2));
      bytes.push_back(static_cast<char>(service.size()));
      bytes += service;
    }
    grpc::Slice slice(bytes);
    const grpc::ByteBuffer request(&slice, 1);
    grpc::ByteBuffer response;
    std::promise<grpc::Status> done;
    stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request,
                   &response, [&](grpc::Status st) { done.set_value(st); });
    ASSERT_TRUE(done.get_future().get().ok()) << service;
    grpc::Slice out;
    ASSERT_TRUE(response.DumpToSingleSlice(&out).ok());
    const std::string got(reinterpret_cast<const char*>(out.begin()), out.size());
    EXPECT_EQ(got, std::string("\x08\x01", 2)) << service;  // SERVING.
  }
}

TEST(AuthTest, MalformedHeadersAreUnauthenticatedWithOneMessage) {
  AuthServer s;
  for (const std::string& header :
       {std::string("Basic dXNlcjpwYXNz"), std::string("Bearer"), std::string("Bearer "),
        std::string("bearer ") + s.key_a, std::string("Bearer  ") + s.key_a,
        std::string("Bearer ") + s.key_a + " x", std::string("Bearer ") + std::string(300, 'k'),
        std::string("Token ") + s.key_a}) {
    grpc::ClientContext context;
    context.AddMetadata("authorization", header);
    v1::ServerInfo response;
    grpc::Status status = s.admin->GetServerInfo(&context, v1::GetServerInfoRequest(), &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << header;
    EXPECT_EQ(status.error_message(), kMissingToken) << header;
  }
  // Two authorization headers: refused rather than guessing which one counts.
  grpc::ClientContext context;
  context.AddMetadata("authorization", "Bearer " + s.key_a);
  context.AddMetadata("authorization", "Bearer " + s.key_b);
  v1::ServerInfo response;
  EXPECT_EQ(s.admin->GetServerInfo(&context, v1::GetServerInfoRequest(), &response).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
}

// B asking for A's private adapter gets exactly what it gets once the adapter
// is truly gone.
TEST(AuthTest, AnotherTenantsPrivateAdapterAnswersExactlyLikeAMissingOne) {
  AuthServer s;
  v1::AdapterInfo info;
  ASSERT_TRUE(s.Upload(s.key_a, "secret", &info).ok());
  auto probe = [&s](const std::string& key) {
    std::vector<std::pair<int, std::string>> answers;
    std::unique_ptr<Client> c = s.ClientFor(key);
    for (const std::string& ref : {std::string("secret"), std::string("secret@1")}) {
      v1::AdapterInfo got;
      grpc::Status g = c->GetAdapter(ref, &got);
      answers.emplace_back(g.error_code(), g.error_message());
      v1::LoadAdapterRequest lr;
      lr.set_adapter(ref);
      v1::LoadAdapterResponse lresp;
      grpc::Status l = c->LoadAdapter(lr, &lresp);
      answers.emplace_back(l.error_code(), l.error_message());
    }
    v1::DeleteAdapterRequest dr;
    dr.set_adapter("secret@1");
    v1::DeleteAdapterResponse dresp;
    grpc::Status d = c->DeleteAdapter(dr, &dresp);
    answers.emplace_back(d.error_code(), d.error_message());
    v1::ListAdaptersRequest list;
    list.set_name("secret");
    v1::ListAdaptersResponse lresp;
    grpc::Status l = c->ListAdapters(list, &lresp);
    answers.emplace_back(l.error_code(), std::to_string(lresp.adapters_size()));
    return answers;
  };
  const auto while_a_has_it = probe(s.key_b);
  for (const auto& [code, message] : while_a_has_it) {
    if (code != 0) EXPECT_EQ(code, grpc::StatusCode::NOT_FOUND) << message;
  }
  v1::AdapterInfo still;
  ASSERT_TRUE(s.ClientFor(s.key_a)->GetAdapter("secret", &still).ok());  // B changed nothing.
  v1::DeleteAdapterRequest dr;
  dr.set_adapter("secret");
  dr.set_all_versions(true);
  v1::DeleteAdapterResponse dresp;
  ASSERT_TRUE(s.ClientFor(s.key_a)->DeleteAdapter(dr, &dresp).ok());
  EXPECT_EQ(probe(s.key_b), while_a_has_it);
}

TEST(AuthTest, PublicAdaptersAreUsableByEveryTenantButOnlyTheOwnerListsOrDeletesThem) {
  AuthServer s;
  v1::AdapterInfo info;
  ASSERT_TRUE(s.Upload(s.key_a, "shared", &info).ok());
  v1::AdapterInfo got;
  EXPECT_EQ(s.ClientFor(s.key_b)->GetAdapter("shared", &got).error_code(),
            grpc::StatusCode::NOT_FOUND);
  // A tenant cannot share; an admin can.
  grpc::ClientContext denied;
  Attach(&denied, Bearer("a", s.key_a));
  v1::SetAdapterVisibilityRequest r;
  r.set_tenant("a");
  r.set_adapter("shared");
  r.set_make_public(true);
  v1::SetAdapterVisibilityResponse response;
  EXPECT_EQ(s.admin->SetAdapterVisibility(&denied, r, &response).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  grpc::ClientContext allowed;
  Attach(&allowed, Bearer("admin", s.admin_key));
  ASSERT_TRUE(s.admin->SetAdapterVisibility(&allowed, r, &response).ok());
  ASSERT_TRUE(s.ClientFor(s.key_b)->GetAdapter("shared", &got).ok());
  EXPECT_EQ(got.owner(), "a");
  EXPECT_EQ(got.visibility(), v1::VISIBILITY_PUBLIC);
  v1::ListAdaptersResponse listed;
  ASSERT_TRUE(s.ClientFor(s.key_b)->ListAdapters(v1::ListAdaptersRequest(), &listed).ok());
  EXPECT_EQ(listed.adapters_size(), 0);
  v1::DeleteAdapterRequest dr;
  dr.set_adapter("shared");
  dr.set_all_versions(true);
  v1::DeleteAdapterResponse dresp;
  EXPECT_EQ(s.ClientFor(s.key_b)->DeleteAdapter(dr, &dresp).error_code(),
            grpc::StatusCode::NOT_FOUND);
  // B's own adapter of the same name wins over the public one.
  ASSERT_TRUE(s.Upload(s.key_b, "shared", &info, 9).ok());
  ASSERT_TRUE(s.ClientFor(s.key_b)->GetAdapter("shared", &got).ok());
  EXPECT_EQ(got.owner(), "b");
  // A tenant's upload cannot ask for PUBLIC; an admin's can.
  Outcome tenant_public = UploadWith(s, Bearer("b", s.key_b), "pub", v1::VISIBILITY_PUBLIC);
  EXPECT_EQ(tenant_public.status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  Outcome admin_public = UploadWith(s, Bearer("admin", s.admin_key), "pub", v1::VISIBILITY_PUBLIC);
  ASSERT_TRUE(admin_public.status.ok()) << admin_public.status.error_message();
  EXPECT_EQ(admin_public.adapters.at(0).visibility(), v1::VISIBILITY_PUBLIC);
  ASSERT_TRUE(s.ClientFor(s.key_a)->GetAdapter("pub", &got).ok());
  EXPECT_EQ(got.owner(), "admin");
  // Back to private: B no longer sees A's.
  grpc::ClientContext back;
  Attach(&back, Bearer("admin", s.admin_key));
  r.set_make_public(false);
  ASSERT_TRUE(s.admin->SetAdapterVisibility(&back, r, &response).ok());
  ASSERT_TRUE(s.ClientFor(s.key_b)->DeleteAdapter(dr, &dresp).ok());
  EXPECT_EQ(s.ClientFor(s.key_b)->GetAdapter("shared", &got).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST(AuthTest, KeysAreStoredOnlyAsSaltedHashes) {
  AuthServer s;
  grpc::ClientContext context;
  Attach(&context, Bearer("admin", s.admin_key));
  v1::CreateApiKeyRequest r;
  r.set_tenant("a");
  v1::CreateApiKeyResponse created;
  ASSERT_TRUE(s.admin->CreateApiKey(&context, r, &created).ok());
  ASSERT_GE(created.key().size(), 60u);
  EXPECT_EQ(created.info().prefix(), created.key().substr(0, 16));
  // The new key works.
  v1::AdapterInfo info;
  ASSERT_TRUE(s.Upload(created.key(), "with-new-key", &info).ok());
  EXPECT_EQ(info.owner(), "a");
  // ListApiKeys never carries a key.
  grpc::ClientContext list_context;
  Attach(&list_context, Bearer("admin", s.admin_key));
  v1::ListApiKeysResponse keys;
  ASSERT_TRUE(s.admin->ListApiKeys(&list_context, v1::ListApiKeysRequest(), &keys).ok());
  const std::string listed = keys.DebugString();
  for (const std::string& key : {created.key(), s.key_a, s.key_b, s.admin_key, s.key_revoked}) {
    EXPECT_EQ(listed.find(key), std::string::npos);
    EXPECT_NE(listed.find(key.substr(0, 16)), std::string::npos);
  }
  // Not in any file of the data dir (database, WAL), in any form we wrote.
  s.server->tenant_registry()->Checkpoint().IgnoreError();
  std::string everything;
  for (const auto& e : std::filesystem::recursive_directory_iterator(s.tmp / "data")) {
    if (!e.is_regular_file()) continue;
    std::ifstream in(e.path(), std::ios::binary);
    std::stringstream b;
    b << in.rdbuf();
    everything += b.str();
  }
  ASSERT_NE(everything.find(created.key().substr(0, 16)), std::string::npos);  // Control.
  for (const std::string& key : {created.key(), s.key_a, s.key_b, s.admin_key, s.key_revoked}) {
    EXPECT_EQ(everything.find(key), std::string::npos) << "a key is stored in clear";
    EXPECT_EQ(everything.find(key.substr(16)), std::string::npos)
        << "a key's secret part is stored";
    EXPECT_EQ(everything.find(Sha256::Hex(key)), std::string::npos) << "an unsalted hash is stored";
  }
  // Each key row has its own salt.
  sqlite3* db = nullptr;
  ASSERT_EQ(
      sqlite3_open_v2((s.tmp / "data/registry.db").c_str(), &db, SQLITE_OPEN_READONLY, nullptr),
      SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db,
                               "SELECT COUNT(*), COUNT(DISTINCT salt), COUNT(DISTINCT hash) "
                               "FROM api_keys",
                               -1, &st, nullptr),
            SQLITE_OK);
  ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
  EXPECT_GE(sqlite3_column_int(st, 0), 5);
  EXPECT_EQ(sqlite3_column_int(st, 1), sqlite3_column_int(st, 0));
  EXPECT_EQ(sqlite3_column_int(st, 2), sqlite3_column_int(st, 0));
  sqlite3_finalize(st);
  sqlite3_close(db);
}

TEST(AuthTest, RevokingAKeyOrDisablingATenantTakesEffectOnTheNextCall) {
  AuthServer s;
  std::unique_ptr<Client> a = s.ClientFor(s.key_a);
  v1::ServerInfo info;
  ASSERT_TRUE(a->GetServerInfo(&info).ok());
  EXPECT_TRUE(info.auth_enabled());
  // Disable: PERMISSION_DENIED; enable again: back.
  auto update = [&s](bool disabled) {
    grpc::ClientContext context;
    Attach(&context, Bearer("admin", s.admin_key));
    v1::UpdateTenantRequest r;
    r.set_id("a");
    r.set_disabled(disabled);
    r.add_update_paths("disabled");
    v1::Tenant t;
    return s.admin->UpdateTenant(&context, r, &t);
  };
  ASSERT_TRUE(update(true).ok());
  grpc::Status denied = a->GetServerInfo(&info);
  EXPECT_EQ(denied.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(denied.error_message(), kTenantDisabled);
  ASSERT_TRUE(update(false).ok());
  ASSERT_TRUE(a->GetServerInfo(&info).ok());
  // Revoke a's key through the RPC.
  absl::StatusOr<std::vector<ApiKey>> keys = s.server->tenant_registry()->ListKeys("a");
  ASSERT_TRUE(keys.ok());
  std::string live_id;
  for (const ApiKey& k : *keys) {
    if (!k.revoked) live_id = k.id;
  }
  grpc::ClientContext context;
  Attach(&context, Bearer("admin", s.admin_key));
  v1::RevokeApiKeyRequest r;
  r.set_id(live_id);
  v1::ApiKeyInfo revoked;
  ASSERT_TRUE(s.admin->RevokeApiKey(&context, r, &revoked).ok());
  EXPECT_TRUE(revoked.revoked());
  grpc::Status gone = a->GetServerInfo(&info);
  EXPECT_EQ(gone.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(gone.error_message(), kInvalidKey);
}

TEST(AuthTest, TenantAdminRpcsValidateAndReport) {
  AuthServer s;
  auto create = [&s](const std::string& id) {
    grpc::ClientContext context;
    Attach(&context, Bearer("admin", s.admin_key));
    v1::CreateTenantRequest r;
    r.set_id(id);
    r.mutable_quotas()->set_requests_per_second(5);
    v1::Tenant t;
    return s.admin->CreateTenant(&context, r, &t);
  };
  EXPECT_TRUE(create("c1").ok());
  EXPECT_EQ(create("c1").error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(create("Bad Id").error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(create("").error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  grpc::ClientContext context;
  Attach(&context, Bearer("admin", s.admin_key));
  v1::ListTenantsResponse all;
  ASSERT_TRUE(s.admin->ListTenants(&context, v1::ListTenantsRequest(), &all).ok());
  std::set<std::string> ids;
  for (const v1::Tenant& t : all.tenants()) ids.insert(t.id());
  EXPECT_EQ(ids, (std::set<std::string>{"a", "admin", "b", "c1", "default"}));
  grpc::ClientContext key_context;
  Attach(&key_context, Bearer("admin", s.admin_key));
  v1::CreateApiKeyRequest kr;
  kr.set_tenant("nobody");
  v1::CreateApiKeyResponse kresp;
  EXPECT_EQ(s.admin->CreateApiKey(&key_context, kr, &kresp).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST(AuthTest, ABootstrapKeyIsMadeAndLoggedOnceOnAFreshDataDir) {
  TempDir tmp;
  FakeEngine engine;
  ServerOptions options;
  options.listen = "127.0.0.1:0";
  options.auth_enabled = true;
  options.adapter_store.root = tmp / "data";
  int64_t first = 0, second = 0;
  for (int64_t* count : {&first, &second}) {
    absl::StatusOr<std::unique_ptr<Server>> started = Server::Start(options, &engine);
    ASSERT_TRUE(started.ok()) << started.status();
    absl::StatusOr<std::vector<ApiKey>> keys = (*started)->tenant_registry()->ListKeys("admin");
    ASSERT_TRUE(keys.ok());
    *count = static_cast<int64_t>(keys->size());
    (*started)->Shutdown(absl::Seconds(1));
  }
  EXPECT_EQ(first, 1);
  EXPECT_EQ(second, 1);  // Not made again once one exists.
  engine.Shutdown(absl::ZeroDuration());
}

TEST(AuthTest, WithoutAuthenticationEveryCallerIsTheDefaultAdmin) {
  TempDir tmp;
  FakeEngine engine;
  ServerOptions options;
  options.listen = "127.0.0.1:0";
  options.adapter_store.root = tmp / "data";
  absl::StatusOr<std::unique_ptr<Server>> started = Server::Start(options, &engine);
  ASSERT_TRUE(started.ok());
  ClientOptions o;
  o.target = (*started)->address();
  Client client(o);
  v1::ServerStats stats;
  EXPECT_TRUE(client.GetStats(&stats).ok());
  v1::ServerInfo info;
  ASSERT_TRUE(client.GetServerInfo(&info).ok());
  EXPECT_FALSE(info.auth_enabled());
  EXPECT_EQ((*started)->tenant_registry(), nullptr);
  (*started)->BeginShutdown();
  engine.Shutdown(absl::ZeroDuration());
  (*started)->Shutdown(absl::Seconds(1));
}

}  // namespace
}  // namespace adapterd::testing
