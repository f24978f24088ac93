#include "client/client.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include <openssl/evp.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <utility>

#include <sstream>

namespace adapterd {
namespace {

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// sha256 and size of a local file; false if it cannot be read.
bool HashFile(const std::string& path, std::string* sha256, int64_t* size) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  std::string buffer(1 << 20, '\0');
  *size = 0;
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    const std::streamsize n = in.gcount();
    if (n <= 0) break;
    EVP_DigestUpdate(ctx, buffer.data(), static_cast<size_t>(n));
    *size += n;
  }
  const bool ok = !in.bad();
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx, digest, &len);
  EVP_MD_CTX_free(ctx);
  static constexpr char kHex[] = "0123456789abcdef";
  sha256->clear();
  for (unsigned int i = 0; i < len; ++i) {
    sha256->push_back(kHex[digest[i] >> 4]);
    sha256->push_back(kHex[digest[i] & 0xf]);
  }
  return ok;
}

}  // namespace

std::string ReadFileOr(const std::string& path, bool* ok) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  if (!in.good() && !in.eof()) *ok = false;
  if (buffer.str().empty()) *ok = false;
  return buffer.str();
}

std::shared_ptr<grpc::ChannelCredentials> CredentialsFor(const ClientOptions& options) {
  const bool tls = !options.tls_ca_file.empty() || options.tls_use_system_roots ||
                   !options.tls_cert_file.empty();
  if (!tls) return grpc::InsecureChannelCredentials();
  grpc::SslCredentialsOptions ssl;
  bool ok = true;
  if (!options.tls_ca_file.empty()) ssl.pem_root_certs = ReadFileOr(options.tls_ca_file, &ok);
  if (!options.tls_cert_file.empty() || !options.tls_key_file.empty()) {
    ssl.pem_cert_chain = ReadFileOr(options.tls_cert_file, &ok);
    ssl.pem_private_key = ReadFileOr(options.tls_key_file, &ok);
  }
  if (!ok) {
    // An unreadable file must not silently fall back to something weaker:
    // a channel to nowhere fails every call with UNAVAILABLE.
    return nullptr;
  }
  return grpc::SslCredentials(ssl);
}

Client::Client(ClientOptions options) : options_(std::move(options)) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options_.max_message_bytes);
  args.SetMaxSendMessageSize(options_.max_message_bytes);
  std::shared_ptr<grpc::ChannelCredentials> credentials = CredentialsFor(options_);
  std::string target = options_.target;
  if (credentials == nullptr) {
    credentials = grpc::InsecureChannelCredentials();
    target = "unix:/nonexistent/adapterd-client-tls-files-unreadable";
  }
  channel_ = grpc::CreateCustomChannel(target, credentials, args);
  inference_ = v1::Inference::NewStub(channel_);
  admin_ = v1::Admin::NewStub(channel_);
  adapters_ = v1::Adapters::NewStub(channel_);
  training_ = v1::Training::NewStub(channel_);
}

void Client::Prepare(grpc::ClientContext* context) const {
  if (!options_.token.empty()) {
    context->AddMetadata("authorization", "Bearer " + options_.token);
  }
  if (options_.timeout.count() > 0) {
    context->set_deadline(std::chrono::system_clock::now() + options_.timeout);
  }
}

grpc::Status Client::Generate(const v1::GenerateRequest& request, v1::GenerateResponse* response) {
  grpc::ClientContext context;
  Prepare(&context);
  return inference_->Generate(&context, request, response);
}

grpc::Status Client::GenerateStream(const v1::GenerateRequest& request,
                                    const ChunkCallback& on_chunk) {
  grpc::ClientContext context;
  Prepare(&context);
  std::unique_ptr<grpc::ClientReader<v1::GenerateStreamResponse>> reader =
      inference_->GenerateStream(&context, request);
  v1::GenerateStreamResponse chunk;
  while (reader->Read(&chunk)) {
    if (!on_chunk(chunk)) {
      context.TryCancel();
      while (reader->Read(&chunk)) {
      }
      break;
    }
  }
  return reader->Finish();
}

grpc::Status Client::Score(const v1::ScoreRequest& request, v1::ScoreResponse* response) {
  grpc::ClientContext context;
  Prepare(&context);
  return inference_->Score(&context, request, response);
}

grpc::Status Client::GetServerInfo(v1::ServerInfo* response) {
  grpc::ClientContext context;
  Prepare(&context);
  return admin_->GetServerInfo(&context, v1::GetServerInfoRequest(), response);
}

grpc::Status Client::GetStats(v1::ServerStats* response) {
  grpc::ClientContext context;
  Prepare(&context);
  return admin_->GetStats(&context, v1::GetStatsRequest(), response);
}

}  // namespace adapterd

namespace adapterd {

std::vector<UploadFile> Client::AdapterFilesIn(const std::string& dir) {
  // The files the server's store accepts (adapters_store/adapter_ref.h).
  static constexpr const char* kFiles[] = {
      "adapter_config.json",        "adapter_model.safetensors",       "adapter.safetensors",
      "prompt_encoder.safetensors", "adapter_fusion_config.json", "model_adapter_fusion.safetensors"};
  auto is_file = [](const std::string& path) {
    struct stat st;
    return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
  };
  std::vector<UploadFile> files;
  bool has_weights = false;
  for (const char* name : kFiles) {
    const std::string path = dir + "/" + name;
    if (is_file(path)) {
      files.push_back({name, path});
      has_weights |= EndsWith(name, ".safetensors");
    }
  }
  std::error_code ec;
  if (is_file(dir + "/adapter_fusion_config.json")) {
    // AdapterFusion: the fused adapters in their own subdirectories, by name.
    std::vector<std::string> subdirs;
    for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
      if (entry.is_directory(ec)) subdirs.push_back(entry.path().filename().string());
    }
    std::sort(subdirs.begin(), subdirs.end());
    for (const std::string& sub : subdirs) {
      for (const char* name : {"adapter_config.json", "adapter.safetensors"}) {
        const std::string path = dir + "/" + sub + "/" + name;
        if (is_file(path)) files.push_back({sub + "/" + name, path});
      }
    }
  }
  if (!has_weights) {
    for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
      const std::string name = entry.path().filename().string();
      if (EndsWith(name, ".bin") || EndsWith(name, ".pt") || EndsWith(name, ".pth")) {
        files.push_back({name, entry.path().string()});
      }
    }
  }
  return files;
}

grpc::Status Client::UploadAdapter(const std::vector<UploadFile>& files,
                                   const UploadAdapterOptions& options, v1::AdapterInfo* response,
                                   const UploadProgress& progress) {
  v1::UploadAdapterRequest first;
  v1::UploadHeader* header = first.mutable_header();
  header->set_name(options.name);
  header->set_version(options.version);
  header->set_method(options.method);
  header->set_request_id(options.request_id);
  int64_t total = 0;
  for (const UploadFile& f : files) {
    std::string sha;
    int64_t size = 0;
    if (!HashFile(f.path, &sha, &size)) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "cannot read " + f.path);
    }
    v1::AdapterFile* file = header->add_files();
    file->set_name(f.name);
    file->set_size(size);
    file->set_sha256(sha);
    total += size;
  }
  header->set_total_size(total);

  grpc::ClientContext context;
  Prepare(&context);
  std::unique_ptr<grpc::ClientWriter<v1::UploadAdapterRequest>> writer =
      adapters_->UploadAdapter(&context, response);
  bool open = writer->Write(first);
  int64_t sent = 0;
  const int64_t chunk = options.chunk_bytes > 0 ? options.chunk_bytes : (1 << 20);
  v1::UploadAdapterRequest message;
  for (size_t i = 0; open && i < files.size(); ++i) {
    std::ifstream in(files[i].path, std::ios::binary);
    if (!in) {
      context.TryCancel();
      writer->Finish().IgnoreError();
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "cannot read " + files[i].path);
    }
    int64_t offset = 0;
    std::string buffer(static_cast<size_t>(chunk), '\0');
    while (open) {
      in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
      const std::streamsize n = in.gcount();
      if (n <= 0) break;
      v1::FileChunk* c = message.mutable_chunk();
      c->set_file(files[i].name);
      c->set_offset(offset);
      c->set_data(buffer.data(), static_cast<size_t>(n));
      open = writer->Write(message);
      offset += n;
      sent += n;
      if (progress) progress(sent, total);
    }
  }
  if (open) writer->WritesDone();
  return writer->Finish();
}

grpc::Status Client::RegisterAdapter(const v1::RegisterAdapterRequest& request,
                                     v1::AdapterInfo* response) {
  grpc::ClientContext context;
  Prepare(&context);
  return adapters_->RegisterAdapter(&context, request, response);
}

grpc::Status Client::GetAdapter(const std::string& adapter, v1::AdapterInfo* response) {
  grpc::ClientContext context;
  Prepare(&context);
  v1::GetAdapterRequest request;
  request.set_adapter(adapter);
  return adapters_->GetAdapter(&context, request, response);
}

grpc::Status Client::ListAdapters(const v1::ListAdaptersRequest& request,
                                  v1::ListAdaptersResponse* response) {
  grpc::ClientContext context;
  Prepare(&context);
  return adapters_->ListAdapters(&context, request, response);
}

grpc::Status Client::DeleteAdapter(const v1::DeleteAdapterRequest& request,
                                   v1::DeleteAdapterResponse* response) {
  grpc::ClientContext context;
  Prepare(&context);
  return adapters_->DeleteAdapter(&context, request, response);
}

grpc::Status Client::LoadAdapter(const v1::LoadAdapterRequest& request,
                                 v1::LoadAdapterResponse* response) {
  grpc::ClientContext context;
  Prepare(&context);
  return adapters_->LoadAdapter(&context, request, response);
}

grpc::Status Client::UnloadAdapter(const v1::UnloadAdapterRequest& request,
                                   v1::UnloadAdapterResponse* response) {
  grpc::ClientContext context;
  Prepare(&context);
  return adapters_->UnloadAdapter(&context, request, response);
}

grpc::Status Client::UploadDataset(const std::string& path, const std::string& name,
                                   v1::DatasetInfo* response, const UploadProgress& progress,
                                   int64_t chunk_bytes) {
  std::string sha;
  int64_t size = 0;
  if (!HashFile(path, &sha, &size)) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "cannot read " + path);
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "cannot read " + path);
  grpc::ClientContext context;
  Prepare(&context);
  std::unique_ptr<grpc::ClientWriter<v1::UploadDatasetRequest>> writer =
      training_->UploadDataset(&context, response);
  v1::UploadDatasetRequest message;
  v1::DatasetHeader* header = message.mutable_header();
  header->set_name(name);
  header->set_size(size);
  header->set_sha256(sha);
  bool open = writer->Write(message);
  std::string buffer(static_cast<size_t>(chunk_bytes > 0 ? chunk_bytes : (1 << 20)), '\0');
  int64_t offset = 0;
  while (open) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    const std::streamsize n = in.gcount();
    if (n <= 0) break;
    v1::DatasetChunk* chunk = message.mutable_chunk();
    chunk->set_offset(offset);
    chunk->set_data(buffer.data(), static_cast<size_t>(n));
    open = writer->Write(message);
    offset += n;
    if (progress) progress(offset, size);
  }
  if (open) writer->WritesDone();
  return writer->Finish();
}

grpc::Status Client::ListDatasets(const v1::ListDatasetsRequest& request,
                                  v1::ListDatasetsResponse* response) {
  grpc::ClientContext context;
  Prepare(&context);
  return training_->ListDatasets(&context, request, response);
}

grpc::Status Client::DeleteDataset(const std::string& dataset_id, v1::DatasetInfo* response) {
  grpc::ClientContext context;
  Prepare(&context);
  v1::DeleteDatasetRequest request;
  request.set_dataset_id(dataset_id);
  return training_->DeleteDataset(&context, request, response);
}

grpc::Status Client::CreateTrainingJob(const v1::CreateTrainingJobRequest& request,
                                       v1::TrainingJob* response) {
  grpc::ClientContext context;
  Prepare(&context);
  return training_->CreateTrainingJob(&context, request, response);
}

grpc::Status Client::GetTrainingJob(const std::string& job_id, v1::TrainingJob* response) {
  grpc::ClientContext context;
  Prepare(&context);
  v1::GetTrainingJobRequest request;
  request.set_job_id(job_id);
  return training_->GetTrainingJob(&context, request, response);
}

grpc::Status Client::ListTrainingJobs(const v1::ListTrainingJobsRequest& request,
                                      v1::ListTrainingJobsResponse* response) {
  grpc::ClientContext context;
  Prepare(&context);
  return training_->ListTrainingJobs(&context, request, response);
}

grpc::Status Client::CancelTrainingJob(const std::string& job_id, v1::TrainingJob* response) {
  grpc::ClientContext context;
  Prepare(&context);
  v1::CancelTrainingJobRequest request;
  request.set_job_id(job_id);
  return training_->CancelTrainingJob(&context, request, response);
}

grpc::Status Client::WatchTrainingJob(const std::string& job_id, const JobCallback& on_update) {
  grpc::ClientContext context;
  if (!options_.token.empty()) context.AddMetadata("authorization", "Bearer " + options_.token);
  v1::WatchTrainingJobRequest request;
  request.set_job_id(job_id);
  std::unique_ptr<grpc::ClientReader<v1::TrainingJob>> reader =
      training_->WatchTrainingJob(&context, request);
  v1::TrainingJob job;
  while (reader->Read(&job)) {
    if (!on_update(job)) {
      context.TryCancel();
      reader->Finish().IgnoreError();
      return grpc::Status(grpc::StatusCode::CANCELLED, "watch cancelled");
    }
  }
  return reader->Finish();
}

}  // namespace adapterd
