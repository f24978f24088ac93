#include "server/adapters_service.h"

#include <grpcpp/client_context.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>

#include "client/client.h"
#include "gtest/gtest.h"
#include "server/server.h"
#include "tests/server/fake_engine.h"
#include "tests/store/store_test_util.h"

namespace adapterd::testing {
namespace {

using Files = std::map<std::string, std::string>;

// A real server on loopback with an adapter store in a temp dir.
struct AdaptersServer {
  explicit AdaptersServer(int64_t max_adapter_bytes = int64_t{1} << 30, bool with_store = true) {
    engine = std::make_unique<FakeEngine>();
    ServerOptions options;
    options.listen = "127.0.0.1:0";
    if (with_store) {
      options.adapter_store.root = tmp / "data";
      std::filesystem::create_directories(tmp / "models");
      options.adapter_store.allowed_roots = {tmp / "models"};
      options.adapter_store.max_adapter_bytes = max_adapter_bytes;
    }
    absl::StatusOr<std::unique_ptr<Server>> started = Server::Start(options, engine.get());
    EXPECT_TRUE(started.ok()) << started.status();
    server = *std::move(started);
    ClientOptions client_options;
    client_options.target = server->address();
    client = std::make_unique<Client>(client_options);
    stub = v1::Adapters::NewStub(client->channel());
  }
  ~AdaptersServer() {
    server->BeginShutdown();
    engine->Shutdown(absl::ZeroDuration());
    server->Shutdown(absl::Seconds(5));
  }

  // Writes `files` under a fresh local directory and returns their UploadFiles.
  std::vector<UploadFile> Local(const std::string& dir_name, const Files& files) {
    const std::string dir = tmp / dir_name;
    WriteFiles(dir, files);
    return Client::AdapterFilesIn(dir);
  }

  grpc::Status Upload(const std::string& name, const Files& files, v1::AdapterInfo* info,
                      int64_t chunk = 100) {
    UploadAdapterOptions options;
    options.name = name;
    options.chunk_bytes = chunk;
    return client->UploadAdapter(Local("up_" + name + std::to_string(counter++), files), options,
                                 info);
  }

  int ListCount() {
    v1::ListAdaptersResponse response;
    EXPECT_TRUE(client->ListAdapters(v1::ListAdaptersRequest(), &response).ok());
    return response.adapters_size();
  }

  TempDir tmp;
  int counter = 0;
  std::unique_ptr<FakeEngine> engine;
  std::unique_ptr<Server> server;
  std::unique_ptr<Client> client;
  std::unique_ptr<v1::Adapters::Stub> stub;
};

v1::UploadAdapterRequest Header(const std::string& name, const Files& files) {
  v1::UploadAdapterRequest r;
  v1::UploadHeader* h = r.mutable_header();
  h->set_name(name);
  int64_t total = 0;
  for (const auto& [file, data] : files) {
    v1::AdapterFile* f = h->add_files();
    f->set_name(file);
    f->set_size(static_cast<int64_t>(data.size()));
    f->set_sha256(Sha256::Hex(data));
    total += static_cast<int64_t>(data.size());
  }
  h->set_total_size(total);
  return r;
}

v1::UploadAdapterRequest Chunk(const std::string& file, int64_t offset, const std::string& data) {
  v1::UploadAdapterRequest r;
  r.mutable_chunk()->set_file(file);
  r.mutable_chunk()->set_offset(offset);
  r.mutable_chunk()->set_data(data);
  return r;
}

// Sends `messages` on one UploadAdapter stream and returns the status.
grpc::Status SendRaw(AdaptersServer& s, const std::vector<v1::UploadAdapterRequest>& messages,
                     v1::AdapterInfo* info) {
  grpc::ClientContext context;
  auto writer = s.stub->UploadAdapter(&context, info);
  for (const auto& m : messages) {
    if (!writer->Write(m)) break;
  }
  writer->WritesDone();
  return writer->Finish();
}

TEST(AdaptersServiceTest, UploadGetListDeleteRoundTrip) {
  AdaptersServer s;
  const Files files = LoraFiles(1);
  v1::AdapterInfo info;
  grpc::Status status = s.Upload("summarize", files, &info);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(info.name(), "summarize");
  EXPECT_EQ(info.version(), 1);
  EXPECT_EQ(info.method(), "lora");
  EXPECT_EQ(info.state(), v1::ADAPTER_STATE_READY);
  EXPECT_EQ(info.owner(), kDefaultTenantId);
  EXPECT_EQ(info.files_size(), 2);
  EXPECT_GT(info.created_at().seconds(), 0);

  v1::AdapterInfo got;
  ASSERT_TRUE(s.client->GetAdapter("summarize@1", &got).ok());
  EXPECT_EQ(got.sha256(), info.sha256());
  EXPECT_EQ(s.ListCount(), 1);

  v1::DeleteAdapterRequest del;
  del.set_adapter("summarize");
  del.set_all_versions(true);
  v1::DeleteAdapterResponse deleted;
  ASSERT_TRUE(s.client->DeleteAdapter(del, &deleted).ok());
  ASSERT_EQ(deleted.deleted_size(), 1);
  EXPECT_EQ(deleted.deleted(0).state(), v1::ADAPTER_STATE_DELETED);
  EXPECT_EQ(s.client->GetAdapter("summarize", &got).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(s.ListCount(), 0);
}

TEST(AdaptersServiceTest, ListPagesAndFiltersByMethod) {
  AdaptersServer s;
  v1::AdapterInfo info;
  for (int i = 0; i < 5; ++i)
    ASSERT_TRUE(s.Upload("a" + std::to_string(i), LoraFiles(i), &info).ok());
  v1::ListAdaptersRequest request;
  request.set_page_size(2);
  int seen = 0, pages = 0;
  while (true) {
    v1::ListAdaptersResponse response;
    ASSERT_TRUE(s.client->ListAdapters(request, &response).ok());
    seen += response.adapters_size();
    ++pages;
    if (response.next_page_token().empty()) break;
    request.set_page_token(response.next_page_token());
  }
  EXPECT_EQ(seen, 5);
  EXPECT_EQ(pages, 3);
  request = v1::ListAdaptersRequest();
  request.set_method("prefix_tuning");
  v1::ListAdaptersResponse response;
  ASSERT_TRUE(s.client->ListAdapters(request, &response).ok());
  EXPECT_EQ(response.adapters_size(), 0);
  request.set_method("");
  request.set_page_token("not-a-token");
  EXPECT_EQ(s.client->ListAdapters(request, &response).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

TEST(AdaptersServiceTest, BadUploadStreamsGetExactCodesAndLeaveNothing) {
  AdaptersServer s;
  const Files files = LoraFiles(1);
  const std::string config = files.at("adapter_config.json");
  const std::string weights = files.at("adapter_model.safetensors");
  v1::AdapterInfo info;
  // A chunk before the header.
  EXPECT_EQ(SendRaw(s, {Chunk("adapter_config.json", 0, config)}, &info).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  // A wrong offset.
  EXPECT_EQ(
      SendRaw(s, {Header("a", files), Chunk("adapter_config.json", 3, config)}, &info).error_code(),
      grpc::StatusCode::INVALID_ARGUMENT);
  // The stream ends before every byte arrived.
  EXPECT_EQ(SendRaw(s,
                    {Header("a", files), Chunk("adapter_config.json", 0, config),
                     Chunk("adapter_model.safetensors", 0, weights.substr(0, 100))},
                    &info)
                .error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  // Bytes that do not hash to the declared sha256.
  std::string flipped = weights;
  flipped[flipped.size() - 1] ^= 1;
  EXPECT_EQ(SendRaw(s,
                    {Header("a", files), Chunk("adapter_config.json", 0, config),
                     Chunk("adapter_model.safetensors", 0, flipped)},
                    &info)
                .error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  // total_size that does not add up; a bad name; a pickle file.
  v1::UploadAdapterRequest header = Header("a", files);
  header.mutable_header()->set_total_size(1);
  EXPECT_EQ(SendRaw(s, {header}, &info).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(SendRaw(s, {Header("../etc", files)}, &info).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(SendRaw(s, {Header("a", {{"adapter_config.json", config}, {"adapter_model.bin", "x"}})},
                    &info)
                .error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  // Two headers; an empty stream.
  EXPECT_EQ(SendRaw(s, {Header("a", files), Header("a", files)}, &info).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(SendRaw(s, {}, &info).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(s.ListCount(), 0);
  EXPECT_TRUE(FilesUnder(s.tmp / "data/blobs").empty());
  EXPECT_TRUE(FilesUnder(s.tmp / "data/uploads").empty());
  // Negative control: the same messages, complete and correct, succeed.
  ASSERT_TRUE(SendRaw(s,
                      {Header("a", files), Chunk("adapter_config.json", 0, config),
                       Chunk("adapter_model.safetensors", 0, weights)},
                      &info)
                  .ok());
  EXPECT_EQ(s.ListCount(), 1);
}

TEST(AdaptersServiceTest, AnOverSizeUploadIsResourceExhausted) {
  AdaptersServer s(/*max_adapter_bytes=*/1024);
  v1::AdapterInfo info;
  grpc::Status status = s.Upload("big", LoraFiles(1, 4, 64), &info);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  EXPECT_NE(status.error_message().find("1024"), std::string::npos);
  EXPECT_EQ(s.ListCount(), 0);
}

TEST(AdaptersServiceTest, ACancelledUploadLeavesNoTrace) {
  AdaptersServer s;
  const Files files = LoraFiles(1);
  {
    grpc::ClientContext context;
    v1::AdapterInfo info;
    auto writer = s.stub->UploadAdapter(&context, &info);
    ASSERT_TRUE(writer->Write(Header("a", files)));
    ASSERT_TRUE(writer->Write(Chunk("adapter_config.json", 0, files.at("adapter_config.json"))));
    context.TryCancel();
    EXPECT_EQ(writer->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!FilesUnder(s.tmp / "data/uploads").empty() && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_TRUE(FilesUnder(s.tmp / "data/uploads").empty());
  EXPECT_EQ(s.ListCount(), 0);
}

TEST(AdaptersServiceTest, RegisterReadsOnlyUnderAllowedRoots) {
  AdaptersServer s;
  WriteFiles(s.tmp / "models/good", LoraFiles(2));
  WriteFiles(s.tmp / "elsewhere", LoraFiles(3));
  std::filesystem::create_symlink(s.tmp / "elsewhere", s.tmp / "models/link");
  v1::RegisterAdapterRequest request;
  request.set_name("reg");
  request.set_path(s.tmp / "models/good");
  v1::AdapterInfo info;
  grpc::Status status = s.client->RegisterAdapter(request, &info);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(info.version(), 1);
  request.set_path(s.tmp / "models/link");
  EXPECT_EQ(s.client->RegisterAdapter(request, &info).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  request.set_path(s.tmp / "models/../elsewhere");
  EXPECT_EQ(s.client->RegisterAdapter(request, &info).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  request.set_path(s.tmp / "models/good");
  // Without authentication the caller is an admin, who may share an adapter.
  request.set_visibility(v1::VISIBILITY_PUBLIC);
  ASSERT_TRUE(s.client->RegisterAdapter(request, &info).ok());
  EXPECT_EQ(info.visibility(), v1::VISIBILITY_PUBLIC);
  EXPECT_EQ(s.ListCount(), 2);
}

TEST(AdaptersServiceTest, LoadAndUnloadResolveTheRefThenSayThereIsNoCache) {
  AdaptersServer s;
  v1::AdapterInfo info;
  ASSERT_TRUE(s.Upload("a", LoraFiles(1), &info).ok());
  v1::LoadAdapterRequest load;
  v1::LoadAdapterResponse loaded;
  load.set_adapter("missing");
  EXPECT_EQ(s.client->LoadAdapter(load, &loaded).error_code(), grpc::StatusCode::NOT_FOUND);
  load.set_adapter("a/b");
  EXPECT_EQ(s.client->LoadAdapter(load, &loaded).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  load.set_adapter("a@1");
  grpc::Status status = s.client->LoadAdapter(load, &loaded);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(status.error_message().find("no adapter cache"), std::string::npos);
  v1::UnloadAdapterRequest unload;
  v1::UnloadAdapterResponse unloaded;
  unload.set_adapter("a");
  EXPECT_EQ(s.client->UnloadAdapter(unload, &unloaded).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
}

TEST(AdaptersServiceTest, DeleteNeedsAVersionOrAllVersions) {
  AdaptersServer s;
  v1::AdapterInfo info;
  ASSERT_TRUE(s.Upload("a", LoraFiles(1), &info).ok());
  ASSERT_TRUE(s.Upload("a", LoraFiles(2), &info).ok());
  v1::DeleteAdapterRequest del;
  v1::DeleteAdapterResponse response;
  del.set_adapter("a");
  EXPECT_EQ(s.client->DeleteAdapter(del, &response).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  del.set_adapter("a@1");
  ASSERT_TRUE(s.client->DeleteAdapter(del, &response).ok());
  EXPECT_EQ(s.client->DeleteAdapter(del, &response).error_code(), grpc::StatusCode::NOT_FOUND);
  ASSERT_TRUE(s.client->GetAdapter("a", &info).ok());
  EXPECT_EQ(info.version(), 2);
}

TEST(AdaptersServiceTest, WithoutAStoreEveryCallIsFailedPrecondition) {
  AdaptersServer s(0, /*with_store=*/false);
  v1::AdapterInfo info;
  EXPECT_EQ(s.client->GetAdapter("a", &info).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(s.Upload("a", LoraFiles(1), &info).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
}

TEST(AdaptersServiceTest, CallsAfterShutdownBeganAreUnavailable) {
  AdaptersServer s;
  s.server->BeginShutdown();
  v1::AdapterInfo info;
  EXPECT_EQ(s.client->GetAdapter("a", &info).error_code(), grpc::StatusCode::UNAVAILABLE);
}

}  // namespace
}  // namespace adapterd::testing
