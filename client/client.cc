#include "client/client.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include <utility>

namespace adapterd {

Client::Client(ClientOptions options) : options_(std::move(options)) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options_.max_message_bytes);
  args.SetMaxSendMessageSize(options_.max_message_bytes);
  channel_ = grpc::CreateCustomChannel(options_.target, grpc::InsecureChannelCredentials(), args);
  inference_ = v1::Inference::NewStub(channel_);
  admin_ = v1::Admin::NewStub(channel_);
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
