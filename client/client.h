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
#include <vector>

#include "adapterd/v1/adapters.grpc.pb.h"
#include "adapterd/v1/admin.grpc.pb.h"
#include "adapterd/v1/inference.grpc.pb.h"
#include "adapterd/v1/training.grpc.pb.h"

namespace adapterd {

// One local file to upload under an adapter file name.
struct UploadFile {
  std::string name;  // adapter_config.json, adapter_model.safetensors, ...
  std::string path;  // Local path.
};

struct UploadAdapterOptions {
  std::string name;
  int64_t version = 0;  // 0: the next version.
  std::string method;   // Optional hint the server checks.
  std::string request_id;
  int64_t chunk_bytes = 1 << 20;  // Data per message; keep below the server's message limit.
};

struct ClientOptions {
  std::string target = "127.0.0.1:50051";
  std::string token;                     // Non-empty: sent as "authorization: Bearer <token>".
  std::chrono::milliseconds timeout{0};  // Per call; 0 = no deadline.
  // TLS: tls_ca_file set → TLS, verifying the server against that PEM CA
  // bundle; tls_use_system_roots → TLS with the system's roots. With
  // tls_cert_file and tls_key_file, the client presents that certificate
  // (mutual TLS). A file that cannot be read makes every call fail with
  // UNAVAILABLE.
  std::string tls_ca_file;
  bool tls_use_system_roots = false;
  std::string tls_cert_file;
  std::string tls_key_file;
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

  // Called after each chunk with the bytes sent so far and the total.
  using UploadProgress = std::function<void(int64_t sent, int64_t total)>;

  // The adapter files in a local directory: adapter_config.json, the
  // safetensors weights present, P-tuning's prompt_encoder.safetensors, and
  // for AdapterFusion its config, weights and each fused adapter's
  // subdirectory ("fa/adapter_config.json", ...); pickle weights (*.bin,
  // *.pt) only when there are no safetensors, so that the server refuses
  // them with its message.
  static std::vector<UploadFile> AdapterFilesIn(const std::string& dir);

  // Streams `files` as one UploadAdapter call: a header with each file's size
  // and sha256 (computed here), then chunks. A local read error is
  // INVALID_ARGUMENT "cannot read <path>".
  grpc::Status UploadAdapter(const std::vector<UploadFile>& files,
                             const UploadAdapterOptions& options, v1::AdapterInfo* response,
                             const UploadProgress& progress = nullptr);
  grpc::Status RegisterAdapter(const v1::RegisterAdapterRequest& request,
                               v1::AdapterInfo* response);
  grpc::Status GetAdapter(const std::string& adapter, v1::AdapterInfo* response);
  grpc::Status ListAdapters(const v1::ListAdaptersRequest& request,
                            v1::ListAdaptersResponse* response);
  grpc::Status DeleteAdapter(const v1::DeleteAdapterRequest& request,
                             v1::DeleteAdapterResponse* response);
  grpc::Status LoadAdapter(const v1::LoadAdapterRequest& request,
                           v1::LoadAdapterResponse* response);
  grpc::Status UnloadAdapter(const v1::UnloadAdapterRequest& request,
                             v1::UnloadAdapterResponse* response);

  // Training. UploadDataset streams a local JSONL file (size and sha256
  // computed here) in chunks of `chunk_bytes`; a local read error is
  // INVALID_ARGUMENT "cannot read <path>".
  grpc::Status UploadDataset(const std::string& path, const std::string& name,
                             v1::DatasetInfo* response, const UploadProgress& progress = nullptr,
                             int64_t chunk_bytes = 1 << 20);
  grpc::Status ListDatasets(const v1::ListDatasetsRequest& request,
                            v1::ListDatasetsResponse* response);
  grpc::Status DeleteDataset(const std::string& dataset_id, v1::DatasetInfo* response);
  grpc::Status CreateTrainingJob(const v1::CreateTrainingJobRequest& request,
                                 v1::TrainingJob* response);
  grpc::Status GetTrainingJob(const std::string& job_id, v1::TrainingJob* response);
  grpc::Status ListTrainingJobs(const v1::ListTrainingJobsRequest& request,
                                v1::ListTrainingJobsResponse* response);
  grpc::Status CancelTrainingJob(const std::string& job_id, v1::TrainingJob* response);
  // Calls `on_update` with each streamed state until the final one (then OK)
  // or until it returns false (then CANCELLED). No per-call deadline: a job
  // may run for hours.
  using JobCallback = std::function<bool(const v1::TrainingJob&)>;
  grpc::Status WatchTrainingJob(const std::string& job_id, const JobCallback& on_update);

  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }
  // The Admin stub for the tenant/key RPCs; call Prepare on each context.
  v1::Admin::Stub* admin() const { return admin_.get(); }
  // Adds the bearer token and the deadline to `context`.
  void Prepare(grpc::ClientContext* context) const;

 private:

  const ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Inference::Stub> inference_;
  std::unique_ptr<v1::Admin::Stub> admin_;
  std::unique_ptr<v1::Adapters::Stub> adapters_;
  std::unique_ptr<v1::Training::Stub> training_;
};

}  // namespace adapterd
