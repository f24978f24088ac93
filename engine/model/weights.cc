#include "engine/model/weights.h"

#include <ATen/ATen.h>
#include <sys/stat.h>

#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"

namespace adapterd {
namespace {

std::string CanonicalName(const std::string& name) {
  for (const char* prefix : {"model.", "transformer."}) {
    if (absl::StartsWith(name, prefix)) return name.substr(std::strlen(prefix));
  }
  return name;
}

absl::StatusOr<at::ScalarType> SourceType(const std::string& dtype) {
  if (dtype == "F32") return at::kFloat;
  if (dtype == "F16") return at::kHalf;
  if (dtype == "BF16") return at::kBFloat16;
  if (dtype == "F64") return at::kDouble;
  return absl::InvalidArgumentError(dtype);
}

}  // namespace

absl::StatusOr<std::unique_ptr<ModelWeights>> ModelWeights::Open(const std::string& dir) {
  auto exists = [](const std::string& path) {
    struct stat st;
    return ::stat(path.c_str(), &st) == 0;
  };
  const std::string root = dir + "/";
  std::vector<std::string> names;
  if (exists(root + "model.safetensors")) {
    names.push_back("model.safetensors");
  } else if (exists(root + "model.safetensors.index.json")) {
    const std::string index_path = root + "model.safetensors.index.json";
    std::ifstream in(index_path, std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    const std::string s = text.str();
    nlohmann::json index = nlohmann::json::parse(s, nullptr, /*allow_exceptions=*/false);
    if (index.is_discarded() || !index.is_object() || !index.contains("weight_map") ||
        !index["weight_map"].is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": not a JSON object with a \"weight_map\" object"));
    }
    std::set<std::string> shards;
    for (const auto& [tensor, file] : index["weight_map"].items()) {
      if (!file.is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat(index_path, ": weight_map entry for '", tensor, "' is not a string"));
      }
      const std::string shard = file.get<std::string>();
      if (shard.empty() || shard.find('/') != std::string::npos || shard == "." || shard == "..") {
        return absl::InvalidArgumentError(
            absl::StrCat(index_path, ": bad shard file name '", shard, "'"));
      }
      shards.insert(shard);
    }
    names.assign(shards.begin(), shards.end());
  } else {
    return absl::NotFoundError(
        absl::StrCat("no model.safetensors or model.safetensors.index.json in ", dir));
  }

  std::unique_ptr<ModelWeights> weights(new ModelWeights());
  for (const std::string& name : names) {
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(root + name);
    if (!file.ok()) return file.status();
    weights->files_.push_back(*std::move(file));
  }
  for (const auto& file : weights->files_) {
    for (const SafetensorsTensorInfo& info : file->tensors()) {
      const std::string canonical = CanonicalName(info.name);
      if (!weights->index_.emplace(canonical, Entry{file.get(), &info}).second) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor '", canonical, "' is stored twice in ", dir));
      }
    }
  }
  return weights;
}

absl::StatusOr<at::Tensor> ModelWeights::Get(const std::string& name,
                                             const std::vector<int64_t>& shape,
                                             at::ScalarType dtype, at::Device device) const {
  auto it = index_.find(name);
  if (it == index_.end()) {
    return absl::InvalidArgumentError(absl::StrCat("missing tensor '", name, "'"));
  }
  const SafetensorsTensorInfo& info = *it->second.info;
  if (info.shape != shape) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", info.name, "' has shape [",
                                                   absl::StrJoin(info.shape, ", "), "], expected [",
                                                   absl::StrJoin(shape, ", "), "]"));
  }
  absl::StatusOr<at::ScalarType> source = SourceType(info.dtype);
  if (!source.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", info.name, "' has dtype ",
                                                   info.dtype, "; expected F32, F16 or BF16"));
  }
  at::Tensor t = at::empty(shape, at::TensorOptions().dtype(*source));
  const std::string_view bytes = it->second.file->Data(info);
  if (!bytes.empty()) std::memcpy(t.data_ptr(), bytes.data(), bytes.size());
  return t.to(device, dtype).contiguous();
}

at::Tensor TensorLoader::operator()(const std::string& name, const std::vector<int64_t>& shape) {
  if (!status_.ok()) return at::Tensor();
  absl::StatusOr<at::Tensor> t = weights_.Get(name, shape, dtype_, device_);
  if (!t.ok()) {
    status_ = t.status();
    return at::Tensor();
  }
  return *std::move(t);
}

}  // namespace adapterd
