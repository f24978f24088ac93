#pragma once

// Builds and runs the gRPC server: the Inference and Admin services, the
// standard health service (grpc.health.v1) and server reflection, with message
// size limits and keepalive settings. Shutdown is two-phase so that the caller
// can drain the engine in between:
//   server->BeginShutdown();      // health NOT_SERVING, new calls UNAVAILABLE
//   engine->Shutdown(drain);      // running requests finish or fail
//   server->Shutdown(grace);      // stop the listener, wait for the calls

#include <grpcpp/server.h>

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/api/engine.h"

namespace adapterd {

class AdminService;
class InferenceService;

struct ServerOptions {
  std::string listen = "127.0.0.1:50051";  // host:port; port 0 picks a free one.
  int64_t max_message_bytes = 4 << 20;     // Largest message received or sent.
  int max_concurrent_streams = 1024;       // Per HTTP/2 connection.
  int max_metadata_bytes = 16 << 10;
  absl::Duration keepalive_time = absl::Minutes(2);  // Server pings an idle connection.
  absl::Duration keepalive_timeout = absl::Seconds(20);
  // Clients may ping at most this often without being told "too_many_pings".
  absl::Duration min_client_ping_interval = absl::Seconds(10);
  bool auth_enabled = false;
};

// Thread-safe. Does not own the engine, which must outlive the server.
class Server {
 public:
  // Starts serving on `options.listen`. UNAVAILABLE if the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<Server>> Start(const ServerOptions& options,
                                                       Engine* engine);
  ~Server();

  // The bound address, with the real port when 0 was asked for.
  const std::string& address() const { return address_; }
  int port() const { return port_; }

  // Marks every health entry NOT_SERVING and makes new inference calls fail
  // with UNAVAILABLE. Idempotent.
  void BeginShutdown();

  // BeginShutdown, then stops the listener and waits up to `grace` for calls
  // in flight, cancelling those still running afterwards. Idempotent.
  void Shutdown(absl::Duration grace);

  // Health service names this server reports (besides "").
  static const char* const kServiceNames[2];

 private:
  Server() = default;

  std::unique_ptr<InferenceService> inference_;
  std::unique_ptr<AdminService> admin_;
  std::unique_ptr<grpc::Server> server_;  // Declared last: destroyed first.
  std::string address_;
  int port_ = 0;
  absl::Mutex mu_;  // Guards the two flags below and serialises shutdown.
  bool began_shutdown_ ABSL_GUARDED_BY(mu_) = false;
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace adapterd
