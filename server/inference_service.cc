#include "server/inference_service.h"

#include <chrono>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/status_macros.h"
#include "server/proto_convert.h"
#include "server/request_id.h"
#include "server/status_convert.h"
#include "spdlog/spdlog.h"

namespace adapterd {
namespace {

constexpr char kShuttingDown[] = "server is shutting down";

absl::Time DeadlineOf(const grpc::CallbackServerContext* context) {
  const auto deadline = context->deadline();
  if (deadline >= std::chrono::system_clock::now() + std::chrono::hours(24 * 365 * 10)) {
    return absl::InfiniteFuture();
  }
  return absl::FromChrono(deadline);
}

// Names the adapter in logs: "" is the base model.
const std::string& AdapterForLog(const std::string& adapter) {
  static const std::string kBase = "<base>";
  return adapter.empty() ? kBase : adapter;
}

void LogFinish(const char* method, const std::string& request_id, const std::string& tenant,
               const std::string& adapter, const absl::Status& status, int prompt_tokens,
               int completion_tokens, absl::Time start) {
  const double ms = absl::ToDoubleMilliseconds(absl::Now() - start);
  const std::string& who = tenant.empty() ? std::string("<unauthenticated>") : tenant;
  if (status.ok()) {
    spdlog::info(
        "{} request_id={} tenant={} adapter={} ok prompt_tokens={} completion_tokens={} ms={:.1f}",
        method, request_id, who, AdapterForLog(adapter), prompt_tokens, completion_tokens, ms);
  } else {
    spdlog::info("{} request_id={} tenant={} adapter={} failed: {} ms={:.1f}", method, request_id,
                 who, AdapterForLog(adapter),
                 absl::Status(status.code(), status.message()).ToString(), ms);
  }
}

// A unary call whose cancellation reaches the engine.
class UnaryCall : public grpc::ServerUnaryReactor {
 public:
  UnaryCall() : cancel_(std::make_shared<CancellationToken>()) {}

  const std::shared_ptr<CancellationToken>& cancel() const { return cancel_; }

  void OnCancel() override { cancel_->Cancel(); }
  void OnDone() override { delete this; }

 private:
  const std::shared_ptr<CancellationToken> cancel_;
};

// Collects a unary Generate's tokens into the response; finishes the call on
// OnFinish. Called only on the engine thread, so it needs no lock.
class UnaryGenerateSink final : public GenerateSink {
 public:
  UnaryGenerateSink(UnaryCall* call, v1::GenerateResponse* response, bool logprobs,
                    std::string tenant, std::string adapter, std::unique_ptr<RequestLease> lease)
      : call_(call),
        response_(response),
        logprobs_(logprobs),
        tenant_(std::move(tenant)),
        adapter_(std::move(adapter)),
        lease_(std::move(lease)) {}

  void OnTokens(std::vector<GeneratedToken> tokens) override {
    lease_->ChargeTokens(static_cast<int64_t>(tokens.size()));
    for (const GeneratedToken& token : tokens) {
      response_->mutable_text()->append(token.text);
      TokenToProto(token, logprobs_, response_->add_tokens());
    }
  }

  void OnFinish(absl::Status status, const GenerateResult& result) override {
    if (status.ok()) {
      response_->set_finish_reason(FinishReasonToProto(result.finish_reason));
      response_->mutable_usage()->set_prompt_tokens(result.prompt_tokens);
      response_->mutable_usage()->set_completion_tokens(result.completion_tokens);
    }
    LogFinish("Generate", response_->request_id(), tenant_, adapter_, status, result.prompt_tokens,
              result.completion_tokens, start_);
    lease_->ChargeTokens(result.prompt_tokens);
    lease_.reset();                       // The tenant's slot frees before the client hears back.
    call_->Finish(ToGrpcStatus(status));  // The call may be gone after this.
  }

 private:
  UnaryCall* const call_;
  v1::GenerateResponse* const response_;
  const bool logprobs_;
  const std::string tenant_;
  const std::string adapter_;
  std::unique_ptr<RequestLease> lease_;
  const absl::Time start_ = absl::Now();
};

// A GenerateStream call: a write reactor fed by the engine thread.
class GenerateStreamCall final : public grpc::ServerWriteReactor<v1::GenerateStreamResponse> {
 public:
  GenerateStreamCall(std::string request_id, std::string tenant, std::string adapter, bool logprobs)
      : cancel_(std::make_shared<CancellationToken>()),
        request_id_(std::move(request_id)),
        tenant_(std::move(tenant)),
        adapter_(std::move(adapter)),
        logprobs_(logprobs) {}

  const std::shared_ptr<CancellationToken>& cancel() const { return cancel_; }

  // The adapter every message names ("name@version" once resolved). Before
  // the request is submitted only.
  void set_adapter(std::string adapter) { adapter_ = std::move(adapter); }

  // Engine thread.
  void AddTokens(std::vector<GeneratedToken> tokens) {
    {
      absl::MutexLock lock(&mu_);
      for (GeneratedToken& token : tokens) pending_.push_back(std::move(token));
    }
    Pump();
  }

  // Engine thread; the last call the engine makes.
  void EngineFinished(absl::Status status, const GenerateResult& result) {
    LogFinish("GenerateStream", request_id_, tenant_, adapter_, status, result.prompt_tokens,
              result.completion_tokens, start_);
    {
      absl::MutexLock lock(&mu_);
      engine_done_ = true;
      engine_status_ = std::move(status);
      result_ = result;
    }
    Pump();
  }

  // The request never reached the engine.
  void Reject(const absl::Status& status) {
    LogFinish("GenerateStream", request_id_, tenant_, adapter_, status, 0, 0, start_);
    Finish(ToGrpcStatus(status));
  }

  void OnWriteDone(bool ok) override {
    {
      absl::MutexLock lock(&mu_);
      write_in_flight_ = false;
      if (!ok) client_gone_ = true;
    }
    if (!ok) cancel_->Cancel();
    Pump();
  }

  void OnCancel() override { cancel_->Cancel(); }
  void OnDone() override { delete this; }

 private:
  enum class Action { kNone, kWrite, kWriteAndFinish, kFinish };

  // Starts the next write or the finish, if one is due. gRPC may run a
  // reaction inline inside StartWrite/Finish, so they are called without mu_.
  void Pump() {
    Action action = Action::kNone;
    grpc::Status final_status;
    {
      absl::MutexLock lock(&mu_);
      if (write_in_flight_ || finish_started_) return;
      if (client_gone_) pending_.clear();
      if (pending_.empty() && !engine_done_) return;
      out_.Clear();
      out_.set_request_id(request_id_);
      out_.set_adapter(adapter_);
      for (const GeneratedToken& token : pending_) {
        out_.mutable_text()->append(token.text);
        TokenToProto(token, logprobs_, out_.add_tokens());
      }
      const bool has_tokens = !pending_.empty();
      pending_.clear();
      if (engine_done_ && engine_status_.ok() && !client_gone_) {
        out_.set_finish_reason(FinishReasonToProto(result_.finish_reason));
        out_.mutable_usage()->set_prompt_tokens(result_.prompt_tokens);
        out_.mutable_usage()->set_completion_tokens(result_.completion_tokens);
        action = Action::kWriteAndFinish;
        finish_started_ = true;
      } else if (has_tokens) {
        action = Action::kWrite;
        write_in_flight_ = true;
      } else {
        action = Action::kFinish;
        finish_started_ = true;
        final_status = client_gone_ && engine_status_.ok()
                           ? grpc::Status(grpc::StatusCode::CANCELLED, "client went away")
                           : ToGrpcStatus(engine_status_);
      }
    }
    switch (action) {
      case Action::kWrite:
        StartWrite(&out_);
        break;
      case Action::kWriteAndFinish:
        StartWriteAndFinish(&out_, grpc::WriteOptions(), grpc::Status::OK);
        break;
      case Action::kFinish:
        Finish(final_status);
        break;
      case Action::kNone:
        break;
    }
  }

  const std::shared_ptr<CancellationToken> cancel_;
  const std::string request_id_;
  const std::string tenant_;
  std::string adapter_;  // Set before the engine runs; read-only after.
  const bool logprobs_;
  const absl::Time start_ = absl::Now();

  absl::Mutex mu_;  // Guards the fields below and out_ while no write is in flight.
  std::vector<GeneratedToken> pending_ ABSL_GUARDED_BY(mu_);
  bool write_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  bool finish_started_ ABSL_GUARDED_BY(mu_) = false;
  bool engine_done_ ABSL_GUARDED_BY(mu_) = false;
  bool client_gone_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status engine_status_ ABSL_GUARDED_BY(mu_);
  GenerateResult result_ ABSL_GUARDED_BY(mu_);
  // The message being written; owned by gRPC from StartWrite to OnWriteDone.
  v1::GenerateStreamResponse out_;
};

// Forwards the engine's calls to a GenerateStreamCall, which outlives it: the
// call finishes only after EngineFinished.
class StreamSink final : public GenerateSink {
 public:
  StreamSink(GenerateStreamCall* call, std::unique_ptr<RequestLease> lease)
      : call_(call), lease_(std::move(lease)) {}
  void OnTokens(std::vector<GeneratedToken> tokens) override {
    lease_->ChargeTokens(static_cast<int64_t>(tokens.size()));
    call_->AddTokens(std::move(tokens));
  }
  void OnFinish(absl::Status status, const GenerateResult& result) override {
    lease_->ChargeTokens(result.prompt_tokens);
    lease_.reset();
    call_->EngineFinished(std::move(status), result);
  }

 private:
  GenerateStreamCall* const call_;
  std::unique_ptr<RequestLease> lease_;
};

std::string RequestIdOf(const std::string& given) { return given.empty() ? NewRequestId() : given; }

}  // namespace

InferenceService::InferenceService(Engine* engine, const Authenticator* auth, QuotaManager* quotas)
    : engine_(engine), auth_(auth), quotas_(quotas) {}

void InferenceService::StopAccepting() { accepting_.store(false); }

absl::StatusOr<std::unique_ptr<RequestLease>> InferenceService::Admit(
    const grpc::CallbackServerContext& context, const char* method, Principal* who) {
  absl::StatusOr<Principal> caller = auth_->Authorize(context, method, /*admin_only=*/false);
  if (!caller.ok()) return caller.status();
  *who = *std::move(caller);
  if (!accepting_.load()) return absl::UnavailableError(kShuttingDown);
  return quotas_->Admit(*who);
}

grpc::ServerUnaryReactor* InferenceService::Generate(grpc::CallbackServerContext* context,
                                                     const v1::GenerateRequest* request,
                                                     v1::GenerateResponse* response) {
  auto* call = new UnaryCall();
  const std::string request_id = RequestIdOf(request->request_id());
  response->set_request_id(request_id);
  response->set_adapter(request->adapter());
  Principal who;
  absl::StatusOr<std::unique_ptr<RequestLease>> lease = Admit(*context, "Generate", &who);
  absl::StatusOr<GenerateRequest> converted =
      lease.ok() ? GenerateRequestFromProto(*request, engine_->limits(), engine_->info().vocab_size)
                 : absl::StatusOr<GenerateRequest>(lease.status());
  absl::Status status = converted.status();
  if (status.ok()) {
    status = Prepare(*converted, request_id, who, context, call->cancel(),
                     *response->mutable_adapter());
  }
  if (status.ok()) {
    const bool logprobs = converted->sampling.logprobs;
    spdlog::debug("Generate request_id={} tenant={} adapter={} submitted", request_id, who.tenant,
                  AdapterForLog(request->adapter()));
    status = engine_->Submit(*std::move(converted), std::make_shared<UnaryGenerateSink>(
                                                        call, response, logprobs, who.tenant,
                                                        request->adapter(), *std::move(lease)));
  }
  if (!status.ok()) {
    LogFinish("Generate", request_id, who.tenant, request->adapter(), status, 0, 0, absl::Now());
    AddRetryHint(context, status);
    call->Finish(ToGrpcStatus(status));
  }
  return call;
}

grpc::ServerWriteReactor<v1::GenerateStreamResponse>* InferenceService::GenerateStream(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request) {
  const std::string request_id = RequestIdOf(request->request_id());
  Principal who;
  absl::StatusOr<std::unique_ptr<RequestLease>> lease = Admit(*context, "GenerateStream", &who);
  absl::StatusOr<GenerateRequest> converted =
      lease.ok() ? GenerateRequestFromProto(*request, engine_->limits(), engine_->info().vocab_size)
                 : absl::StatusOr<GenerateRequest>(lease.status());
  auto* call = new GenerateStreamCall(request_id, who.tenant, request->adapter(),
                                      converted.ok() && converted->sampling.logprobs);
  absl::Status status = converted.status();
  if (status.ok()) {
    std::string served = request->adapter();
    status = Prepare(*converted, request_id, who, context, call->cancel(), served);
    // Every message names the version that serves the stream, as Generate's response does.
    call->set_adapter(std::move(served));
  }
  if (status.ok()) {
    spdlog::debug("GenerateStream request_id={} tenant={} adapter={} submitted", request_id,
                  who.tenant, AdapterForLog(request->adapter()));
    status = engine_->Submit(*std::move(converted),
                             std::make_shared<StreamSink>(call, *std::move(lease)));
  }
  if (!status.ok()) {
    AddRetryHint(context, status);
    call->Reject(status);
  }
  return call;
}

template <typename Request>
absl::Status InferenceService::Prepare(Request& request, const std::string& request_id,
                                       const Principal& who, grpc::CallbackServerContext* context,
                                       std::shared_ptr<CancellationToken> cancel,
                                       std::string& served) const {
  request.request_id = request_id;
  request.tenant = who.tenant;
  request.deadline = DeadlineOf(context);
  request.cancel = std::move(cancel);
  if (resolver_ != nullptr) {
    RETURN_IF_ERROR(resolver_->Resolve(who.tenant, request));
  }
  if (request.adapter_handle) served = request.adapter_handle->name;
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* InferenceService::Score(grpc::CallbackServerContext* context,
                                                  const v1::ScoreRequest* request,
                                                  v1::ScoreResponse* response) {
  auto* call = new UnaryCall();
  const std::string request_id = RequestIdOf(request->request_id());
  response->set_request_id(request_id);
  response->set_adapter(request->adapter());
  Principal who;
  absl::StatusOr<std::unique_ptr<RequestLease>> lease = Admit(*context, "Score", &who);
  absl::StatusOr<ScoreRequest> converted = lease.ok()
                                               ? ScoreRequestFromProto(*request, engine_->limits())
                                               : absl::StatusOr<ScoreRequest>(lease.status());
  absl::Status status = converted.status();
  if (status.ok()) {
    status = Prepare(*converted, request_id, who, context, call->cancel(),
                     *response->mutable_adapter());
  }
  if (status.ok()) {
    const absl::Time start = absl::Now();
    std::string adapter = request->adapter();
    std::shared_ptr<RequestLease> held(*std::move(lease));
    status = engine_->SubmitScore(
        *std::move(converted),
        [call, response, request_id, tenant = who.tenant, adapter = std::move(adapter), start,
         held](absl::StatusOr<ScoreResult> result) mutable {
          if (result.ok()) ScoreResultToProto(*result, response);
          const int prompt_tokens = result.ok() ? result->prompt_tokens : 0;
          LogFinish("Score", request_id, tenant, adapter, result.status(), prompt_tokens,
                    response->usage().completion_tokens(), start);
          held->ChargeTokens(prompt_tokens + response->usage().completion_tokens());
          held.reset();
          call->Finish(ToGrpcStatus(result.status()));
        });
  }
  if (!status.ok()) {
    LogFinish("Score", request_id, who.tenant, request->adapter(), status, 0, 0, absl::Now());
    AddRetryHint(context, status);
    call->Finish(ToGrpcStatus(status));
  }
  return call;
}

}  // namespace adapterd
