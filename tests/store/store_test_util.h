#pragma once

// Helpers for the store tests: a fresh temp directory per test and small
// adapters (a PEFT LoRA config plus a safetensors file of random non-zero
// weights) in memory or on disk.

#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "adapters_store/adapter_store.h"
#include "adapters_store/format_check.h"
#include "common/sha256.h"
#include "gtest/gtest.h"

namespace adapterd::testing {

class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "store_test_XXXXXX").string();
    path_ = ::mkdtemp(pattern.data());
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& rel) const { return path_ + "/" + rel; }

 private:
  std::string path_;
};

// A safetensors file with one F32 tensor per (name, shape), random non-zero values.
inline std::string MakeSafetensors(const std::map<std::string, std::vector<int64_t>>& tensors,
                                   uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(0.1f, 1.0f);
  nlohmann::json header = nlohmann::json::object();
  std::string data;
  for (const auto& [name, shape] : tensors) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    const uint64_t begin = data.size();
    for (int64_t i = 0; i < n; ++i) {
      float v = dist(rng) * ((rng() & 1) ? 1.0f : -1.0f);
      data.append(reinterpret_cast<const char*>(&v), 4);
    }
    header[name] = {{"dtype", "F32"}, {"shape", shape}, {"data_offsets", {begin, data.size()}}};
  }
  std::string h = header.dump();
  while (h.size() % 8 != 0) h.push_back(' ');
  std::string out(8, '\0');
  const uint64_t len = h.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((len >> (8 * i)) & 0xff);
  return out + h + data;
}

inline std::string LoraConfig(int r = 4) {
  return nlohmann::json{{"peft_type", "LORA"},
                        {"r", r},
                        {"lora_alpha", 8},
                        {"target_modules", {"q_proj", "v_proj"}},
                        {"base_model_name_or_path", "tiny"}}
      .dump();
}

// The files of a small LoRA adapter, by file name.
inline std::map<std::string, std::string> LoraFiles(uint64_t seed, int r = 4, int width = 16) {
  return {
      {"adapter_config.json", LoraConfig(r)},
      {"adapter_model.safetensors",
       MakeSafetensors({{"base_model.model.layers.0.self_attn.q_proj.lora_A.weight", {r, width}},
                        {"base_model.model.layers.0.self_attn.q_proj.lora_B.weight", {width, r}}},
                       seed)}};
}

inline void WriteFiles(const std::string& dir, const std::map<std::string, std::string>& files) {
  std::filesystem::create_directories(dir);
  for (const auto& [name, data] : files) {
    std::ofstream(dir + "/" + name, std::ios::binary) << data;
  }
}

inline UploadSpec SpecFor(const std::string& owner, const std::string& name,
                          const std::map<std::string, std::string>& files, int64_t version = 0) {
  UploadSpec spec;
  spec.owner = owner;
  spec.name = name;
  spec.version = version;
  for (const auto& [file, data] : files) {
    spec.files.push_back({file, static_cast<int64_t>(data.size()), Sha256::Hex(data)});
  }
  return spec;
}

inline StoreOptions OptionsAt(const std::string& root) {
  StoreOptions options;
  options.root = root;
  options.validator = CheckAdapterFormat;
  return options;
}

// Begin → append in chunks of `chunk` bytes → commit.
inline absl::StatusOr<AdapterRecord> Upload(AdapterStore& store, const UploadSpec& spec,
                                            const std::map<std::string, std::string>& files,
                                            size_t chunk = 7) {
  absl::StatusOr<std::string> id = store.BeginUpload(spec);
  if (!id.ok()) return id.status();
  for (const auto& [name, data] : files) {
    for (size_t off = 0; off < data.size(); off += chunk) {
      absl::Status s = store.AppendUpload(*id, name, static_cast<int64_t>(off),
                                          absl::string_view(data).substr(off, chunk));
      if (!s.ok()) return s;
    }
  }
  return store.CommitUpload(*id);
}

// Every regular file under `dir`, relative, sorted.
// Retries when a concurrent writer changes the tree mid-walk.
inline std::vector<std::string> FilesUnder(const std::string& dir) {
  for (int attempt = 0;; ++attempt) {
    std::vector<std::string> out;
    try {
      if (!std::filesystem::exists(dir)) return out;
      for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
        if (e.is_regular_file()) out.push_back(std::filesystem::relative(e.path(), dir).string());
      }
    } catch (const std::filesystem::filesystem_error&) {
      if (attempt < 100) continue;
      throw;
    }
    std::sort(out.begin(), out.end());
    return out;
  }
}

}  // namespace adapterd::testing
