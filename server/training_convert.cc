#include "server/training_convert.h"

#include <google/protobuf/util/json_util.h>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "adapters_store/adapter_ref.h"

namespace adapterd {
namespace {

absl::Status Bad(absl::string_view field, absl::string_view rule) {
  return absl::InvalidArgumentError(absl::StrCat(field, " ", rule));
}

absl::Status NonNegative(absl::string_view field, double v) {
  if (!std::isfinite(v) || v < 0) return Bad(field, "must be a finite number >= 0");
  return absl::OkStatus();
}

void SetTime(absl::Time t, google::protobuf::Timestamp* out) {
  const int64_t micros = absl::ToUnixMicros(t);
  out->set_seconds(micros / 1000000);
  out->set_nanos(static_cast<int32_t>(micros % 1000000) * 1000);
}

v1::TrainingJobState StateToProto(JobState state) {
  switch (state) {
    case JobState::kQueued:
      return v1::TRAINING_JOB_STATE_QUEUED;
    case JobState::kRunning:
      return v1::TRAINING_JOB_STATE_RUNNING;
    case JobState::kSucceeded:
      return v1::TRAINING_JOB_STATE_SUCCEEDED;
    case JobState::kFailed:
      return v1::TRAINING_JOB_STATE_FAILED;
    case JobState::kCancelled:
      return v1::TRAINING_JOB_STATE_CANCELLED;
  }
  return v1::TRAINING_JOB_STATE_UNSPECIFIED;
}

}  // namespace

std::string MethodOf(const v1::CreateTrainingJobRequest& request) {
  switch (request.method_case()) {
    case v1::CreateTrainingJobRequest::kLora:
      return "lora";
    case v1::CreateTrainingJobRequest::kBottleneck:
      return "bottleneck";
    case v1::CreateTrainingJobRequest::kFusion:
      return "fusion";
    case v1::CreateTrainingJobRequest::kPrefixTuning:
      return "prefix_tuning";
    case v1::CreateTrainingJobRequest::kPTuning:
      return "p_tuning";
    case v1::CreateTrainingJobRequest::kPromptTuning:
      return "prompt_tuning";
    case v1::CreateTrainingJobRequest::METHOD_NOT_SET:
      break;
  }
  return "";
}

absl::StatusOr<TrainingSpec> TrainingSpecFromProto(const v1::CreateTrainingJobRequest& request) {
  TrainingSpec spec;
  if (absl::Status s = ValidateAdapterName(request.output_adapter()); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("output_adapter: ", s.message()));
  }
  spec.adapter_name = request.output_adapter();
  if (request.dataset_id().empty()) return Bad("dataset_id", "is required");
  switch (request.method_case()) {
    case v1::CreateTrainingJobRequest::kLora: {
      const v1::LoraConfig& c = request.lora();
      spec.method = TrainingMethod::kLora;
      if (c.target_modules_size() > 0) {
        spec.lora.target_modules.assign(c.target_modules().begin(), c.target_modules().end());
      }
      if (c.rank() < 0) return Bad("lora.rank", "must be >= 1");
      if (c.rank() > 0) spec.lora.rank = c.rank();
      if (absl::Status s = NonNegative("lora.alpha", c.alpha()); !s.ok()) return s;
      spec.lora.alpha = c.alpha() > 0 ? c.alpha() : 2.0 * spec.lora.rank;
      if (!(c.dropout() >= 0 && c.dropout() < 1)) return Bad("lora.dropout", "must be in [0, 1)");
      spec.lora.dropout = c.dropout();
      spec.lora.use_rslora = c.use_rslora();
      break;
    }
    case v1::CreateTrainingJobRequest::kBottleneck: {
      const v1::BottleneckConfig& c = request.bottleneck();
      spec.method = TrainingMethod::kBottleneck;
      if (!c.config().empty()) spec.bottleneck.config = c.config();
      if (c.reduction_factor() < 0) return Bad("bottleneck.reduction_factor", "must be >= 1");
      if (c.reduction_factor() > 0) spec.bottleneck.reduction_factor = c.reduction_factor();
      spec.bottleneck.activation = c.activation();
      if (!c.init_weights().empty()) spec.bottleneck.init_weights = c.init_weights();
      break;
    }
    case v1::CreateTrainingJobRequest::kFusion:
      spec.method = TrainingMethod::kFusion;
      if (request.fusion().adapters_size() < 2) {
        return Bad("fusion.adapters", "needs two or more adapters");
      }
      break;
    case v1::CreateTrainingJobRequest::kPrefixTuning: {
      const v1::PrefixTuningConfig& c = request.prefix_tuning();
      spec.method = TrainingMethod::kPrefixTuning;
      if (c.num_virtual_tokens() < 0 || c.encoder_hidden_size() < 0) {
        return Bad("prefix_tuning", "sizes must be >= 0");
      }
      if (c.num_virtual_tokens() > 0) spec.prefix.num_virtual_tokens = c.num_virtual_tokens();
      spec.prefix.prefix_projection = !c.no_prefix_projection();
      spec.prefix.encoder_hidden_size = c.encoder_hidden_size();
      break;
    }
    case v1::CreateTrainingJobRequest::kPTuning: {
      const v1::PTuningConfig& c = request.p_tuning();
      spec.method = TrainingMethod::kPTuning;
      if (c.num_virtual_tokens() < 0 || c.encoder_hidden_size() < 0 || c.encoder_num_layers() < 0) {
        return Bad("p_tuning", "sizes must be >= 0");
      }
      if (c.num_virtual_tokens() > 0) spec.p_tuning.num_virtual_tokens = c.num_virtual_tokens();
      if (!c.encoder_type().empty()) spec.p_tuning.encoder_type = c.encoder_type();
      spec.p_tuning.encoder_hidden_size = c.encoder_hidden_size();
      if (c.encoder_num_layers() > 0) spec.p_tuning.encoder_num_layers = c.encoder_num_layers();
      if (!(c.encoder_dropout() >= 0 && c.encoder_dropout() < 1)) {
        return Bad("p_tuning.encoder_dropout", "must be in [0, 1)");
      }
      spec.p_tuning.encoder_dropout = c.encoder_dropout();
      break;
    }
    case v1::CreateTrainingJobRequest::kPromptTuning: {
      const v1::PromptTuningConfig& c = request.prompt_tuning();
      spec.method = TrainingMethod::kPromptTuning;
      if (c.num_virtual_tokens() < 0)
        return Bad("prompt_tuning.num_virtual_tokens", "must be >= 0");
      if (c.num_virtual_tokens() > 0) {
        spec.prompt_tuning.num_virtual_tokens = c.num_virtual_tokens();
      }
      if (!c.init().empty()) spec.prompt_tuning.init = c.init();
      spec.prompt_tuning.init_text = c.init_text();
      break;
    }
    case v1::CreateTrainingJobRequest::METHOD_NOT_SET:
      return Bad("method",
                 "is required: one of lora, bottleneck, fusion, prefix_tuning, p_tuning, "
                 "prompt_tuning");
  }

  const v1::Hyperparameters& h = request.hyperparameters();
  TrainingHyperparams& hp = spec.hyper;
  if (h.epochs() < 0 || h.max_steps() < 0 || h.batch_size() < 0 || h.gradient_accumulation() < 0 ||
      h.warmup_steps() < 0 || h.max_seq_length() < 0 || h.eval_every() < 0 ||
      (h.has_checkpoint_every() && h.checkpoint_every() < 0)) {
    return Bad("hyperparameters", "counts must be >= 0");
  }
  if (h.epochs() > 0) hp.epochs = h.epochs();
  hp.max_steps = h.max_steps();
  if (h.batch_size() > 0) hp.batch_size = h.batch_size();
  if (h.gradient_accumulation() > 0) hp.gradient_accumulation = h.gradient_accumulation();
  if (absl::Status s = NonNegative("hyperparameters.learning_rate", h.learning_rate()); !s.ok()) {
    return s;
  }
  if (h.learning_rate() > 0) hp.learning_rate = h.learning_rate();
  if (!h.lr_scheduler().empty()) hp.lr_scheduler = h.lr_scheduler();
  hp.warmup_steps = h.warmup_steps();
  if (!(h.warmup_ratio() >= 0 && h.warmup_ratio() <= 1)) {
    return Bad("hyperparameters.warmup_ratio", "must be in [0, 1]");
  }
  hp.warmup_ratio = h.warmup_ratio();
  if (absl::Status s = NonNegative("hyperparameters.weight_decay", h.weight_decay()); !s.ok()) {
    return s;
  }
  hp.weight_decay = h.weight_decay();
  if (h.has_max_grad_norm()) {
    if (absl::Status s = NonNegative("hyperparameters.max_grad_norm", h.max_grad_norm()); !s.ok()) {
      return s;
    }
    hp.max_grad_norm = h.max_grad_norm();
  }
  if (h.has_seed()) hp.seed = h.seed();
  if (h.max_seq_length() > 0) hp.max_seq_length = h.max_seq_length();
  if (!(h.eval_fraction() >= 0 && h.eval_fraction() <= 0.5)) {
    return Bad("hyperparameters.eval_fraction", "must be in [0, 0.5]");
  }
  hp.eval_fraction = h.eval_fraction();
  hp.eval_every = h.eval_every();
  if (h.has_checkpoint_every()) hp.checkpoint_every = h.checkpoint_every();
  hp.shuffle = !h.no_shuffle();
  spec.dataset_options.skip_invalid_rows = h.skip_invalid_rows();
  return spec;
}

std::string SerializeRequest(const v1::CreateTrainingJobRequest& request) {
  std::string out;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  static_cast<void>(google::protobuf::util::MessageToJsonString(request, &out, options));
  return out;
}

absl::StatusOr<v1::CreateTrainingJobRequest> ParseRequest(const std::string& text) {
  v1::CreateTrainingJobRequest request;
  if (!google::protobuf::util::JsonStringToMessage(text, &request).ok()) {
    return absl::DataLossError("the stored job spec cannot be read");
  }
  return request;
}

std::string SerializeReport(const DatasetReport& report) {
  v1::DatasetReport r;
  r.set_lines(report.lines);
  r.set_rows_used(report.rows_used);
  r.set_train_rows(report.train_rows);
  r.set_eval_rows(report.eval_rows);
  r.set_skipped_malformed(report.skipped_malformed);
  r.set_skipped_empty(report.skipped_empty);
  r.set_truncated(report.truncated);
  r.set_skipped_too_long(report.skipped_too_long);
  r.set_tokens(report.tokens);
  for (const std::string& e : report.first_errors) r.add_first_errors(e);
  std::string out;
  static_cast<void>(google::protobuf::util::MessageToJsonString(r, &out));
  return out;
}

void JobToProto(const JobRecord& job, v1::TrainingJob* out) {
  out->set_job_id(job.id);
  out->set_owner(job.owner);
  out->set_state(StateToProto(job.state));
  out->set_method(job.method);
  out->set_output_adapter(job.output_name);
  out->set_dataset_id(job.dataset_id);
  SetTime(job.created_at, out->mutable_created_at());
  if (job.started_at != absl::UnixEpoch()) SetTime(job.started_at, out->mutable_started_at());
  if (job.finished_at != absl::UnixEpoch()) SetTime(job.finished_at, out->mutable_finished_at());
  v1::TrainingProgress* p = out->mutable_progress();
  p->set_phase(static_cast<v1::TrainingPhase>(job.progress.phase + 1));
  p->set_step(job.progress.step);
  p->set_total_steps(job.progress.total_steps);
  p->set_epoch(job.progress.epoch);
  p->set_loss(job.progress.loss);
  p->set_eval_loss(job.progress.eval_loss);
  p->set_learning_rate(job.progress.learning_rate);
  p->set_tokens_per_second(job.progress.tokens_per_second);
  p->set_eta_seconds(job.progress.eta_seconds);
  p->set_tokens_seen(job.progress.tokens_seen);
  p->set_resumed_from_step(job.progress.resumed_from_step);
  if (!job.dataset_report.empty()) {
    static_cast<void>(google::protobuf::util::JsonStringToMessage(job.dataset_report,
                                                                  out->mutable_dataset_report()));
  }
  if (job.state == JobState::kSucceeded) {
    out->set_result_adapter(absl::StrCat(job.result_adapter, "@", job.result_version));
    out->set_result_version(job.result_version);
  }
  out->set_error_code(job.error_code);
  out->set_error(job.error);
  absl::StatusOr<v1::CreateTrainingJobRequest> request = ParseRequest(job.spec);
  if (request.ok()) *out->mutable_request() = *std::move(request);
  out->set_cancel_requested(job.cancel_requested);
  out->set_attempts(job.attempts);
}

void DatasetToProto(const DatasetRecord& dataset, v1::DatasetInfo* out) {
  out->set_dataset_id(dataset.id);
  out->set_name(dataset.name);
  out->set_size_bytes(dataset.size);
  out->set_sha256(dataset.sha256);
  out->set_lines(dataset.lines);
  out->set_owner(dataset.owner);
  SetTime(dataset.created_at, out->mutable_created_at());
}

}  // namespace adapterd
