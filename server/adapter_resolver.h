#pragma once

// Resolves the adapters a request names ("name[@version]") through the
// adapter store in the caller's tenant namespace and attaches an
// AdapterHandle per adapter to the engine request, so that the engine keys its
// cache on (adapter_id, version) and the version's files stay pinned while the
// request may read them. Start-up adapters (--adapter NAME=DIR, the engine's
// static tier) and a merged deployment's adapter keep being resolved by the
// engine by name; they shadow store adapters of the same name.
//
// Thread-safe. Does not own the store or the engine.

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "adapters_store/adapter_store.h"
#include "adapters_store/adapter_validator.h"
#include "engine/api/engine.h"

namespace adapterd {

class AdapterResolver {
 public:
  // `store` may be null (then every adapter is resolved by the engine).
  AdapterResolver(AdapterStore* store, const Engine* engine);

  // Sets request.adapter_handle / ensemble_handles for the refs the store
  // holds for `tenant`. A ref the store does not resolve (missing, deleted,
  // another tenant's private adapter, malformed) is left to the engine by
  // name, which answers NOT_FOUND "adapter "ref" not found" for all of them
  // alike unless it is a start-up adapter. Errors: the store's INTERNAL.
  absl::Status Resolve(const std::string& tenant, GenerateRequest& request) const;
  absl::Status Resolve(const std::string& tenant, ScoreRequest& request) const;

  // The handle for one reference; nullopt for the base model or an adapter
  // the engine resolves itself.
  absl::StatusOr<std::optional<AdapterHandle>> ResolveRef(const std::string& tenant,
                                                          const std::string& ref) const;

 private:
  bool IsEngineAdapter(const std::string& ref) const;
  absl::Status ResolveAll(const std::string& tenant, const std::string& adapter,
                          const std::vector<std::string>& ensemble,
                          std::optional<AdapterHandle>& handle,
                          std::vector<AdapterHandle>& ensemble_handles) const;

  AdapterStore* const store_;
  const Engine* const engine_;
};

// A handle for a resolved store version (the pin travels with it).
AdapterHandle HandleOf(ResolvedAdapter resolved);

// The store's validator backed by Engine::ValidateAdapter (shapes against the
// served base model). `engine` must outlive the store.
AdapterValidator EngineAdapterValidator(const Engine* engine);

}  // namespace adapterd
