// adapterctl: command-line client for adapterd.
//
//   adapterctl [--target HOST:PORT] [--token T] [--json] [--timeout S] COMMAND ...
//   COMMAND: generate | stream | score | info | stats
//
// Errors print "adapterctl: CODE: message" on stderr and exit with the gRPC
// status code number (e.g. 3 for INVALID_ARGUMENT).

#include <CLI/CLI.hpp>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "client/client.h"

namespace {

using json = nlohmann::json;
using adapterd::v1::FinishReason;

struct GenerateFlags {
  std::string prompt;
  std::string prompt_file;
  std::vector<int32_t> prompt_ids;
  std::string adapter;
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

const char* CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return "OK";
    case grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED:
      return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS:
      return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    default:
      return "UNKNOWN";
  }
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
  score->add_option("--request-id", score_request_id, "Request id");
  score->add_option("--top-logprobs", score_top_logprobs, "Alternatives per token");

  CLI::App* info = app.add_subcommand("info", "Model, limits and version of the server");
  CLI::App* stats = app.add_subcommand("stats", "Server counters");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  adapterd::ClientOptions options;
  options.target = target;
  options.token = token;
  options.timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_seconds * 1000));
  adapterd::Client client(options);

  if (*gen) return RunGenerate(client, gen_flags, as_json);
  if (*stream) return RunStream(client, stream_flags, as_json);
  if (*score) {
    std::string prompt;
    if (!ResolvePrompt(score_prompt, score_prompt_file, &prompt)) return 2;
    adapterd::v1::ScoreRequest request;
    request.set_prompt(prompt);
    request.set_adapter(score_adapter);
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
    if (as_json) {
      PrintJson({{"version", response.version()},
                 {"auth_enabled", response.auth_enabled()},
                 {"model", model},
                 {"limits", limits}});
    } else {
      std::cout << "version: " << response.version() << "\n";
      std::cout << "auth_enabled: " << (response.auth_enabled() ? "true" : "false") << "\n";
      for (const auto& [key, value] : model.items()) {
        std::cout << "model." << key << ": " << value.dump() << "\n";
      }
      for (const auto& [key, value] : limits.items()) {
        std::cout << "limits." << key << ": " << value.dump() << "\n";
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
