#pragma once

// adapterctl's training commands:
//   adapterctl datasets upload FILE [--name N] | list [--all-tenants] | delete ID
//   adapterctl train create --method M [method and hyperparameter flags]
//                           (--data FILE.jsonl | --dataset ID) --name OUT [--watch]
//   adapterctl train get ID | list [--state S] [--all] | cancel ID | watch ID
// `train watch` (and create --watch) draws a one-line progress bar on a TTY,
// prints a plain line per second (and per state change) otherwise, and one
// JSON object per update with --json; it exits 0 when the job SUCCEEDED and
// 1 when it FAILED or was CANCELLED.

#include <CLI/CLI.hpp>
#include <functional>
#include <memory>

#include "client/client.h"

namespace adapterd::ctl {

// Adds the `datasets` and `train` subcommands to `app`. The returned object
// holds the parsed flags; it must outlive the parse.
class TrainingCommands {
 public:
  explicit TrainingCommands(CLI::App& app);
  ~TrainingCommands();

  // True if one of the commands was given on the command line.
  bool Selected() const;
  // Runs the selected command; returns the process exit code. `fail` prints
  // an RPC error the way every adapterctl command does and returns its code.
  int Run(Client& client, bool as_json, const std::function<int(const grpc::Status&)>& fail);

 private:
  struct Flags;
  std::unique_ptr<Flags> flags_;
  CLI::App* datasets_;
  CLI::App* train_;
};

}  // namespace adapterd::ctl
