// Load generator for a running adapterd: N concurrent clients, each its own
// thread and its own channel, each issuing --requests GenerateStream calls
// back to back through the C++ client library (client/client.h). Every
// request generates exactly --new tokens (ignore_eos, greedy), so that the
// figures compare with the in-process benchmark (bench/gpu_decode_bench) on
// the same shapes: tokens/s over the whole run, and per request the latency
// and the time to first token, as p50/p99. scripts/gpu/grpc.sh runs it beside
// gpu_decode_bench on the GPU machine and prints the ratio.
//
//   grpc_load_bench --target HOST:PORT [--clients 32] [--requests 4]
//                   [--prompt 128] [--new 64] [--adapters base|distinct|NAME]
//                   [--adapter-prefix a] [--token T] [--label TEXT]
//
// --adapters: base (no adapter), distinct (client k uses PREFIX<k>, e.g. the
// server's start-up adapters a0..aN-1) or one adapter NAME for every client.
// Each client first runs one untimed request (warm-up: CUDA graphs, adapter
// residency), then all clients start together. The prompts are the token ids
// gpu_decode_bench uses, sent as prompt_token_ids (no special tokens added).

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "client/client.h"

namespace adapterd {
namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  std::string target = "127.0.0.1:50051";
  std::string token;
  std::string adapters = "base";
  std::string adapter_prefix = "a";
  std::string label;
  int clients = 32;
  int requests = 4;
  int prompt = 128;
  int new_tokens = 64;
};

struct Sample {
  double latency_s = 0;  // Call start to the stream's end.
  double ttft_s = 0;     // Call start to the first message holding a token.
  int64_t tokens = 0;
};

v1::GenerateRequest MakeRequest(const Options& o, int client) {
  v1::GenerateRequest req;
  for (int i = 0; i < o.prompt; ++i) req.add_prompt_token_ids((client * 31 + i * 7) % 500 + 3);
  req.set_add_special_tokens(false);
  req.mutable_sampling()->set_max_tokens(o.new_tokens);
  req.mutable_sampling()->set_ignore_eos(true);
  if (o.adapters == "distinct") {
    req.set_adapter(o.adapter_prefix + std::to_string(client));
  } else if (o.adapters != "base") {
    req.set_adapter(o.adapters);
  }
  return req;
}

// One GenerateStream call; a failed call or a short completion ends the
// benchmark, since its figures would not count what they claim to.
Sample RunOne(Client& client, const v1::GenerateRequest& req, int want_tokens) {
  Sample s;
  const auto start = Clock::now();
  bool first = true;
  const grpc::Status status =
      client.GenerateStream(req, [&](const v1::GenerateStreamResponse& chunk) {
        if (first && chunk.tokens_size() > 0) {
          s.ttft_s = std::chrono::duration<double>(Clock::now() - start).count();
          first = false;
        }
        s.tokens += chunk.tokens_size();
        return true;
      });
  s.latency_s = std::chrono::duration<double>(Clock::now() - start).count();
  if (!status.ok() || s.tokens != want_tokens) {
    std::fprintf(stderr, "request (adapter \"%s\") failed: %d %s; %lld of %d tokens\n",
                 req.adapter().c_str(), static_cast<int>(status.error_code()),
                 status.error_message().c_str(), static_cast<long long>(s.tokens), want_tokens);
    std::exit(1);
  }
  return s;
}

double Percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  const size_t i = static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

int Main(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--target")
      o.target = value;
    else if (flag == "--token")
      o.token = value;
    else if (flag == "--adapters")
      o.adapters = value;
    else if (flag == "--adapter-prefix")
      o.adapter_prefix = value;
    else if (flag == "--label")
      o.label = value;
    else if (flag == "--clients")
      o.clients = std::atoi(value.c_str());
    else if (flag == "--requests")
      o.requests = std::atoi(value.c_str());
    else if (flag == "--prompt")
      o.prompt = std::atoi(value.c_str());
    else if (flag == "--new")
      o.new_tokens = std::atoi(value.c_str());
    else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  if (argc % 2 == 0 || o.clients < 1 || o.requests < 1 || o.prompt < 1 || o.new_tokens < 1) {
    std::fprintf(stderr,
                 "usage: grpc_load_bench --target HOST:PORT [--clients N>=1] [--requests N>=1] "
                 "[--prompt N] [--new N] [--adapters base|distinct|NAME]\n");
    return 2;
  }

  // One channel per client: a shared channel would put every stream on one
  // HTTP/2 connection, which is not how independent callers arrive.
  std::vector<std::unique_ptr<Client>> clients;
  for (int k = 0; k < o.clients; ++k) {
    ClientOptions co;
    co.target = o.target;
    co.token = o.token;
    clients.push_back(std::make_unique<Client>(co));
  }
  std::vector<std::vector<Sample>> samples(o.clients);
  std::barrier start_line(o.clients + 1);
  std::barrier finish_line(o.clients + 1);
  std::vector<std::thread> threads;
  for (int k = 0; k < o.clients; ++k) {
    threads.emplace_back([&, k] {
      const v1::GenerateRequest req = MakeRequest(o, k);
      RunOne(*clients[k], req, o.new_tokens);  // Warm-up, untimed.
      start_line.arrive_and_wait();
      for (int r = 0; r < o.requests; ++r)
        samples[k].push_back(RunOne(*clients[k], req, o.new_tokens));
      finish_line.arrive_and_wait();
    });
  }
  start_line.arrive_and_wait();
  const auto start = Clock::now();
  finish_line.arrive_and_wait();
  const double wall = std::chrono::duration<double>(Clock::now() - start).count();
  for (std::thread& t : threads) t.join();

  std::vector<double> latency, ttft;
  int64_t tokens = 0;
  for (const auto& per_client : samples) {
    for (const Sample& s : per_client) {
      latency.push_back(s.latency_s);
      ttft.push_back(s.ttft_s);
      tokens += s.tokens;
    }
  }
  // Per-token time after the first, per request: the decode step as a
  // client sees it.
  std::vector<double> tpot;
  for (size_t i = 0; i < latency.size(); ++i) {
    tpot.push_back((latency[i] - ttft[i]) / std::max(1, o.new_tokens - 1));
  }
  const std::string label = o.label.empty() ? o.adapters : o.label;
  std::printf("grpc %-28s %10.1f %8lld %9.1f %9.1f %9.1f %9.1f %9.2f\n", label.c_str(),
              static_cast<double>(tokens) / wall, static_cast<long long>(latency.size()),
              1e3 * Percentile(latency, 0.5), 1e3 * Percentile(latency, 0.99),
              1e3 * Percentile(ttft, 0.5), 1e3 * Percentile(ttft, 0.99),
              1e3 * Percentile(tpot, 0.5));
  return 0;
}

}  // namespace
}  // namespace adapterd

int main(int argc, char** argv) { return adapterd::Main(argc, argv); }
