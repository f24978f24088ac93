#include "server/server.h"

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/support/byte_buffer.h>

#include <future>
#include <string>

#include "gtest/gtest.h"
#include "tests/server/test_server.h"

namespace adapterd::testing {
namespace {

// The health and reflection protos have no installed C++ headers in Debian's
// gRPC, so these tests speak their wire format through the generic stub.

std::string LengthDelimited(int field, const std::string& value) {
  std::string out;
  out.push_back(static_cast<char>((field << 3) | 2));
  out.push_back(static_cast<char>(value.size()));  // Short values only.
  return out + value;
}

grpc::ByteBuffer ToBuffer(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

std::string FromBuffer(const grpc::ByteBuffer& buffer) {
  grpc::Slice slice;
  EXPECT_TRUE(buffer.TrySingleSlice(&slice).ok() || buffer.DumpToSingleSlice(&slice).ok());
  return std::string(reinterpret_cast<const char*>(slice.begin()), slice.size());
}

// Returns the HealthCheckResponse status (1 SERVING, 2 NOT_SERVING) or -code.
int HealthCheck(TestServer& t, const std::string& service) {
  grpc::GenericStub stub(t.client->channel());
  grpc::ClientContext context;
  const grpc::ByteBuffer request = ToBuffer(LengthDelimited(1, service));
  grpc::ByteBuffer response;
  std::promise<grpc::Status> done;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&](grpc::Status s) { done.set_value(s); });
  grpc::Status status = done.get_future().get();
  if (!status.ok()) return -static_cast<int>(status.error_code());
  const std::string bytes = FromBuffer(response);
  if (bytes.empty()) return 0;  // UNKNOWN, the proto default.
  EXPECT_EQ(bytes[0], 0x08);
  return bytes[1];
}

TEST(ServerTest, HealthIsServingForTheServerAndEachService) {
  TestServer t;
  EXPECT_EQ(HealthCheck(t, ""), 1);
  for (const char* name : Server::kServiceNames) EXPECT_EQ(HealthCheck(t, name), 1) << name;
  EXPECT_EQ(HealthCheck(t, "no.such.Service"), -static_cast<int>(grpc::StatusCode::NOT_FOUND));
}

TEST(ServerTest, HealthIsNotServingOnceShutdownBegins) {
  TestServer t;
  t.server->BeginShutdown();
  EXPECT_EQ(HealthCheck(t, ""), 2);
  for (const char* name : Server::kServiceNames) EXPECT_EQ(HealthCheck(t, name), 2) << name;
}

TEST(ServerTest, ReflectionListsOurServices) {
  TestServer t;
  grpc::GenericStub stub(t.client->channel());
  grpc::CompletionQueue cq;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  auto call = stub.PrepareCall(
      &context, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  void* tag;
  bool ok;
  auto wait = [&](intptr_t expected) {
    ASSERT_TRUE(cq.Next(&tag, &ok));
    EXPECT_EQ(reinterpret_cast<intptr_t>(tag), expected);
    EXPECT_TRUE(ok);
  };
  call->StartCall(reinterpret_cast<void*>(1));
  wait(1);
  // ServerReflectionRequest{list_services: ""} is field 7.
  call->Write(ToBuffer(LengthDelimited(7, "")), reinterpret_cast<void*>(2));
  wait(2);
  call->WritesDone(reinterpret_cast<void*>(3));
  wait(3);
  grpc::ByteBuffer response;
  call->Read(&response, reinterpret_cast<void*>(4));
  wait(4);
  const std::string bytes = FromBuffer(response);
  EXPECT_NE(bytes.find("adapterd.v1.Inference"), std::string::npos);
  EXPECT_NE(bytes.find("adapterd.v1.Admin"), std::string::npos);
  EXPECT_NE(bytes.find("grpc.health.v1.Health"), std::string::npos);
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(5));
  wait(5);
  EXPECT_TRUE(status.ok()) << status.error_message();
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
}

TEST(ServerTest, AnAddressInUseIsUnavailable) {
  TestServer t;
  FakeEngine engine;
  ServerOptions options;
  options.listen = t.server->address();
  absl::StatusOr<std::unique_ptr<Server>> second = Server::Start(options, &engine);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(second.status().message(), "cannot listen on " + t.server->address());
}

TEST(ServerTest, AMessageOverTheLimitIsResourceExhausted) {
  ServerOptions options;
  options.max_message_bytes = 4096;
  TestServer t(FakeEngineOptions(), options);
  v1::GenerateResponse response;
  grpc::Status status = t.client->Generate(MakeRequest(std::string(5000, 'a'), 1), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(t.engine->submitted(), 0);
}

TEST(ServerTest, ShutdownWithoutDrainCompletesWhileAStreamIsOpen) {
  FakeEngineOptions engine_options;
  engine_options.step_delay = absl::Milliseconds(10);
  auto t = std::make_unique<TestServer>(engine_options);
  ClientOptions client_options;
  client_options.target = t->server->address();
  Client client(client_options);
  std::thread reader([&] {
    grpc::Status status = client.GenerateStream(
        MakeRequest("long", 4000), [](const v1::GenerateStreamResponse&) { return true; });
    EXPECT_FALSE(status.ok());
  });
  ASSERT_TRUE(t->engine->WaitForSubmitted(1, absl::Seconds(5)));
  const absl::Time start = absl::Now();
  t.reset();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  reader.join();
}

}  // namespace
}  // namespace adapterd::testing
