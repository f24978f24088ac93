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

constexpr uint32_t kK[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

uint32_t Rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

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

Sha256::Sha256()
    : h_{0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
         0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19} {}

void Sha256::Block(const uint8_t* p) {
  uint32_t w[64];
  for (int i = 0; i < 16; ++i) {
    w[i] = (uint32_t{p[4 * i]} << 24) | (uint32_t{p[4 * i + 1]} << 16) |
           (uint32_t{p[4 * i + 2]} << 8) | uint32_t{p[4 * i + 3]};
  }
  for (int i = 16; i < 64; ++i) {
    uint32_t s0 = Rotr(w[i - 15], 7) ^ Rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
    uint32_t s1 = Rotr(w[i - 2], 17) ^ Rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  uint32_t a = h_[0], b = h_[1], c = h_[2], d = h_[3], e = h_[4], f = h_[5], g = h_[6], h = h_[7];
  for (int i = 0; i < 64; ++i) {
    uint32_t t1 =
        h + (Rotr(e, 6) ^ Rotr(e, 11) ^ Rotr(e, 25)) + ((e & f) ^ (~e & g)) + kK[i] + w[i];
    uint32_t t2 = (Rotr(a, 2) ^ Rotr(a, 13) ^ Rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
    h = g;
    g = f;
    f = e;
    e = d + t1;
    d = c;
    c = b;
    b = a;
    a = t1 + t2;
  }
  h_[0] += a;
  h_[1] += b;
  h_[2] += c;
  h_[3] += d;
  h_[4] += e;
  h_[5] += f;
  h_[6] += g;
  h_[7] += h;
}

void Sha256::Update(std::string_view data) {
  total_ += data.size();
  for (char ch : data) {
    buffer_[buffered_++] = static_cast<uint8_t>(ch);
    if (buffered_ == 64) {
      Block(buffer_);
      buffered_ = 0;
    }
  }
}

std::string Sha256::HexDigest() {
  const uint64_t bits = total_ * 8;
  buffer_[buffered_++] = 0x80;
  if (buffered_ > 56) {
    while (buffered_ < 64) buffer_[buffered_++] = 0;
    Block(buffer_);
    buffered_ = 0;
  }
  while (buffered_ < 56) buffer_[buffered_++] = 0;
  for (int i = 7; i >= 0; --i) buffer_[buffered_++] = static_cast<uint8_t>(bits >> (8 * i));
  Block(buffer_);
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (uint32_t v : h_) {
    for (int i = 28; i >= 0; i -= 4) out.push_back(kHex[(v >> i) & 0xf]);
  }
  return out;
}

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
