// adapterctl: command-line client for adapterd.
//
//   adapterctl [--target HOST:PORT] [--token T] [--json] [--timeout S] COMMAND ...
//   COMMAND: generate | stream | score | info | stats
//          | adapters upload|register|list|get|delete|load|unload
//          | datasets upload|list|delete | train create|get|list|cancel|watch
//            (client/adapterctl_training.h)
//
// Errors print "adapterctl: CODE: message" on stderr and exit with the gRPC
// status code number (e.g. 3 for INVALID_ARGUMENT).

#include <CLI/CLI.hpp>
#include <optional>
#include <google/protobuf/util/json_util.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "client/adapterctl_training.h"
#include "client/client.h"

namespace {

using json = nlohmann::json;
using adapterd::v1::FinishReason;

struct GenerateFlags {
  std::string prompt;
  std::string prompt_file;
  std::vector<int32_t> prompt_ids;
  std::string adapter;
  std::vector<std::string> ensemble;
  std::string request_id;
  int max_tokens = 16;
  float temperature = 0.0f;
  int top_k = 0;
  float top_p = 1.0f;
  uint64_t seed = 0;
  std::vector<std::string> stop;
  bool logprobs = false;
  int top_logprobs = 0;
  bool ignore_eos = false;
  bool no_special_tokens = false;
  CLI::Option* max_tokens_opt = nullptr;
  CLI::Option* temperature_opt = nullptr;
  CLI::Option* top_p_opt = nullptr;
  CLI::Option* seed_opt = nullptr;
};

void AddGenerateFlags(CLI::App* cmd, GenerateFlags* f) {
  cmd->add_option("prompt", f->prompt, "Prompt text; \"-\" reads standard input");
  cmd->add_option("--prompt-file", f->prompt_file, "Read the prompt from a file (\"-\": stdin)");
  cmd->add_option("--prompt-ids", f->prompt_ids, "Prompt as token ids (comma-separated)")
      ->delimiter(',');
  cmd->add_option("--adapter", f->adapter, "Adapter name[@version]; empty: the base model");
  cmd->add_option("--ensemble", f->ensemble,
                  "Prompt ensembling: a further adapter run beside --adapter (repeatable)");
  cmd->add_option("--request-id", f->request_id, "Request id (default: made by the server)");
  f->max_tokens_opt = cmd->add_option("--max-tokens", f->max_tokens, "New tokens (default 16)");
  f->temperature_opt = cmd->add_option("--temperature", f->temperature, "0 (default) is greedy");
  cmd->add_option("--top-k", f->top_k, "Top-k sampling; 0 disables");
  f->top_p_opt = cmd->add_option("--top-p", f->top_p, "Nucleus sampling; 1 disables");
  f->seed_opt = cmd->add_option("--seed", f->seed, "Seed for reproducible sampling");
  cmd->add_option("--stop", f->stop, "Stop sequence (repeatable)")->take_all();
  cmd->add_flag("--logprobs", f->logprobs, "Return each token's log-prob");
  cmd->add_option("--top-logprobs", f->top_logprobs, "Alternatives per token");
  cmd->add_flag("--ignore-eos", f->ignore_eos, "Keep generating past end-of-sequence");
  cmd->add_flag("--no-special-tokens", f->no_special_tokens, "Do not add BOS/EOS to the prompt");
}

std::string ReadAll(std::istream& in) {
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// The prompt from --prompt-file, "-" (stdin) or the positional argument.
bool ResolvePrompt(const std::string& positional, const std::string& file, std::string* prompt) {
  if (!file.empty() && file != "-") {
    std::ifstream in(file, std::ios::binary);
    if (!in) {
      std::cerr << "adapterctl: cannot read " << file << "\n";
      return false;
    }
    *prompt = ReadAll(in);
  } else if (file == "-" || positional == "-") {
    *prompt = ReadAll(std::cin);
  } else {
    *prompt = positional;
  }
  return true;
}

adapterd::v1::GenerateRequest MakeGenerateRequest(const GenerateFlags& f,
                                                  const std::string& prompt) {
  adapterd::v1::GenerateRequest request;
  request.set_prompt(prompt);
  for (int32_t id : f.prompt_ids) request.add_prompt_token_ids(id);
  request.set_adapter(f.adapter);
  for (const std::string& a : f.ensemble) request.add_ensemble_adapters(a);
  request.set_request_id(f.request_id);
  if (f.no_special_tokens) request.set_add_special_tokens(false);
  adapterd::v1::SamplingParams* s = request.mutable_sampling();
  if (f.max_tokens_opt->count() > 0) s->set_max_tokens(f.max_tokens);
  if (f.temperature_opt->count() > 0) s->set_temperature(f.temperature);
  if (f.top_p_opt->count() > 0) s->set_top_p(f.top_p);
  if (f.seed_opt->count() > 0) s->set_seed(f.seed);
  s->set_top_k(f.top_k);
  for (const std::string& stop : f.stop) s->add_stop(stop);
  s->set_logprobs(f.logprobs);
  s->set_top_logprobs(f.top_logprobs);
  s->set_ignore_eos(f.ignore_eos);
  return request;
}

std::string FinishReasonText(FinishReason reason) {
  std::string name = adapterd::v1::FinishReason_Name(reason);
  const std::string prefix = "FINISH_REASON_";
  if (name.rfind(prefix, 0) == 0) name = name.substr(prefix.size());
  for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return name;
}

json TokenJson(const adapterd::v1::Token& token) {
  json j = {{"id", token.id()}, {"text", token.text()}};
  if (token.has_logprob()) j["logprob"] = token.logprob();
  if (token.top_logprobs_size() > 0) {
    json top = json::array();
    for (const auto& alt : token.top_logprobs()) {
      top.push_back({{"id", alt.token_id()}, {"text", alt.text()}, {"logprob", alt.logprob()}});
    }
    j["top_logprobs"] = top;
  }
  return j;
}

template <typename Message>
json TokensJson(const Message& m, json* ids) {
  json tokens = json::array();
  *ids = json::array();
  for (const auto& token : m.tokens()) {
    tokens.push_back(TokenJson(token));
    ids->push_back(token.id());
  }
  return tokens;
}

json UsageJson(const adapterd::v1::Usage& usage) {
  return {{"prompt_tokens", usage.prompt_tokens()},
          {"completion_tokens", usage.completion_tokens()}};
}

void PrintJson(const json& j) {
  std::cout << j.dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
  std::cout.flush();
}

std::string CodeName(grpc::StatusCode code) {
  // The gRPC and absl enums share their numbers.
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

// Prints the error and returns the exit code: the gRPC code number.
int Fail(const grpc::Status& status) {
  std::cout.flush();
  std::cerr << "adapterctl: " << CodeName(status.error_code()) << ": " << status.error_message()
            << "\n";
  const int code = static_cast<int>(status.error_code());
  return code > 0 && code < 256 ? code : 1;
}

int RunGenerate(adapterd::Client& client, const GenerateFlags& f, bool as_json) {
  std::string prompt;
  if (!ResolvePrompt(f.prompt, f.prompt_file, &prompt)) return 2;
  adapterd::v1::GenerateResponse response;
  grpc::Status status = client.Generate(MakeGenerateRequest(f, prompt), &response);
  if (!status.ok()) return Fail(status);
  if (as_json) {
    json ids;
    json tokens = TokensJson(response, &ids);
    PrintJson({{"request_id", response.request_id()},
               {"adapter", response.adapter()},
               {"text", response.text()},
               {"token_ids", ids},
               {"tokens", tokens},
               {"finish_reason", FinishReasonText(response.finish_reason())},
               {"usage", UsageJson(response.usage())}});
  } else {
    std::cout << response.text() << "\n";
  }
  return 0;
}

int RunStream(adapterd::Client& client, const GenerateFlags& f, bool as_json) {
  std::string prompt;
  if (!ResolvePrompt(f.prompt, f.prompt_file, &prompt)) return 2;
  grpc::Status status = client.GenerateStream(
      MakeGenerateRequest(f, prompt), [&](const adapterd::v1::GenerateStreamResponse& chunk) {
        if (as_json) {
          json ids;
          json tokens = TokensJson(chunk, &ids);
          json j = {{"request_id", chunk.request_id()},
                    {"text", chunk.text()},
                    {"token_ids", ids},
                    {"tokens", tokens}};
          if (chunk.finish_reason() != adapterd::v1::FINISH_REASON_UNSPECIFIED) {
            j["finish_reason"] = FinishReasonText(chunk.finish_reason());
            j["usage"] = UsageJson(chunk.usage());
          }
          PrintJson(j);
        } else {
          std::cout << chunk.text();
          std::cout.flush();
        }
        return true;
      });
  if (!as_json) std::cout << "\n";
  if (!status.ok()) return Fail(status);
  return 0;
}

const char* StateText(adapterd::v1::AdapterState state) {
  switch (state) {
    case adapterd::v1::ADAPTER_STATE_PENDING:
      return "pending";
    case adapterd::v1::ADAPTER_STATE_READY:
      return "ready";
    case adapterd::v1::ADAPTER_STATE_DELETED:
      return "deleted";
    default:
      return "unspecified";
  }
}

json AdapterJson(const adapterd::v1::AdapterInfo& a) {
  json files = json::array();
  for (const auto& f : a.files()) {
    files.push_back({{"name", f.name()}, {"size", f.size()}, {"sha256", f.sha256()}});
  }
  return {{"name", a.name()},
          {"version", a.version()},
          {"ref", a.name() + "@" + std::to_string(a.version())},
          {"adapter_id", a.adapter_id()},
          {"method", a.method()},
          {"base_model_fingerprint", a.base_model_fingerprint()},
          {"sha256", a.sha256()},
          {"size_bytes", a.size_bytes()},
          {"state", StateText(a.state())},
          {"owner", a.owner()},
          {"created_at_unix", a.created_at().seconds()},
          {"residency", a.residency() == adapterd::v1::RESIDENCY_DEVICE ? "device"
                        : a.residency() == adapterd::v1::RESIDENCY_HOST ? "host"
                        : a.residency() == adapterd::v1::RESIDENCY_DISK ? "disk"
                                                                        : "unspecified"},
          {"pinned", a.pinned()},
          {"files", files}};
}

void PrintAdapterLine(const adapterd::v1::AdapterInfo& a) {
  std::printf("%s@%lld\t%s\t%lld bytes\t%s\t%s\n", a.name().c_str(),
              static_cast<long long>(a.version()), a.method().c_str(),
              static_cast<long long>(a.size_bytes()), StateText(a.state()), a.sha256().c_str());
}

// An adapter as JSON (--json) or as one line.
void PrintAdapter(const adapterd::v1::AdapterInfo& a, bool as_json) {
  if (as_json) {
    PrintJson(AdapterJson(a));
  } else {
    PrintAdapterLine(a);
  }
}

struct AdapterFlags {
  std::string name;
  std::string path;
  std::string ref;
  int64_t version = 0;
  std::string method;
  int64_t chunk_bytes = 1 << 20;
  bool quiet = false;
  int page_size = 0;
  std::string page_token;
  bool all_pages = false;
  bool latest = false;
  bool all_versions = false;
  bool pin = false;
};

// Progress on stderr: "\r" updates on a terminal, a line per 10% otherwise.
class Progress {
 public:
  explicit Progress(std::string label) : label_(std::move(label)), tty_(::isatty(2) != 0) {}
  void Update(int64_t sent, int64_t total) {
    const int percent = total > 0 ? static_cast<int>(sent * 100 / total) : 100;
    const auto now = std::chrono::steady_clock::now();
    if (tty_) {
      if (sent < total && now - last_ < std::chrono::milliseconds(100)) return;
      last_ = now;
      std::fprintf(stderr, "\rupload %s: %.1f/%.1f MiB (%d%%)", label_.c_str(), sent / 1048576.0,
                   total / 1048576.0, percent);
    } else if (percent / 10 > last_decile_) {
      last_decile_ = percent / 10;
      std::fprintf(stderr, "upload %s: %lld/%lld bytes (%d%%)\n", label_.c_str(),
                   static_cast<long long>(sent), static_cast<long long>(total), percent);
    }
  }
  void Done() {
    if (tty_) std::fprintf(stderr, "\n");
  }

 private:
  const std::string label_;
  const bool tty_;
  int last_decile_ = -1;
  std::chrono::steady_clock::time_point last_;
};

int RunAdapters(adapterd::Client& client, CLI::App* cmd, const AdapterFlags& f, bool as_json) {
  const std::string sub = cmd->get_subcommands().empty() ? "" : cmd->get_subcommands()[0]->get_name();
  if (sub == "upload") {
    std::vector<adapterd::UploadFile> files;
    std::error_code ec;
    if (std::filesystem::is_directory(f.path, ec)) {
      files = adapterd::Client::AdapterFilesIn(f.path);
    } else {
      files.push_back({std::filesystem::path(f.path).filename().string(), f.path});
    }
    if (files.empty()) {
      std::cerr << "adapterctl: no adapter files in " << f.path << "\n";
      return 2;
    }
    adapterd::UploadAdapterOptions options;
    options.name = f.name;
    options.version = f.version;
    options.method = f.method;
    options.chunk_bytes = f.chunk_bytes;
    Progress progress(f.name);
    adapterd::v1::AdapterInfo info;
    grpc::Status status = client.UploadAdapter(
        files, options, &info, [&](int64_t sent, int64_t total) {
          if (!f.quiet) progress.Update(sent, total);
        });
    if (!f.quiet) progress.Done();
    if (!status.ok()) return Fail(status);
    PrintAdapter(info, as_json);
    return 0;
  }
  if (sub == "register") {
    adapterd::v1::RegisterAdapterRequest request;
    request.set_name(f.name);
    request.set_version(f.version);
    std::error_code ec;
    const std::filesystem::path absolute = std::filesystem::absolute(f.path, ec);
    request.set_path(ec ? f.path : absolute.string());
    request.set_method(f.method);
    adapterd::v1::AdapterInfo info;
    grpc::Status status = client.RegisterAdapter(request, &info);
    if (!status.ok()) return Fail(status);
    PrintAdapter(info, as_json);
    return 0;
  }
  if (sub == "list") {
    adapterd::v1::ListAdaptersRequest request;
    request.set_page_size(f.page_size);
    request.set_page_token(f.page_token);
    request.set_method(f.method);
    request.set_name(f.name);
    request.set_latest_only(f.latest);
    json all = json::array();
    std::string next;
    while (true) {
      adapterd::v1::ListAdaptersResponse response;
      grpc::Status status = client.ListAdapters(request, &response);
      if (!status.ok()) return Fail(status);
      for (const auto& a : response.adapters()) {
        if (as_json) {
          all.push_back(AdapterJson(a));
        } else {
          PrintAdapterLine(a);
        }
      }
      next = response.next_page_token();
      if (!f.all_pages || next.empty()) break;
      request.set_page_token(next);
    }
    if (as_json) PrintJson({{"adapters", all}, {"next_page_token", next}});
    return 0;
  }
  if (sub == "get") {
    adapterd::v1::AdapterInfo info;
    grpc::Status status = client.GetAdapter(f.ref, &info);
    if (!status.ok()) return Fail(status);
    if (as_json) {
      PrintJson(AdapterJson(info));
    } else {
      for (const auto& [key, value] : AdapterJson(info).items()) {
        std::cout << key << ": " << value.dump() << "\n";
      }
    }
    return 0;
  }
  if (sub == "delete") {
    adapterd::v1::DeleteAdapterRequest request;
    request.set_adapter(f.ref);
    request.set_all_versions(f.all_versions);
    adapterd::v1::DeleteAdapterResponse response;
    grpc::Status status = client.DeleteAdapter(request, &response);
    if (!status.ok()) return Fail(status);
    if (as_json) {
      json deleted = json::array();
      for (const auto& a : response.deleted()) deleted.push_back(AdapterJson(a));
      PrintJson({{"deleted", deleted}});
    } else {
      for (const auto& a : response.deleted()) PrintAdapterLine(a);
    }
    return 0;
  }
  if (sub == "load" || sub == "unload") {
    adapterd::v1::AdapterInfo info;
    grpc::Status status;
    if (sub == "load") {
      adapterd::v1::LoadAdapterRequest request;
      request.set_adapter(f.ref);
      request.set_pin(f.pin);
      adapterd::v1::LoadAdapterResponse response;
      status = client.LoadAdapter(request, &response);
      info = response.adapter();
    } else {
      adapterd::v1::UnloadAdapterRequest request;
      request.set_adapter(f.ref);
      adapterd::v1::UnloadAdapterResponse response;
      status = client.UnloadAdapter(request, &response);
      info = response.adapter();
    }
    if (!status.ok()) return Fail(status);
    PrintAdapter(info, as_json);
    return 0;
  }
  return 2;
}

struct TenantFlags {
  std::string id, name, description, key_id;
  bool admin = false;
  std::optional<bool> disabled;
  std::optional<int64_t> max_adapters, max_adapter_bytes, max_concurrent, tpm, max_jobs;
  std::optional<double> rps;
};

// tenants and keys: prints each response as JSON (the key of "keys create"
// appears only there, once).
int RunTenants(const adapterd::Client& client, CLI::App* group, const TenantFlags& f) {
  namespace v1 = adapterd::v1;
  grpc::ClientContext context;
  client.Prepare(&context);
  google::protobuf::Message* out = nullptr;
  grpc::Status status;
  auto quotas = [&f](v1::Quotas* q, const v1::Quotas& base) {
    *q = base;
    if (f.max_adapters) q->set_max_adapters(*f.max_adapters);
    if (f.max_adapter_bytes) q->set_max_adapter_bytes(*f.max_adapter_bytes);
    if (f.max_concurrent) q->set_max_concurrent_requests(*f.max_concurrent);
    if (f.rps) q->set_requests_per_second(*f.rps);
    if (f.tpm) q->set_tokens_per_minute(*f.tpm);
    if (f.max_jobs) q->set_max_concurrent_jobs(*f.max_jobs);
  };
  v1::Tenant tenant;
  v1::ListTenantsResponse tenants;
  v1::CreateApiKeyResponse created;
  v1::ListApiKeysResponse keys;
  v1::ApiKeyInfo revoked;
  const std::string cmd = group->get_subcommands().front()->get_name();
  if (group->get_name() == "tenants") {
    if (cmd == "create") {
      v1::CreateTenantRequest r;
      r.set_id(f.id);
      r.set_name(f.name);
      r.set_role(f.admin ? v1::ROLE_ADMIN : v1::ROLE_TENANT);
      quotas(r.mutable_quotas(), v1::Quotas());
      status = client.admin()->CreateTenant(&context, r, &tenant);
      out = &tenant;
    } else if (cmd == "list") {
      status = client.admin()->ListTenants(&context, v1::ListTenantsRequest(), &tenants);
      out = &tenants;
    } else if (cmd == "get") {
      v1::GetTenantRequest r;
      r.set_id(f.id);
      status = client.admin()->GetTenant(&context, r, &tenant);
      out = &tenant;
    } else {  // update: read, change what was given, write.
      v1::GetTenantRequest g;
      g.set_id(f.id);
      v1::Tenant current;
      status = client.admin()->GetTenant(&context, g, &current);
      if (!status.ok()) return Fail(status);
      grpc::ClientContext update_context;
      client.Prepare(&update_context);
      v1::UpdateTenantRequest r;
      r.set_id(f.id);
      r.set_name(f.name.empty() ? current.name() : f.name);
      quotas(r.mutable_quotas(), current.quotas());
      r.set_disabled(f.disabled.value_or(current.disabled()));
      status = client.admin()->UpdateTenant(&update_context, r, &tenant);
      out = &tenant;
    }
  } else {
    if (cmd == "create") {
      v1::CreateApiKeyRequest r;
      r.set_tenant(f.id);
      r.set_description(f.description);
      status = client.admin()->CreateApiKey(&context, r, &created);
      out = &created;
    } else if (cmd == "list") {
      v1::ListApiKeysRequest r;
      r.set_tenant(f.id);
      status = client.admin()->ListApiKeys(&context, r, &keys);
      out = &keys;
    } else {
      v1::RevokeApiKeyRequest r;
      r.set_id(f.key_id);
      status = client.admin()->RevokeApiKey(&context, r, &revoked);
      out = &revoked;
    }
  }
  if (!status.ok()) return Fail(status);
  std::string text;
  google::protobuf::util::JsonPrintOptions print;
  print.preserve_proto_field_names = true;
  print.always_print_primitive_fields = true;
  (void)google::protobuf::util::MessageToJsonString(*out, &text, print);
  std::printf("%s\n", text.c_str());
  return 0;
}

int main_impl(int argc, char** argv) {
  CLI::App app{"adapterctl: command-line client for adapterd", "adapterctl"};
  std::string target = "127.0.0.1:50051";
  std::string token;
  bool as_json = false;
  double timeout_seconds = 0;
  app.add_option("--target", target, "Server address host:port")
      ->envname("ADAPTERD_TARGET")
      ->capture_default_str();
  app.add_option("--token", token, "Bearer token")->envname("ADAPTERD_TOKEN");
  std::string tls_ca, tls_cert, tls_key;
  app.add_option("--tls-ca", tls_ca, "PEM CA bundle: connect with TLS and verify the server")
      ->envname("ADAPTERD_TLS_CA");
  app.add_option("--tls-cert", tls_cert, "PEM client certificate (mutual TLS)")
      ->envname("ADAPTERD_TLS_CLIENT_CERT");
  app.add_option("--tls-key", tls_key, "PEM client private key (mutual TLS)")
      ->envname("ADAPTERD_TLS_CLIENT_KEY");
  app.add_flag("--json", as_json, "Print JSON (one object per line for stream)");
  app.add_option("--timeout", timeout_seconds, "Deadline per call in seconds; 0: none")
      ->check(CLI::NonNegativeNumber);
  app.require_subcommand(1);

  GenerateFlags gen_flags;
  CLI::App* gen = app.add_subcommand("generate", "Generate a completion");
  AddGenerateFlags(gen, &gen_flags);
  GenerateFlags stream_flags;
  CLI::App* stream = app.add_subcommand("stream", "Generate, printing tokens as they arrive");
  AddGenerateFlags(stream, &stream_flags);

  std::string score_prompt, score_prompt_file, score_adapter, score_request_id;
  std::vector<std::string> continuations;
  int score_top_logprobs = 0;
  CLI::App* score = app.add_subcommand("score", "Log-probs of continuations after a prompt");
  score->add_option("prompt", score_prompt, "Prompt text; \"-\" reads standard input");
  score->add_option("--prompt-file", score_prompt_file, "Read the prompt from a file");
  score->add_option("-c,--continuation", continuations, "Continuation to score (repeatable)")
      ->take_all();
  score->add_option("--adapter", score_adapter, "Adapter name[@version]");
  std::vector<std::string> score_ensemble;
  score->add_option("--ensemble", score_ensemble,
                    "Prompt ensembling: a further adapter; probabilities are averaged (repeatable)");
  score->add_option("--request-id", score_request_id, "Request id");
  score->add_option("--top-logprobs", score_top_logprobs, "Alternatives per token");

  CLI::App* info = app.add_subcommand("info", "Model, limits and version of the server");
  CLI::App* stats = app.add_subcommand("stats", "Server counters");

  AdapterFlags af;
  CLI::App* adapters = app.add_subcommand("adapters", "Manage adapters");
  adapters->require_subcommand(1);
  CLI::App* up = adapters->add_subcommand("upload", "Upload an adapter directory or file");
  up->add_option("name", af.name, "Adapter name")->required();
  up->add_option("path", af.path,
                 "Directory with adapter_config.json and safetensors (AdapterFusion: also its "
                 "fused adapters' subdirectories)")
      ->required();
  up->add_option("--version", af.version, "Version number (default: the next)");
  up->add_option("--method", af.method, "Expected method (lora, prefix_tuning, ...)");
  up->add_option("--chunk-bytes", af.chunk_bytes, "Bytes per message (default 1 MiB)");
  up->add_flag("--quiet", af.quiet, "No progress on stderr");
  CLI::App* reg = adapters->add_subcommand("register", "Register an adapter from a server path");
  reg->add_option("name", af.name, "Adapter name")->required();
  reg->add_option("path", af.path, "Directory on the server (under --allowed-adapter-root)")
      ->required();
  reg->add_option("--version", af.version, "Version number (default: the next)");
  reg->add_option("--method", af.method, "Expected method");
  CLI::App* ls = adapters->add_subcommand("list", "List adapters");
  ls->add_option("--method", af.method, "Only this method");
  ls->add_option("--name", af.name, "Only versions of this name");
  ls->add_flag("--latest", af.latest, "Only the latest version of each name");
  ls->add_option("--page-size", af.page_size, "Adapters per page (default 100)");
  ls->add_option("--page-token", af.page_token, "Page token from a previous list");
  ls->add_flag("--all", af.all_pages, "Follow every page");
  CLI::App* get = adapters->add_subcommand("get", "Show one adapter version");
  get->add_option("adapter", af.ref, "name or name@version")->required();
  CLI::App* del = adapters->add_subcommand("delete", "Delete a version, or all versions");
  del->add_option("adapter", af.ref, "name@version, or name with --all-versions")->required();
  del->add_flag("--all-versions", af.all_versions, "Delete every version of the name");
  CLI::App* load = adapters->add_subcommand("load", "Prefetch (and pin) into the GPU tier");
  load->add_option("adapter", af.ref, "name or name@version")->required();
  load->add_flag("--pin", af.pin, "Keep it resident until unload");
  CLI::App* unload = adapters->add_subcommand("unload", "Release a pinned adapter");
  unload->add_option("adapter", af.ref, "name or name@version")->required();

  TenantFlags tf;
  CLI::App* tenants = app.add_subcommand("tenants", "Manage tenants (admin)");
  tenants->require_subcommand(1);
  CLI::App* tcreate = tenants->add_subcommand("create", "Create a tenant");
  tcreate->add_option("id", tf.id, "Tenant id ([a-z0-9][a-z0-9_-]*)")->required();
  tcreate->add_option("--name", tf.name, "Display name");
  tcreate->add_flag("--admin", tf.admin, "Give it the admin role");
  CLI::App* tlist = tenants->add_subcommand("list", "List tenants");
  CLI::App* tget = tenants->add_subcommand("get", "Show a tenant");
  tget->add_option("id", tf.id, "Tenant id")->required();
  CLI::App* tupdate = tenants->add_subcommand("update", "Change quotas, name, disabled");
  tupdate->add_option("id", tf.id, "Tenant id")->required();
  tupdate->add_option("--name", tf.name, "Display name");
  tupdate->add_option("--disabled", tf.disabled, "true or false");
  for (CLI::App* cmd : {tcreate, tupdate}) {
    cmd->add_option("--max-adapters", tf.max_adapters, "Stored adapter versions (0: unlimited)");
    cmd->add_option("--max-adapter-bytes", tf.max_adapter_bytes, "Stored bytes (0: unlimited)");
    cmd->add_option("--max-concurrent-requests", tf.max_concurrent, "Requests in flight");
    cmd->add_option("--requests-per-second", tf.rps, "Request rate");
    cmd->add_option("--tokens-per-minute", tf.tpm, "Prompt + completion tokens per minute");
    cmd->add_option("--max-concurrent-jobs", tf.max_jobs, "Training jobs at once");
  }
  CLI::App* keys = app.add_subcommand("keys", "Manage API keys (admin)");
  keys->require_subcommand(1);
  CLI::App* kcreate = keys->add_subcommand("create", "Create a key (printed once)");
  kcreate->add_option("tenant", tf.id, "Tenant id")->required();
  kcreate->add_option("--description", tf.description, "What the key is for");
  CLI::App* klist = keys->add_subcommand("list", "List keys (never the key itself)");
  klist->add_option("--tenant", tf.id, "Only this tenant's keys");
  CLI::App* krevoke = keys->add_subcommand("revoke", "Revoke a key");
  krevoke->add_option("key_id", tf.key_id, "Key id (from keys list)")->required();

  adapterd::ctl::TrainingCommands training(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  adapterd::ClientOptions options;
  options.target = target;
  options.token = token;
  options.tls_ca_file = tls_ca;
  options.tls_cert_file = tls_cert;
  options.tls_key_file = tls_key;
  options.timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_seconds * 1000));
  adapterd::Client client(options);

  if (*tenants || *keys) return RunTenants(client, *tenants ? tenants : keys, tf);
  if (training.Selected()) return training.Run(client, as_json, Fail);
  if (*gen) return RunGenerate(client, gen_flags, as_json);
  if (*adapters) return RunAdapters(client, adapters, af, as_json);
  if (*stream) return RunStream(client, stream_flags, as_json);
  if (*score) {
    std::string prompt;
    if (!ResolvePrompt(score_prompt, score_prompt_file, &prompt)) return 2;
    adapterd::v1::ScoreRequest request;
    request.set_prompt(prompt);
    request.set_adapter(score_adapter);
    for (const std::string& a : score_ensemble) request.add_ensemble_adapters(a);
    request.set_request_id(score_request_id);
    request.set_top_logprobs(score_top_logprobs);
    for (const std::string& c : continuations) request.add_continuations(c);
    adapterd::v1::ScoreResponse response;
    grpc::Status status = client.Score(request, &response);
    if (!status.ok()) return Fail(status);
    if (as_json) {
      json scores = json::array();
      for (int i = 0; i < response.scores_size(); ++i) {
        const auto& s = response.scores(i);
        json ids;
        json tokens = TokensJson(s, &ids);
        scores.push_back(
            {{"continuation",
              i < static_cast<int>(continuations.size()) ? continuations[i] : std::string()},
             {"logprob", s.logprob()},
             {"is_greedy", s.is_greedy()},
             {"token_ids", ids},
             {"tokens", tokens}});
      }
      PrintJson({{"request_id", response.request_id()},
                 {"adapter", response.adapter()},
                 {"scores", scores},
                 {"usage", UsageJson(response.usage())}});
    } else {
      for (int i = 0; i < response.scores_size(); ++i) {
        std::printf("%.6f\t%s\t%s\n", response.scores(i).logprob(),
                    response.scores(i).is_greedy() ? "greedy" : "-",
                    i < static_cast<int>(continuations.size()) ? continuations[i].c_str() : "");
      }
    }
    return 0;
  }
  if (*info) {
    adapterd::v1::ServerInfo response;
    grpc::Status status = client.GetServerInfo(&response);
    if (!status.ok()) return Fail(status);
    const auto& m = response.model();
    const auto& l = response.limits();
    json model = {{"name", m.name()},
                  {"architecture", m.architecture()},
                  {"model_type", m.model_type()},
                  {"dtype", m.dtype()},
                  {"device", m.device()},
                  {"fingerprint", m.fingerprint()},
                  {"vocab_size", m.vocab_size()},
                  {"context_length", m.context_length()},
                  {"num_layers", m.num_layers()},
                  {"hidden_size", m.hidden_size()},
                  {"num_heads", m.num_heads()},
                  {"num_kv_heads", m.num_kv_heads()},
                  {"is_default_model", m.is_default_model()}};
    json limits = {{"max_batch_size", l.max_batch_size()},
                   {"max_queue", l.max_queue()},
                   {"max_tokens", l.max_tokens()},
                   {"max_stop_sequences", l.max_stop_sequences()},
                   {"max_top_logprobs", l.max_top_logprobs()},
                   {"max_continuations", l.max_continuations()},
                   {"max_prompt_bytes", l.max_prompt_bytes()},
                   {"max_message_bytes", l.max_message_bytes()}};
    json adapters = json::array();
    for (const auto& a : response.adapters()) {
      adapters.push_back({{"name", a.name()},
                          {"version", a.version()},
                          {"method", a.method()},
                          {"path", a.path()},
                          {"bytes", a.bytes()}});
    }
    if (as_json) {
      PrintJson({{"version", response.version()},
                 {"auth_enabled", response.auth_enabled()},
                 {"model", model},
                 {"limits", limits},
                 {"adapters", adapters},
                 {"merged_adapter", response.merged_adapter()}});
    } else {
      std::cout << "version: " << response.version() << "\n";
      std::cout << "auth_enabled: " << (response.auth_enabled() ? "true" : "false") << "\n";
      for (const auto& [key, value] : model.items()) {
        std::cout << "model." << key << ": " << value.dump() << "\n";
      }
      for (const auto& [key, value] : limits.items()) {
        std::cout << "limits." << key << ": " << value.dump() << "\n";
      }
      for (const auto& a : response.adapters()) {
        std::cout << "adapter: " << a.name() << "@" << a.version() << " " << a.method() << " "
                  << a.path() << "\n";
      }
      if (!response.merged_adapter().empty()) {
        std::cout << "merged_adapter: " << response.merged_adapter() << "\n";
      }
    }
    return 0;
  }
  if (*stats) {
    adapterd::v1::ServerStats s;
    grpc::Status status = client.GetStats(&s);
    if (!status.ok()) return Fail(status);
    json j = {{"running", s.running()},
              {"queued", s.queued()},
              {"free_slots", s.free_slots()},
              {"steps", s.steps()},
              {"generated_tokens", s.generated_tokens()},
              {"prompt_tokens", s.prompt_tokens()},
              {"requests_finished", s.requests_finished()},
              {"requests_cancelled", s.requests_cancelled()},
              {"uptime_seconds", s.uptime_seconds()}};
    const adapterd::v1::AdapterCacheStats& c = s.adapter_cache();
    json cache = {{"device_budget_bytes", c.device_budget_bytes()},
                  {"device_bytes", c.device_bytes()},
                  {"device_adapters", c.device_adapters()},
                  {"host_budget_bytes", c.host_budget_bytes()},
                  {"host_bytes", c.host_bytes()},
                  {"host_adapters", c.host_adapters()},
                  {"pinned_adapters", c.pinned_adapters()},
                  {"leased_adapters", c.leased_adapters()},
                  {"device_hits", c.device_hits()},
                  {"host_hits", c.host_hits()},
                  {"misses", c.misses()},
                  {"loads", c.loads()},
                  {"load_failures", c.load_failures()},
                  {"evictions", c.evictions()},
                  {"waiting_requests", c.waiting_requests()},
                  {"load_ms_p50", c.load_ms_p50()},
                  {"load_ms_p99", c.load_ms_p99()},
                  {"load_ms_max", c.load_ms_max()},
                  {"static_adapters", c.static_adapters()},
                  {"static_bytes", c.static_bytes()}};
    if (as_json) {
      j["adapter_cache"] = cache;
    } else {
      for (const auto& [key, value] : cache.items()) j["adapter_cache." + key] = value;
    }
    if (as_json) {
      PrintJson(j);
    } else {
      for (const auto& [key, value] : j.items()) std::cout << key << ": " << value.dump() << "\n";
    }
    return 0;
  }
  return 2;
}

}  // namespace

int main(int argc, char** argv) { return main_impl(argc, argv); }
