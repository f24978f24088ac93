#include "client/adapterctl_training.h"

#include <google/protobuf/util/json_util.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

namespace adapterd::ctl {
namespace {

const char* StateName(v1::TrainingJobState state) {
  switch (state) {
    case v1::TRAINING_JOB_STATE_QUEUED:
      return "QUEUED";
    case v1::TRAINING_JOB_STATE_RUNNING:
      return "RUNNING";
    case v1::TRAINING_JOB_STATE_SUCCEEDED:
      return "SUCCEEDED";
    case v1::TRAINING_JOB_STATE_FAILED:
      return "FAILED";
    case v1::TRAINING_JOB_STATE_CANCELLED:
      return "CANCELLED";
    default:
      return "UNSPECIFIED";
  }
}

bool IsFinal(v1::TrainingJobState s) {
  return s == v1::TRAINING_JOB_STATE_SUCCEEDED || s == v1::TRAINING_JOB_STATE_FAILED ||
         s == v1::TRAINING_JOB_STATE_CANCELLED;
}

void PrintProtoJson(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  static_cast<void>(google::protobuf::util::MessageToJsonString(m, &out, options));
  std::cout << out << "\n";
  std::cout.flush();
}

std::string Duration(double seconds) {
  if (!(seconds >= 0) || seconds > 1e7) return "?";
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  char buffer[32];
  if (s >= 3600) {
    std::snprintf(buffer, sizeof buffer, "%lld:%02lld:%02lld", static_cast<long long>(s / 3600),
                  static_cast<long long>(s / 60 % 60), static_cast<long long>(s % 60));
  } else {
    std::snprintf(buffer, sizeof buffer, "%lld:%02lld", static_cast<long long>(s / 60),
                  static_cast<long long>(s % 60));
  }
  return buffer;
}

// "step 12/100 epoch 1 loss 0.4312 eval 0.5 lr 2.0e-02 850 tok/s ETA 0:12".
std::string ProgressText(const v1::TrainingJob& job) {
  const v1::TrainingProgress& p = job.progress();
  char buffer[256];
  int n = std::snprintf(buffer, sizeof buffer, "step %lld/%lld epoch %d",
                        static_cast<long long>(p.step()), static_cast<long long>(p.total_steps()),
                        p.epoch());
  if (std::isfinite(p.loss()))
    n += std::snprintf(buffer + n, sizeof buffer - n, " loss %.4f", p.loss());
  if (std::isfinite(p.eval_loss())) {
    n += std::snprintf(buffer + n, sizeof buffer - n, " eval %.4f", p.eval_loss());
  }
  if (job.state() == v1::TRAINING_JOB_STATE_RUNNING) {
    std::snprintf(buffer + n, sizeof buffer - n, " lr %.1e %.0f tok/s ETA %s", p.learning_rate(),
                  p.tokens_per_second(), Duration(p.eta_seconds()).c_str());
  }
  return buffer;
}

std::string JobLine(const v1::TrainingJob& job) {
  std::string line = job.job_id() + "  " + StateName(job.state()) + "  " + job.method() + "  " +
                     job.output_adapter() + "  " + ProgressText(job);
  if (!job.result_adapter().empty()) line += "  → " + job.result_adapter();
  if (job.cancel_requested() && !IsFinal(job.state())) line += "  (cancelling)";
  if (!job.error().empty()) line += "  " + job.error_code() + ": " + job.error();
  if (job.progress().resumed_from_step() > 0) {
    line += "  (resumed from step " + std::to_string(job.progress().resumed_from_step()) + ")";
  }
  return line;
}

void PrintJob(const v1::TrainingJob& job, bool as_json) {
  if (as_json) {
    PrintProtoJson(job);
  } else {
    std::cout << JobLine(job) << "\n";
  }
}

// The exit code for a finished job.
int FinalCode(const v1::TrainingJob& job) {
  return job.state() == v1::TRAINING_JOB_STATE_SUCCEEDED ? 0 : 1;
}

// Watches a job to its end, drawing progress; returns the exit code.
int Watch(Client& client, const std::string& job_id, bool as_json,
          const std::function<int(const grpc::Status&)>& fail) {
  const bool tty = ::isatty(1) != 0 && !as_json;
  auto last_line = std::chrono::steady_clock::time_point();
  v1::TrainingJobState last_state = v1::TRAINING_JOB_STATE_UNSPECIFIED;
  v1::TrainingJob final_job;
  grpc::Status status = client.WatchTrainingJob(job_id, [&](const v1::TrainingJob& job) {
    final_job = job;
    const auto now = std::chrono::steady_clock::now();
    const bool changed = job.state() != last_state;
    last_state = job.state();
    if (as_json) {
      PrintProtoJson(job);
    } else if (tty) {
      const v1::TrainingProgress& p = job.progress();
      const double fraction =
          p.total_steps() > 0 ? static_cast<double>(p.step()) / static_cast<double>(p.total_steps())
                              : 0.0;
      const int filled = static_cast<int>(fraction * 30);
      std::string bar(30, '.');
      for (int i = 0; i < filled && i < 30; ++i) bar[i] = '#';
      std::printf("\r\033[K%s [%s] %3d%% %s", StateName(job.state()), bar.c_str(),
                  static_cast<int>(fraction * 100), ProgressText(job).c_str());
      if (IsFinal(job.state())) std::printf("\n");
      std::fflush(stdout);
    } else if (changed || IsFinal(job.state()) || now - last_line >= std::chrono::seconds(1)) {
      last_line = now;
      std::cout << JobLine(job) << std::endl;
    }
    return true;
  });
  if (!status.ok()) return fail(status);
  if (!as_json) {
    if (final_job.state() == v1::TRAINING_JOB_STATE_SUCCEEDED) {
      std::cout << "adapter " << final_job.result_adapter() << " is ready\n";
    } else if (!final_job.error().empty()) {
      std::cerr << "adapterctl: job " << final_job.job_id() << " " << StateName(final_job.state())
                << ": " << final_job.error_code() << ": " << final_job.error() << "\n";
    }
  }
  return FinalCode(final_job);
}

std::vector<std::string> SplitComma(const std::vector<std::string>& values) {
  std::vector<std::string> out;
  for (const std::string& v : values) {
    size_t start = 0;
    while (start <= v.size()) {
      const size_t comma = v.find(',', start);
      const std::string part =
          v.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
      if (!part.empty()) out.push_back(part);
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
  }
  return out;
}

// A dataset name from a file name: its stem with characters outside
// [A-Za-z0-9._-] replaced.
std::string DatasetNameOf(const std::string& path) {
  std::string name = std::filesystem::path(path).stem().string();
  for (char& c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') c = '_';
  }
  while (!name.empty() && name[0] == '.') name.erase(0, 1);
  return name.empty() ? "dataset" : name.substr(0, 128);
}

}  // namespace

struct TrainingCommands::Flags {
  // datasets
  std::string file;
  std::string name;
  std::string id;
  bool all_tenants = false;
  bool quiet = false;
  // train create
  std::string method = "lora";
  std::string data;
  std::string dataset;
  std::string output;
  std::string init_adapter;
  std::string request_id;
  bool watch = false;
  std::vector<std::string> targets;
  int rank = 0;
  double alpha = 0;
  double dropout = 0;
  bool rslora = false;
  std::string bottleneck_config;
  int reduction_factor = 0;
  std::string activation;
  std::vector<std::string> fuse;
  int virtual_tokens = 0;
  bool no_prefix_projection = false;
  std::string encoder_type;
  int encoder_hidden = 0;
  int encoder_layers = 0;
  std::string init;
  std::string init_text;
  int epochs = 0;
  int64_t steps = 0;
  int batch_size = 0;
  int grad_accum = 0;
  double lr = 0;
  std::string scheduler;
  int64_t warmup_steps = 0;
  double warmup_ratio = 0;
  double weight_decay = 0;
  std::optional<double> max_grad_norm;
  std::optional<uint64_t> seed;
  int max_seq_length = 0;
  double eval_fraction = 0;
  int64_t eval_every = 0;
  std::optional<int64_t> checkpoint_every;
  bool no_shuffle = false;
  bool skip_invalid_rows = false;
  // train list
  std::string state;
  int page_size = 0;
  std::string page_token;
  bool all_pages = false;
};

TrainingCommands::TrainingCommands(CLI::App& app) : flags_(std::make_unique<Flags>()) {
  Flags& f = *flags_;
  datasets_ = app.add_subcommand("datasets", "Manage training datasets (JSONL)");
  datasets_->require_subcommand(1);
  CLI::App* up = datasets_->add_subcommand("upload", "Upload a JSONL dataset");
  up->add_option("file", f.file, "JSONL file: {\"prompt\",\"completion\"} or {\"text\"} rows")
      ->required()
      ->check(CLI::ExistingFile);
  up->add_option("--name", f.name, "Dataset name (default: the file's stem)");
  up->add_flag("--quiet", f.quiet, "No progress on stderr");
  CLI::App* ls = datasets_->add_subcommand("list", "List datasets");
  ls->add_flag("--all-tenants", f.all_tenants, "Every tenant's (admin)");
  CLI::App* del = datasets_->add_subcommand("delete", "Delete a dataset");
  del->add_option("id", f.id, "Dataset id")->required();

  train_ = app.add_subcommand("train", "Fine-tuning jobs");
  train_->require_subcommand(1);
  CLI::App* create = train_->add_subcommand("create", "Create a training job");
  create
      ->add_option("--method", f.method,
                   "lora, bottleneck, fusion, prefix_tuning, p_tuning or prompt_tuning")
      ->check(CLI::IsMember(
          {"lora", "bottleneck", "fusion", "prefix_tuning", "p_tuning", "prompt_tuning"}))
      ->capture_default_str();
  create->add_option("--name", f.output, "Output adapter name (a new version of it)")->required();
  create->add_option("--data", f.data, "Local JSONL file: uploaded first")
      ->check(CLI::ExistingFile);
  create->add_option("--dataset", f.dataset, "Id of an uploaded dataset");
  create->add_option("--init-adapter", f.init_adapter, "Start from this adapter (name[@version])");
  create->add_option("--request-id", f.request_id,
                     "Idempotency key: a retried create with it returns the first job");
  create->add_flag("--watch", f.watch, "Watch the job until it ends");
  create->add_option("--targets", f.targets, "LoRA target modules, comma-separated or all-linear")
      ->delimiter(',');
  create->add_option("--rank", f.rank, "LoRA rank (default 8)");
  create->add_option("--alpha", f.alpha, "LoRA alpha (default 2 × rank)");
  create->add_option("--dropout", f.dropout, "LoRA dropout");
  create->add_flag("--rslora", f.rslora, "rsLoRA scaling alpha/sqrt(r)");
  create->add_option("--bottleneck-config", f.bottleneck_config, "pfeiffer or houlsby");
  create->add_option("--reduction-factor", f.reduction_factor, "Bottleneck reduction factor");
  create->add_option("--activation", f.activation, "Bottleneck activation");
  create->add_option("--fuse", f.fuse, "Fusion: adapters to fuse, comma-separated")->delimiter(',');
  create->add_option("--virtual-tokens", f.virtual_tokens, "Prefix/P-/prompt tuning tokens");
  create->add_flag("--no-prefix-projection", f.no_prefix_projection,
                   "Prefix tuning without the MLP reparameterisation");
  create->add_option("--encoder-type", f.encoder_type, "P-tuning encoder: MLP or LSTM");
  create->add_option("--encoder-hidden", f.encoder_hidden, "Prefix/P-tuning encoder width");
  create->add_option("--encoder-layers", f.encoder_layers, "P-tuning LSTM layers");
  create->add_option("--init", f.init, "Prompt tuning init: RANDOM, SAMPLE_VOCAB or TEXT");
  create->add_option("--init-text", f.init_text, "Prompt tuning init text (with --init TEXT)");
  create->add_option("--epochs", f.epochs, "Epochs (default 1)");
  create->add_option("--steps", f.steps, "Stop after this many optimizer steps");
  create->add_option("--batch-size", f.batch_size, "Rows per micro-batch (default 8)");
  create->add_option("--grad-accum", f.grad_accum, "Micro-batches per step (default 1)");
  create->add_option("--lr", f.lr, "Learning rate (default 1e-4)");
  create->add_option("--scheduler", f.scheduler, "linear, constant or cosine");
  create->add_option("--warmup-steps", f.warmup_steps, "Warmup steps");
  create->add_option("--warmup-ratio", f.warmup_ratio, "Warmup fraction when no steps given");
  create->add_option("--weight-decay", f.weight_decay, "AdamW weight decay");
  create->add_option("--max-grad-norm", f.max_grad_norm, "Clipping (default 1; 0: none)");
  create->add_option("--seed", f.seed, "Seed (default 42)");
  create->add_option("--max-seq-length", f.max_seq_length, "Tokens per row (default 512)");
  create->add_option("--eval-fraction", f.eval_fraction, "Rows held out for eval loss");
  create->add_option("--eval-every", f.eval_every, "Steps between evals (0: at the end)");
  create->add_option("--checkpoint-every", f.checkpoint_every, "Steps between checkpoints");
  create->add_flag("--no-shuffle", f.no_shuffle, "Keep the dataset order");
  create->add_flag("--skip-invalid-rows", f.skip_invalid_rows,
                   "Skip and count malformed lines instead of refusing the dataset");
  CLI::App* get = train_->add_subcommand("get", "Show a job");
  get->add_option("id", f.id, "Job id")->required();
  CLI::App* list = train_->add_subcommand("list", "List jobs, newest first");
  list->add_option("--state", f.state, "Only jobs in this state")
      ->check(CLI::IsMember({"queued", "running", "succeeded", "failed", "cancelled"},
                            CLI::ignore_case));
  list->add_flag("--all-tenants", f.all_tenants, "Every tenant's (admin)");
  list->add_option("--page-size", f.page_size, "Jobs per page (default 50)");
  list->add_option("--page-token", f.page_token, "Page token from a previous list");
  list->add_flag("--all", f.all_pages, "Follow every page");
  CLI::App* cancel = train_->add_subcommand("cancel", "Cancel a job");
  cancel->add_option("id", f.id, "Job id")->required();
  CLI::App* watch = train_->add_subcommand("watch", "Follow a job's progress until it ends");
  watch->add_option("id", f.id, "Job id")->required();
}

TrainingCommands::~TrainingCommands() = default;

bool TrainingCommands::Selected() const { return datasets_->parsed() || train_->parsed(); }

int TrainingCommands::Run(Client& client, bool as_json,
                          const std::function<int(const grpc::Status&)>& fail) {
  Flags& f = *flags_;
  CLI::App* group = datasets_->parsed() ? datasets_ : train_;
  const std::string sub = group->get_subcommands()[0]->get_name();
  auto upload = [&](const std::string& path, const std::string& name,
                    v1::DatasetInfo* info) -> grpc::Status {
    const bool tty = ::isatty(2) != 0 && !f.quiet;
    return client.UploadDataset(
        path, name.empty() ? DatasetNameOf(path) : name, info, [tty](int64_t sent, int64_t total) {
          if (tty) {
            std::fprintf(stderr, "\rupload: %lld/%lld bytes", static_cast<long long>(sent),
                         static_cast<long long>(total));
            if (sent == total) std::fprintf(stderr, "\n");
          }
        });
  };
  auto print_dataset = [as_json](const v1::DatasetInfo& d) {
    if (as_json) {
      PrintProtoJson(d);
    } else {
      std::cout << d.dataset_id() << "  " << d.name() << "  " << d.size_bytes() << " bytes  "
                << d.lines() << " lines  owner " << d.owner() << "\n";
    }
  };

  if (group == datasets_) {
    if (sub == "upload") {
      v1::DatasetInfo info;
      grpc::Status status = upload(f.file, f.name, &info);
      if (!status.ok()) return fail(status);
      print_dataset(info);
    } else if (sub == "list") {
      v1::ListDatasetsRequest request;
      request.set_all_tenants(f.all_tenants);
      do {
        v1::ListDatasetsResponse response;
        grpc::Status status = client.ListDatasets(request, &response);
        if (!status.ok()) return fail(status);
        for (const v1::DatasetInfo& d : response.datasets()) print_dataset(d);
        request.set_page_token(response.next_page_token());
      } while (!request.page_token().empty());
    } else {
      v1::DatasetInfo info;
      grpc::Status status = client.DeleteDataset(f.id, &info);
      if (!status.ok()) return fail(status);
      if (!as_json) std::cout << "deleted ";
      print_dataset(info);
    }
    return 0;
  }

  if (sub == "create") {
    v1::CreateTrainingJobRequest r;
    r.set_output_adapter(f.output);
    if (!f.data.empty() == !f.dataset.empty()) {
      std::cerr << "adapterctl: give either --data FILE or --dataset ID\n";
      return 2;
    }
    if (!f.data.empty()) {
      v1::DatasetInfo info;
      grpc::Status status = upload(f.data, "", &info);
      if (!status.ok()) return fail(status);
      if (!as_json) std::cerr << "dataset " << info.dataset_id() << " uploaded\n";
      r.set_dataset_id(info.dataset_id());
    } else {
      r.set_dataset_id(f.dataset);
    }
    r.set_init_adapter(f.init_adapter);
    r.set_client_request_id(f.request_id);
    if (f.method == "lora") {
      v1::LoraConfig* c = r.mutable_lora();
      for (const std::string& t : SplitComma(f.targets)) c->add_target_modules(t);
      c->set_rank(f.rank);
      c->set_alpha(f.alpha);
      c->set_dropout(f.dropout);
      c->set_use_rslora(f.rslora);
    } else if (f.method == "bottleneck") {
      v1::BottleneckConfig* c = r.mutable_bottleneck();
      c->set_config(f.bottleneck_config);
      c->set_reduction_factor(f.reduction_factor);
      c->set_activation(f.activation);
    } else if (f.method == "fusion") {
      for (const std::string& a : SplitComma(f.fuse)) r.mutable_fusion()->add_adapters(a);
    } else if (f.method == "prefix_tuning") {
      v1::PrefixTuningConfig* c = r.mutable_prefix_tuning();
      c->set_num_virtual_tokens(f.virtual_tokens);
      c->set_no_prefix_projection(f.no_prefix_projection);
      c->set_encoder_hidden_size(f.encoder_hidden);
    } else if (f.method == "p_tuning") {
      v1::PTuningConfig* c = r.mutable_p_tuning();
      c->set_num_virtual_tokens(f.virtual_tokens);
      c->set_encoder_type(f.encoder_type);
      c->set_encoder_hidden_size(f.encoder_hidden);
      c->set_encoder_num_layers(f.encoder_layers);
    } else {
      v1::PromptTuningConfig* c = r.mutable_prompt_tuning();
      c->set_num_virtual_tokens(f.virtual_tokens);
      c->set_init(f.init);
      c->set_init_text(f.init_text);
    }
    v1::Hyperparameters* h = r.mutable_hyperparameters();
    h->set_epochs(f.epochs);
    h->set_max_steps(f.steps);
    h->set_batch_size(f.batch_size);
    h->set_gradient_accumulation(f.grad_accum);
    h->set_learning_rate(f.lr);
    h->set_lr_scheduler(f.scheduler);
    h->set_warmup_steps(f.warmup_steps);
    h->set_warmup_ratio(f.warmup_ratio);
    h->set_weight_decay(f.weight_decay);
    if (f.max_grad_norm) h->set_max_grad_norm(*f.max_grad_norm);
    if (f.seed) h->set_seed(*f.seed);
    h->set_max_seq_length(f.max_seq_length);
    h->set_eval_fraction(f.eval_fraction);
    h->set_eval_every(f.eval_every);
    if (f.checkpoint_every) h->set_checkpoint_every(*f.checkpoint_every);
    h->set_no_shuffle(f.no_shuffle);
    h->set_skip_invalid_rows(f.skip_invalid_rows);
    v1::TrainingJob job;
    grpc::Status status = client.CreateTrainingJob(r, &job);
    if (!status.ok()) return fail(status);
    PrintJob(job, as_json);
    if (f.watch) return Watch(client, job.job_id(), as_json, fail);
    return 0;
  }
  if (sub == "get" || sub == "cancel") {
    v1::TrainingJob job;
    grpc::Status status =
        sub == "get" ? client.GetTrainingJob(f.id, &job) : client.CancelTrainingJob(f.id, &job);
    if (!status.ok()) return fail(status);
    PrintJob(job, as_json);
    return 0;
  }
  if (sub == "watch") return Watch(client, f.id, as_json, fail);
  v1::ListTrainingJobsRequest request;
  request.set_all_tenants(f.all_tenants);
  request.set_page_size(f.page_size);
  request.set_page_token(f.page_token);
  if (!f.state.empty()) {
    std::string upper;
    for (char c : f.state) upper += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    v1::TrainingJobState state;
    if (v1::TrainingJobState_Parse("TRAINING_JOB_STATE_" + upper, &state)) request.set_state(state);
  }
  do {
    v1::ListTrainingJobsResponse response;
    grpc::Status status = client.ListTrainingJobs(request, &response);
    if (!status.ok()) return fail(status);
    for (const v1::TrainingJob& job : response.jobs()) PrintJob(job, as_json);
    request.set_page_token(response.next_page_token());
    if (!f.all_pages && !request.page_token().empty() && !as_json) {
      std::cout << "next page: --page-token " << request.page_token() << "\n";
    }
  } while (f.all_pages && !request.page_token().empty());
  return 0;
}

}  // namespace adapterd::ctl
