#pragma once

// The shared mechanics of a client-streaming upload (UploadAdapter,
// UploadDataset): a header message begins an upload, chunk messages append
// to it, the client's half-close commits it, and a failed or cancelled stream
// aborts it.
//
// The stream keeps one read in flight: each message is handled on a worker of
// the service's pool, which starts the next read when it is done, so a client
// can never make the server buffer more than one message per stream, and no
// store call runs on a gRPC thread. A service derives one reactor class from
// StreamingUploadReactor and supplies what differs: how a header begins an
// upload, how a chunk is appended, how the upload is committed (filling the
// response), how it is aborted, and how a failure is logged.

#include <grpcpp/server_context.h>
#include <grpcpp/support/server_callback.h>
#include <grpcpp/support/status.h>

#include <atomic>
#include <functional>
#include <string>
#include <type_traits>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "server/auth.h"
#include "server/status_convert.h"
#include "server/worker_pool.h"

namespace adapterd {

// `Request` is a proto with a `header` and a `chunk` in a oneof. Created with
// new; deletes itself in OnDone. Not thread-safe, and needs no lock: apart
// from the cancellation flag, its state is touched by one worker task at a
// time (the next message is read only after the previous task returned), then
// by OnDone; the hooks below run in those tasks.
template <typename Request>
class StreamingUploadReactor : public grpc::ServerReadReactor<Request> {
 public:
  using Header = std::remove_cvref_t<decltype(std::declval<const Request&>().header())>;
  using Chunk = std::remove_cvref_t<decltype(std::declval<const Request&>().chunk())>;

  // Authorizes the caller for `method`, then runs `admit` (the service's own
  // check, e.g. UNAVAILABLE while draining); starts the first read if both
  // pass, else finishes the call with the failure. Call once, right after new.
  void Start(const Authenticator& auth, const char* method,
             const std::function<absl::Status()>& admit) {
    absl::StatusOr<Principal> who = auth.Authorize(*context_, method, /*admin_only=*/false);
    absl::Status admitted = who.ok() ? admit() : who.status();
    if (!admitted.ok()) {
      this->Finish(ToGrpcStatus(admitted));
      return;
    }
    who_ = *std::move(who);
    this->StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (ok) {
      pool_->Schedule([this] { Handle(); });
    } else {
      pool_->Schedule([this] { Complete(); });
    }
  }

  void OnCancel() override { cancelled_.store(true); }

  void OnDone() override {
    if (!upload_id_.empty()) {
      pool_->Schedule([abort = abort_, id = upload_id_] { abort(id); });
    }
    delete this;
  }

 protected:
  // `a_header` names the header message in error messages, with its article
  // ("an UploadHeader"). `abort` aborts an upload by id on a worker; it may
  // run after the reactor is gone, so it must not capture the reactor. Does
  // not own `context` or `pool`.
  StreamingUploadReactor(grpc::CallbackServerContext* context, WorkerPool* pool,
                         std::string a_header, std::function<void(const std::string&)> abort)
      : context_(context), pool_(pool), a_header_(std::move(a_header)), abort_(std::move(abort)) {}

  // Begins the upload that `header` describes and returns its id.
  virtual absl::StatusOr<std::string> BeginUpload(const Header& header) = 0;
  // Appends `chunk` to the upload. On failure the store has aborted it.
  virtual absl::Status AppendChunk(const std::string& upload_id, const Chunk& chunk) = 0;
  // Commits the upload and fills the response; the upload is consumed
  // whatever the outcome. OK finishes the call with OK.
  virtual absl::Status CommitUpload(const std::string& upload_id) = 0;
  // Logs the failure the call is about to finish with.
  virtual void LogFailure(const absl::Status& status) = 0;

  // The caller; set by Start before the first read.
  const Principal& who() const { return who_; }

 private:
  bool Cancelled() const { return cancelled_.load() || context_->IsCancelled(); }

  // Worker: one message of the stream.
  void Handle() {
    absl::Status status;
    if (Cancelled()) {
      status = absl::CancelledError("the client cancelled the upload");
    } else if (request_.has_header()) {
      if (!upload_id_.empty()) {
        status = absl::InvalidArgumentError(
            absl::StrCat("the ", Header::descriptor()->name(), " was sent twice"));
      } else {
        absl::StatusOr<std::string> id = BeginUpload(request_.header());
        if (id.ok()) {
          upload_id_ = *std::move(id);
        } else {
          status = id.status();
        }
      }
    } else if (request_.has_chunk()) {
      if (upload_id_.empty()) {
        status = absl::InvalidArgumentError(absl::StrCat("the first message must be ", a_header_));
      } else {
        status = AppendChunk(upload_id_, request_.chunk());
        if (!status.ok()) upload_id_.clear();  // The store aborted it.
      }
    } else {
      status = absl::InvalidArgumentError(absl::StrCat("an empty ", Request::descriptor()->name()));
    }
    if (!status.ok()) {
      Fail(status);
      return;
    }
    this->StartRead(&request_);
  }

  // Worker: the client closed its side (or the call broke).
  void Complete() {
    if (Cancelled()) {
      Fail(absl::CancelledError("the client cancelled the upload"));
      return;
    }
    if (upload_id_.empty()) {
      Fail(absl::InvalidArgumentError(absl::StrCat("the stream ended without ", a_header_)));
      return;
    }
    const std::string upload_id = std::exchange(upload_id_, "");  // Consumed, whatever the outcome.
    absl::Status committed = CommitUpload(upload_id);
    if (!committed.ok()) {
      Fail(committed);
      return;
    }
    this->Finish(grpc::Status::OK);
  }

  // Worker: aborts the upload, if one is open, and finishes with `status`.
  void Fail(const absl::Status& status) {
    if (!upload_id_.empty()) {
      abort_(upload_id_);
      upload_id_.clear();
    }
    LogFailure(status);
    this->Finish(ToGrpcStatus(status));
  }

  grpc::CallbackServerContext* const context_;
  WorkerPool* const pool_;
  const std::string a_header_;
  const std::function<void(const std::string&)> abort_;
  std::atomic<bool> cancelled_{false};
  // Touched by one worker task at a time (the next starts only after a read
  // that the previous task started), then by OnDone.
  Principal who_;
  Request request_;
  std::string upload_id_;  // The open upload; empty when none is.
};

}  // namespace adapterd
