#include "adapters_store/format_check.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "adapters_store/adapter_ref.h"
#include "adapters_store/file_util.h"

namespace adapterd {
namespace {

using json = nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr size_t kMaxConfigBytes = 1 << 20;

// Bits per element of the dtypes adapter weights may use.
int FloatDtypeBits(const std::string& dtype) {
  if (dtype == "F64") return 64;
  if (dtype == "F32") return 32;
  if (dtype == "F16" || dtype == "BF16") return 16;
  return 0;
}

absl::Status Bad(absl::string_view file, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(file, ": ", what));
}

bool FileExists(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0;
}

}  // namespace

absl::StatusOr<std::string> AdapterMethodFromConfig(absl::string_view config_json) {
  const json config = json::parse(config_json.begin(), config_json.end(), nullptr,
                                  /*allow_exceptions=*/false);
  if (config.is_discarded() || !config.is_object()) {
    return Bad(kAdapterConfigFile, "not a JSON object");
  }
  if (auto it = config.find("peft_type"); it != config.end()) {
    if (!it->is_string()) return Bad(kAdapterConfigFile, "peft_type is not a string");
    const std::string type = it->get<std::string>();
    if (type == "LORA") return std::string("lora");
    if (type == "PREFIX_TUNING") return std::string("prefix_tuning");
    if (type == "P_TUNING") return std::string("p_tuning");
    if (type == "PROMPT_TUNING") return std::string("prompt_tuning");
    return Bad(kAdapterConfigFile, absl::StrCat("unsupported peft_type \"", type, "\""));
  }
  if (auto it = config.find("config"); it != config.end() && it->is_object()) {
    const json& inner = *it;
    auto arch = inner.find("architecture");
    if (arch == inner.end() || arch->is_null()) return std::string("bottleneck");
    if (!arch->is_string()) return Bad(kAdapterConfigFile, "config.architecture is not a string");
    const std::string a = arch->get<std::string>();
    if (a == "lora" || a == "prefix_tuning" || a == "prompt_tuning") return a;
    return Bad(kAdapterConfigFile, absl::StrCat("unsupported AdapterHub architecture \"", a, "\""));
  }
  return Bad(kAdapterConfigFile,
             "names no adapter method (no peft_type, no AdapterHub \"config\" object)");
}

absl::Status CheckSafetensorsFile(const std::string& path) {
  const std::string file = path.substr(path.rfind('/') + 1);
  const int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return Bad(file, "missing");
    return StorageError(absl::StrCat("open ", path), errno);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return Bad(file, "not a regular file");
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  uint8_t length_bytes[8];
  if (file_size < 8 || ::pread(fd, length_bytes, 8, 0) != 8) {
    ::close(fd);
    return Bad(file, "shorter than the 8-byte header length");
  }
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | length_bytes[i];
  if (header_size == 0 || header_size > kMaxHeaderBytes) {
    ::close(fd);
    return Bad(file, "header length out of range");
  }
  if (header_size > file_size - 8) {
    ::close(fd);
    return Bad(file, "header length exceeds the file size");
  }
  std::string header(header_size, '\0');
  const ssize_t got = ::pread(fd, header.data(), header_size, 8);
  ::close(fd);
  if (got != static_cast<ssize_t>(header_size)) return Bad(file, "cannot read the header");

  const json j = json::parse(header, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return Bad(file, "header is not a JSON object");
  struct Range {
    uint64_t begin, end;
    std::string name;
  };
  std::vector<Range> ranges;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it->is_object()) return Bad(file, "__metadata__ is not an object");
      for (const auto& [k, v] : it->items()) {
        if (!v.is_string()) return Bad(file, "__metadata__ values must be strings");
      }
      continue;
    }
    const json& t = it.value();
    const std::string& name = it.key();
    if (!t.is_object() || !t.contains("dtype") || !t.contains("shape") ||
        !t.contains("data_offsets")) {
      return Bad(file, absl::StrCat("tensor ", name, " lacks dtype, shape or data_offsets"));
    }
    if (!t["dtype"].is_string()) return Bad(file, absl::StrCat("tensor ", name, ": bad dtype"));
    const int bits = FloatDtypeBits(t["dtype"].get<std::string>());
    if (bits == 0) {
      return Bad(file, absl::StrCat("tensor ", name, ": dtype ", t["dtype"].get<std::string>(),
                                    " is not accepted (F32, F16, BF16, F64)"));
    }
    if (!t["shape"].is_array()) return Bad(file, absl::StrCat("tensor ", name, ": bad shape"));
    unsigned __int128 elements = 1;
    for (const json& d : t["shape"]) {
      if (!d.is_number_unsigned()) return Bad(file, absl::StrCat("tensor ", name, ": bad shape"));
      elements *= d.get<uint64_t>();
      if (elements > (unsigned __int128)1 << 62) {
        return Bad(file, absl::StrCat("tensor ", name, ": shape too large"));
      }
    }
    const json& off = t["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
        !off[1].is_number_unsigned()) {
      return Bad(file, absl::StrCat("tensor ", name, ": bad data_offsets"));
    }
    const uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
    if (begin > end) return Bad(file, absl::StrCat("tensor ", name, ": begin > end"));
    if (static_cast<unsigned __int128>(end - begin) * 8 != elements * bits) {
      return Bad(file, absl::StrCat("tensor ", name, ": byte size does not match its shape"));
    }
    ranges.push_back({begin, end, name});
  }
  if (ranges.empty()) return Bad(file, "holds no tensor");
  std::sort(ranges.begin(), ranges.end(),
            [](const Range& a, const Range& b) { return a.begin < b.begin; });
  uint64_t expected = 0;
  for (const Range& r : ranges) {
    if (r.begin != expected) {
      return Bad(file, absl::StrCat("tensor ", r.name, ": offsets leave a gap or overlap"));
    }
    expected = r.end;
  }
  if (expected != file_size - 8 - header_size) {
    return Bad(file, "data size does not match the tensors (truncated or trailing bytes)");
  }
  return absl::OkStatus();
}

absl::StatusOr<AdapterMeta> CheckAdapterFormat(const std::string& dir) {
  std::string config;
  const std::string config_path = absl::StrCat(dir, "/", kAdapterConfigFile);
  struct stat st;
  if (::lstat(config_path.c_str(), &st) != 0) return Bad(kAdapterConfigFile, "missing");
  if (!S_ISREG(st.st_mode) || st.st_size > static_cast<off_t>(kMaxConfigBytes)) {
    return Bad(kAdapterConfigFile, "not a regular file of at most 1 MiB");
  }
  if (absl::Status s = ReadFile(config_path, &config); !s.ok()) return s;
  absl::StatusOr<std::string> method = AdapterMethodFromConfig(config);
  if (!method.ok()) return method.status();
  const bool peft = json::parse(config, nullptr, false).contains("peft_type");
  const std::string weights = peft ? kPeftWeightsFile : kAdapterHubWeightsFile;
  const std::string weights_path = absl::StrCat(dir, "/", weights);
  if (!FileExists(weights_path)) return Bad(weights, "missing");
  if (absl::Status s = CheckSafetensorsFile(weights_path); !s.ok()) return s;
  AdapterMeta meta;
  meta.method = *method;
  return meta;
}

}  // namespace adapterd
