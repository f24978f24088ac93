#include "engine/model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace adapterd {
namespace {

using nlohmann::json;

constexpr uint64_t kMaxHeaderSize = 100'000'000;  // The Rust crate's MAX_HEADER_SIZE.

struct DtypeBits {
  std::string_view name;
  int bits;
};

constexpr DtypeBits kDtypes[] = {
    {"BOOL", 8},    {"U8", 8},          {"I8", 8},          {"I16", 16},    {"U16", 16},
    {"F16", 16},    {"BF16", 16},       {"I32", 32},        {"U32", 32},    {"F32", 32},
    {"F64", 64},    {"I64", 64},        {"U64", 64},        {"F8_E5M2", 8}, {"F8_E4M3", 8},
    {"F8_E8M0", 8}, {"F8_E4M3FNUZ", 8}, {"F8_E5M2FNUZ", 8}, {"F4", 4},      {"F6_E2M3", 6},
    {"F6_E3M2", 6}, {"C64", 64},
};

absl::Status Invalid(const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("invalid safetensors: ", what));
}

// Parses one tensor entry of the header.
absl::Status ParseTensorInfo(const std::string& name, const json& entry,
                             SafetensorsTensorInfo* info) {
  info->name = name;
  if (!entry.is_object()) {
    return Invalid(absl::StrCat("entry for tensor '", name, "' is not an object"));
  }
  auto dtype = entry.find("dtype");
  auto shape = entry.find("shape");
  auto offsets = entry.find("data_offsets");
  if (dtype == entry.end() || shape == entry.end() || offsets == entry.end()) {
    return Invalid(
        absl::StrCat("tensor '", name, "' needs \"dtype\", \"shape\" and \"data_offsets\""));
  }
  if (!dtype->is_string() || SafetensorsDtypeBits(dtype->get<std::string>()) == 0) {
    return Invalid(absl::StrCat("tensor '", name, "' has unknown dtype ", dtype->dump()));
  }
  info->dtype = dtype->get<std::string>();
  if (!shape->is_array()) {
    return Invalid(absl::StrCat("tensor '", name, "' has a shape that is not an array"));
  }
  for (const json& d : *shape) {
    if (!d.is_number_unsigned() || d.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
      return Invalid(absl::StrCat("tensor '", name, "' has a bad shape ", shape->dump()));
    }
    info->shape.push_back(static_cast<int64_t>(d.get<uint64_t>()));
  }
  if (!offsets->is_array() || offsets->size() != 2 || !(*offsets)[0].is_number_unsigned() ||
      !(*offsets)[1].is_number_unsigned()) {
    return Invalid(absl::StrCat("tensor '", name, "' has bad data_offsets ", offsets->dump()));
  }
  info->begin = (*offsets)[0].get<uint64_t>();
  info->end = (*offsets)[1].get<uint64_t>();
  return absl::OkStatus();
}

}  // namespace

int SafetensorsDtypeBits(std::string_view dtype) {
  for (const DtypeBits& d : kDtypes) {
    if (d.name == dtype) return d.bits;
  }
  return 0;
}

int64_t SafetensorsTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(std::string_view bytes) {
  if (bytes.size() < 8) {
    return Invalid(
        absl::StrCat("file of ", bytes.size(), " bytes is shorter than the 8-byte header length"));
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[i]);
  if (n > kMaxHeaderSize) {
    return Invalid(absl::StrCat("header length ", n, " exceeds the limit of ", kMaxHeaderSize));
  }
  if (n > bytes.size() - 8) {
    return Invalid(absl::StrCat("header length ", n, " runs past the end of the ", bytes.size(),
                                "-byte file"));
  }
  SafetensorsHeader header;
  header.header_size = n;
  header.header_json = bytes.substr(8, n);
  if (header.header_json.empty() || header.header_json[0] != '{') {
    return Invalid("header does not start with '{'");
  }

  // nlohmann keeps the last of duplicate keys silently; track them ourselves.
  std::vector<std::set<std::string>> keys;
  std::string duplicate;
  auto callback = [&](int /*depth*/, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
        keys.emplace_back();
        break;
      case json::parse_event_t::object_end:
        if (!keys.empty()) keys.pop_back();
        break;
      case json::parse_event_t::key:
        if (!keys.empty() && parsed.is_string() &&
            !keys.back().insert(parsed.get<std::string>()).second && duplicate.empty()) {
          duplicate = parsed.get<std::string>();
        }
        break;
      default:
        break;
    }
    return true;
  };
  json root = json::parse(header.header_json.begin(), header.header_json.end(), callback,
                          /*allow_exceptions=*/false);
  if (root.is_discarded()) return Invalid("header is not valid JSON");
  if (!duplicate.empty()) return Invalid(absl::StrCat("duplicate key '", duplicate, "' in header"));
  if (!root.is_object()) return Invalid("header is not a JSON object");

  for (auto it = root.begin(); it != root.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (it->is_null()) continue;
      if (!it->is_object()) return Invalid("__metadata__ is not an object");
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string()) {
          return Invalid(absl::StrCat("__metadata__ value for '", m.key(), "' is not a string"));
        }
        header.metadata[m.key()] = m->get<std::string>();
      }
      continue;
    }
    SafetensorsTensorInfo info;
    absl::Status s = ParseTensorInfo(it.key(), *it, &info);
    if (!s.ok()) return s;
    header.tensors.push_back(std::move(info));
  }

  std::sort(header.tensors.begin(), header.tensors.end(),
            [](const SafetensorsTensorInfo& a, const SafetensorsTensorInfo& b) {
              return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
            });
  uint64_t expected_begin = 0;
  for (const SafetensorsTensorInfo& t : header.tensors) {
    if (t.begin != expected_begin || t.end < t.begin) {
      return Invalid(absl::StrCat("tensor '", t.name, "' has data_offsets [", t.begin, ", ", t.end,
                                  "] but the previous tensor ends at ", expected_begin,
                                  " (overlap or hole)"));
    }
    uint64_t numel = 1;
    for (int64_t d : t.shape) {
      if (__builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel)) {
        return Invalid(absl::StrCat("tensor '", t.name, "' shape overflows"));
      }
    }
    uint64_t bits = 0;
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(SafetensorsDtypeBits(t.dtype)),
                               &bits)) {
      return Invalid(absl::StrCat("tensor '", t.name, "' size overflows"));
    }
    if (bits % 8 != 0) {
      return Invalid(absl::StrCat("tensor '", t.name, "' does not fill whole bytes"));
    }
    if (t.end - t.begin != bits / 8) {
      return Invalid(absl::StrCat("tensor '", t.name, "' (", t.dtype, ", ", numel,
                                  " elements) needs ", bits / 8, " bytes but data_offsets give ",
                                  t.end - t.begin));
    }
    expected_begin = t.end;
  }
  if (expected_begin != bytes.size() - 8 - n) {
    return Invalid(absl::StrCat("tensors cover ", expected_begin, " bytes but the data buffer has ",
                                bytes.size() - 8 - n));
  }
  return header;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    if (err == ENOENT) return absl::NotFoundError(absl::StrCat("no such file: ", path));
    return absl::InternalError(absl::StrCat("cannot open ", path, ": ", std::strerror(err)));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a regular file"));
  }
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->map_size_ = static_cast<size_t>(st.st_size);
  if (file->map_size_ > 0) {
    void* p = ::mmap(nullptr, file->map_size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      file->map_size_ = 0;
      return absl::InternalError(absl::StrCat("cannot mmap ", path, ": ", std::strerror(err)));
    }
    file->map_ = static_cast<const char*>(p);
  }
  ::close(fd);
  absl::StatusOr<SafetensorsHeader> header =
      ParseSafetensorsHeader(std::string_view(file->map_ ? file->map_ : "", file->map_size_));
  if (!header.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", header.status().message()));
  }
  file->header_ = *std::move(header);
  for (size_t i = 0; i < file->header_.tensors.size(); ++i) {
    file->index_.emplace(file->header_.tensors[i].name, i);
  }
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(const_cast<char*>(map_), map_size_);
}

const SafetensorsTensorInfo* SafetensorsFile::Find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

std::string_view SafetensorsFile::Data(const SafetensorsTensorInfo& info) const {
  return std::string_view(map_ + header_.data_start() + info.begin, info.end - info.begin);
}

absl::StatusOr<std::string> SerializeSafetensors(
    const std::vector<SafetensorsTensor>& tensors,
    const std::map<std::string, std::string>& metadata) {
  std::vector<const SafetensorsTensor*> order;
  std::set<std::string> names;
  for (const SafetensorsTensor& t : tensors) {
    int bits = SafetensorsDtypeBits(t.dtype);
    if (bits == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", t.name, "' has unknown dtype '", t.dtype, "'"));
    }
    if (t.name == "__metadata__" || !names.insert(t.name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("duplicate or reserved tensor name '", t.name, "'"));
    }
    uint64_t numel = 1;
    for (int64_t d : t.shape) {
      if (d < 0)
        return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "' has a negative dim"));
      numel *= static_cast<uint64_t>(d);
    }
    if (numel * bits % 8 != 0 || numel * bits / 8 != t.data.size()) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "' has ", t.data.size(),
                                                     " bytes of data; its shape and dtype need ",
                                                     numel * bits / 8));
    }
    order.push_back(&t);
  }
  std::sort(order.begin(), order.end(), [](const SafetensorsTensor* a, const SafetensorsTensor* b) {
    int ba = SafetensorsDtypeBits(a->dtype), bb = SafetensorsDtypeBits(b->dtype);
    if (ba != bb) return ba > bb;
    return a->name < b->name;
  });

  std::string header = "{";
  bool first = true;
  if (!metadata.empty()) {
    header += "\"__metadata__\":" + json(metadata).dump();
    first = false;
  }
  uint64_t offset = 0;
  for (const SafetensorsTensor* t : order) {
    if (!first) header += ",";
    first = false;
    json info;
    info["dtype"] = t->dtype;
    info["shape"] = t->shape;
    info["data_offsets"] = {offset, offset + t->data.size()};
    // Keys in the Rust writer's order.
    header += json(t->name).dump() + ":{\"dtype\":" + info["dtype"].dump() +
              ",\"shape\":" + info["shape"].dump() +
              ",\"data_offsets\":" + info["data_offsets"].dump() + "}";
    offset += t->data.size();
  }
  header += "}";
  header.append((8 - header.size() % 8) % 8, ' ');

  std::string out;
  out.reserve(8 + header.size() + offset);
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  out += header;
  for (const SafetensorsTensor* t : order) out += t->data;
  return out;
}

absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<SafetensorsTensor>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  absl::StatusOr<std::string> bytes = SerializeSafetensors(tensors, metadata);
  if (!bytes.ok()) return bytes.status();
  std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return absl::InternalError(absl::StrCat("cannot create ", tmp));
    out.write(bytes->data(), static_cast<std::streamsize>(bytes->size()));
    out.flush();
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", tmp));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    return absl::InternalError(absl::StrCat("cannot rename ", tmp, " to ", path));
  }
  return absl::OkStatus();
}

}  // namespace adapterd
