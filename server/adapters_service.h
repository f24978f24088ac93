#pragma once

// The Adapters service (upload, register, get, list, delete, load, unload)
// on gRPC's callback API, over the AdapterStore. Every store call runs on
// the service's worker pool, never on a gRPC thread: an upload stream keeps
// one read in flight, hands each message to a worker (begin, or append one
// chunk to disk), and starts the next read when the worker is done, so a
// client can never make the server buffer more than one message per stream.
// The stream's end commits the upload on a worker; a cancelled or failed
// stream aborts it.

#include <atomic>
#include <memory>
#include <string>

#include "adapterd/v1/adapters.grpc.pb.h"
#include "adapters_store/adapter_store.h"
#include "engine/api/engine.h"
#include "server/auth.h"
#include "server/worker_pool.h"

namespace adapterd {

// AdapterInfo for a registry record.
void AdapterRecordToProto(const AdapterRecord& record, v1::AdapterInfo* info);

// Every call is authenticated; adapters live in the caller's tenant
// namespace (public adapters of other tenants are visible to Get/Load and to
// inference, never to List/Delete). RegisterAdapter reads the server's
// filesystem and needs the admin role; uploads are checked against the
// tenant's storage quota. Only an admin may create a PUBLIC adapter.
//
// Thread-safe. Does not own `store` or `auth`, which must outlive the
// service; a null store makes every call fail with FAILED_PRECONDITION.
class AdaptersService final : public v1::Adapters::CallbackService {
 public:
  AdaptersService(AdapterStore* store, const Authenticator* auth, int workers = 4);
  ~AdaptersService() override;

  // From now on new calls fail with UNAVAILABLE; running ones go on. Idempotent.
  void StopAccepting();

  // The engine whose adapter cache LoadAdapter/UnloadAdapter drive and whose
  // residency AdapterInfo reports. Null (the default): Load/Unload fail with
  // FAILED_PRECONDITION. Set before the server starts; not owned.
  void set_engine(Engine* engine) { engine_ = engine; }

  grpc::ServerReadReactor<v1::UploadAdapterRequest>* UploadAdapter(
      grpc::CallbackServerContext* context, v1::AdapterInfo* response) override;
  grpc::ServerUnaryReactor* RegisterAdapter(grpc::CallbackServerContext* context,
                                            const v1::RegisterAdapterRequest* request,
                                            v1::AdapterInfo* response) override;
  grpc::ServerUnaryReactor* GetAdapter(grpc::CallbackServerContext* context,
                                       const v1::GetAdapterRequest* request,
                                       v1::AdapterInfo* response) override;
  grpc::ServerUnaryReactor* ListAdapters(grpc::CallbackServerContext* context,
                                         const v1::ListAdaptersRequest* request,
                                         v1::ListAdaptersResponse* response) override;
  grpc::ServerUnaryReactor* DeleteAdapter(grpc::CallbackServerContext* context,
                                          const v1::DeleteAdapterRequest* request,
                                          v1::DeleteAdapterResponse* response) override;
  grpc::ServerUnaryReactor* LoadAdapter(grpc::CallbackServerContext* context,
                                        const v1::LoadAdapterRequest* request,
                                        v1::LoadAdapterResponse* response) override;
  grpc::ServerUnaryReactor* UnloadAdapter(grpc::CallbackServerContext* context,
                                          const v1::UnloadAdapterRequest* request,
                                          v1::UnloadAdapterResponse* response) override;

 private:
  class UploadCall;

  // The status a call fails with before touching the store, or OK.
  absl::Status Admit() const;
  // Authorizes the caller for `method`, runs `work` with it on a worker and
  // finishes the unary call with its status.
  grpc::ServerUnaryReactor* RunUnary(grpc::CallbackServerContext* context, const char* method,
                                     bool admin_only,
                                     std::function<absl::Status(const Principal&)> work);

  // Fills residency and pinned from the engine's cache.
  void AddResidency(v1::AdapterInfo* info) const;

  AdapterStore* const store_;
  const Authenticator* const auth_;
  Engine* engine_ = nullptr;
  std::atomic<bool> accepting_{true};
  WorkerPool pool_;  // Declared last: joined first, while the store is alive.
};

}  // namespace adapterd
