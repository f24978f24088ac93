#include "server/adapter_resolver.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace adapterd {

AdapterResolver::AdapterResolver(AdapterStore* store, const Engine* engine)
    : store_(store), engine_(engine) {}

AdapterHandle HandleOf(ResolvedAdapter resolved) {
  AdapterHandle h;
  h.name = absl::StrCat(resolved.record.name, "@", resolved.record.version);
  h.adapter_id = resolved.record.adapter_id;
  h.version = resolved.record.version;
  h.dir = std::move(resolved.dir);
  h.sha256 = resolved.record.sha256;
  h.method = resolved.record.method;
  h.size_bytes = resolved.record.size;
  h.pin = std::move(resolved.pin);
  return h;
}

bool AdapterResolver::IsEngineAdapter(const std::string& ref) const {
  const ModelInfo& info = engine_->info();
  const std::string name = ref.substr(0, ref.find('@'));
  if (!info.merged_adapter.empty()) return true;  // The engine answers every ref.
  for (const AdapterInfo& a : info.adapters) {
    if (a.name == name) return true;
  }
  return false;
}

absl::StatusOr<std::optional<AdapterHandle>> AdapterResolver::ResolveRef(
    const std::string& tenant, const std::string& ref) const {
  if (ref.empty() || store_ == nullptr || IsEngineAdapter(ref)) return std::nullopt;
  absl::StatusOr<ResolvedAdapter> resolved = store_->Resolve(tenant, ref);
  // Not the tenant's (or malformed): the engine answers by name, NOT_FOUND
  // unless it has such an adapter of its own.
  if (absl::IsNotFound(resolved.status()) || absl::IsInvalidArgument(resolved.status())) {
    return std::nullopt;
  }
  if (!resolved.ok()) return resolved.status();
  return HandleOf(*std::move(resolved));
}

absl::Status AdapterResolver::ResolveAll(const std::string& tenant, const std::string& adapter,
                                         const std::vector<std::string>& ensemble,
                                         std::optional<AdapterHandle>& handle,
                                         std::vector<AdapterHandle>& ensemble_handles) const {
  absl::StatusOr<std::optional<AdapterHandle>> main = ResolveRef(tenant, adapter);
  if (!main.ok()) return main.status();
  handle = *std::move(main);
  bool any = false;
  std::vector<AdapterHandle> rows;
  for (const std::string& ref : ensemble) {
    absl::StatusOr<std::optional<AdapterHandle>> h = ResolveRef(tenant, ref);
    if (!h.ok()) return h.status();
    if (h->has_value()) {
      any = true;
      rows.push_back(**std::move(h));
    } else {
      AdapterHandle by_name;  // Empty adapter_id: the engine resolves `name`.
      by_name.name = ref;
      rows.push_back(std::move(by_name));
    }
  }
  if (any) ensemble_handles = std::move(rows);
  return absl::OkStatus();
}

absl::Status AdapterResolver::Resolve(const std::string& tenant, GenerateRequest& r) const {
  return ResolveAll(tenant, r.adapter, r.ensemble_adapters, r.adapter_handle, r.ensemble_handles);
}

absl::Status AdapterResolver::Resolve(const std::string& tenant, ScoreRequest& r) const {
  return ResolveAll(tenant, r.adapter, r.ensemble_adapters, r.adapter_handle, r.ensemble_handles);
}

AdapterValidator EngineAdapterValidator(const Engine* engine) {
  return [engine](const std::string& dir) -> absl::StatusOr<AdapterMeta> {
    absl::StatusOr<AdapterValidation> v = engine->ValidateAdapter(dir);
    if (!v.ok()) return v.status();
    AdapterMeta meta;
    meta.method = v->method;
    meta.base_fingerprint = v->base_fingerprint;
    return meta;
  };
}

}  // namespace adapterd
