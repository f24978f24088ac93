#include "server/training_convert.h"

#include <cmath>

#include "gtest/gtest.h"

namespace adapterd {
namespace {

v1::CreateTrainingJobRequest Minimal() {
  v1::CreateTrainingJobRequest r;
  r.set_output_adapter("out");
  r.set_dataset_id("ds_1");
  r.mutable_lora();
  return r;
}

TEST(TrainingConvertTest, ZeroFieldsTakeTheEnginesDefaults) {
  absl::StatusOr<TrainingSpec> spec = TrainingSpecFromProto(Minimal());
  ASSERT_TRUE(spec.ok()) << spec.status();
  const TrainingSpec defaults;
  EXPECT_EQ(spec->method, TrainingMethod::kLora);
  EXPECT_EQ(spec->lora.target_modules, defaults.lora.target_modules);
  EXPECT_EQ(spec->lora.rank, 8);
  EXPECT_EQ(spec->lora.alpha, 16);  // 2 × rank.
  EXPECT_EQ(spec->hyper.epochs, defaults.hyper.epochs);
  EXPECT_EQ(spec->hyper.batch_size, defaults.hyper.batch_size);
  EXPECT_EQ(spec->hyper.learning_rate, defaults.hyper.learning_rate);
  EXPECT_EQ(spec->hyper.max_grad_norm, 1.0);
  EXPECT_EQ(spec->hyper.seed, 42u);
  EXPECT_EQ(spec->hyper.checkpoint_every, 100);
  EXPECT_TRUE(spec->hyper.shuffle);
  EXPECT_FALSE(spec->dataset_options.skip_invalid_rows);
}

TEST(TrainingConvertTest, SetFieldsReachTheSpecIncludingExplicitZeros) {
  v1::CreateTrainingJobRequest r = Minimal();
  r.mutable_prompt_tuning()->set_num_virtual_tokens(12);
  r.mutable_prompt_tuning()->set_init("TEXT");
  r.mutable_prompt_tuning()->set_init_text("Classify:");
  v1::Hyperparameters* h = r.mutable_hyperparameters();
  h->set_epochs(3);
  h->set_max_steps(7);
  h->set_learning_rate(0.03);
  h->set_max_grad_norm(0);
  h->set_seed(0);
  h->set_checkpoint_every(0);
  h->set_no_shuffle(true);
  h->set_skip_invalid_rows(true);
  absl::StatusOr<TrainingSpec> spec = TrainingSpecFromProto(r);
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->method, TrainingMethod::kPromptTuning);
  EXPECT_EQ(spec->prompt_tuning.num_virtual_tokens, 12);
  EXPECT_EQ(spec->prompt_tuning.init_text, "Classify:");
  EXPECT_EQ(spec->hyper.max_steps, 7);
  EXPECT_EQ(spec->hyper.learning_rate, 0.03);
  EXPECT_EQ(spec->hyper.max_grad_norm, 0);
  EXPECT_EQ(spec->hyper.seed, 0u);
  EXPECT_EQ(spec->hyper.checkpoint_every, 0);
  EXPECT_FALSE(spec->hyper.shuffle);
  EXPECT_TRUE(spec->dataset_options.skip_invalid_rows);
  EXPECT_EQ(MethodOf(r), "prompt_tuning");
}

TEST(TrainingConvertTest, BadRequestsNameTheField) {
  auto code_and_message = [](v1::CreateTrainingJobRequest r) {
    absl::StatusOr<TrainingSpec> spec = TrainingSpecFromProto(r);
    EXPECT_EQ(spec.status().code(), absl::StatusCode::kInvalidArgument);
    return std::string(spec.status().message());
  };
  v1::CreateTrainingJobRequest r = Minimal();
  r.clear_lora();
  EXPECT_NE(code_and_message(r).find("method"), std::string::npos);
  r = Minimal();
  r.set_output_adapter("a/b");
  EXPECT_NE(code_and_message(r).find("output_adapter"), std::string::npos);
  r = Minimal();
  r.set_dataset_id("");
  EXPECT_NE(code_and_message(r).find("dataset_id"), std::string::npos);
  r = Minimal();
  r.mutable_hyperparameters()->set_learning_rate(NAN);
  EXPECT_NE(code_and_message(r).find("learning_rate"), std::string::npos);
  r = Minimal();
  r.mutable_hyperparameters()->set_eval_fraction(0.9);
  EXPECT_NE(code_and_message(r).find("eval_fraction"), std::string::npos);
  r = Minimal();
  r.mutable_lora()->set_dropout(1);
  EXPECT_NE(code_and_message(r).find("dropout"), std::string::npos);
}

TEST(TrainingConvertTest, AJobRecordRoundTripsThroughItsStoredForms) {
  v1::CreateTrainingJobRequest request = Minimal();
  request.mutable_hyperparameters()->set_seed(7);
  JobRecord job;
  job.id = "job_1";
  job.owner = "t";
  job.state = JobState::kSucceeded;
  job.method = "lora";
  job.output_name = "out";
  job.result_adapter = "out";
  job.result_version = 3;
  job.spec = SerializeRequest(request);
  DatasetReport report;
  report.rows_used = 9;
  report.first_errors = {"line 2: bad"};
  job.dataset_report = SerializeReport(report);
  job.progress.step = 5;
  job.created_at = absl::FromUnixSeconds(1000);
  v1::TrainingJob out;
  JobToProto(job, &out);
  EXPECT_EQ(out.state(), v1::TRAINING_JOB_STATE_SUCCEEDED);
  EXPECT_EQ(out.result_adapter(), "out@3");
  EXPECT_EQ(out.request().hyperparameters().seed(), 7u);
  EXPECT_TRUE(out.request().hyperparameters().has_seed());
  EXPECT_EQ(out.dataset_report().rows_used(), 9);
  EXPECT_EQ(out.dataset_report().first_errors(0), "line 2: bad");
  EXPECT_EQ(out.progress().step(), 5);
  EXPECT_TRUE(std::isnan(out.progress().loss()));
  EXPECT_EQ(out.created_at().seconds(), 1000);
  EXPECT_FALSE(out.has_started_at());
  EXPECT_EQ(ParseRequest("{not json").status().code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace adapterd
