#pragma once

// Reader and writer of the safetensors format (huggingface/safetensors).
// Torch-free. The reader validates a file exactly like the Rust crate does
// (header size, JSON object, dtypes, shapes, offsets tiling the byte buffer
// with no holes or overlaps, sizes matching shapes, file size), so that a
// lying header never leads to an out-of-bounds read.

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace adapterd {

// Bits per element of a safetensors dtype string ("F32", "BF16", "F8_E4M3",
// "F4", ...); 0 for an unknown string.
int SafetensorsDtypeBits(std::string_view dtype);

struct SafetensorsTensorInfo {
  std::string name;
  std::string dtype;  // As written: "F32", "F16", "BF16", "I64", ...
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // Byte offsets into the data buffer; end exclusive.
  uint64_t end = 0;

  int64_t numel() const;
};

// The parsed and validated header of a safetensors file.
struct SafetensorsHeader {
  std::vector<SafetensorsTensorInfo> tensors;   // Sorted by offset.
  std::map<std::string, std::string> metadata;  // "__metadata__".
  uint64_t header_size = 0;                     // N: the JSON's length in bytes.
  std::string_view header_json;                 // Points into the parsed bytes.

  uint64_t data_start() const { return 8 + header_size; }
};

// Parses and validates the header of the complete file `bytes`.
// INVALID_ARGUMENT with a precise message for any violation of the format.
absl::StatusOr<SafetensorsHeader> ParseSafetensorsHeader(std::string_view bytes);

// A read-only, memory-mapped safetensors file. Immutable after Open; thread-safe.
class SafetensorsFile {
 public:
  // NOT_FOUND if `path` does not exist; INVALID_ARGUMENT if it is not a valid
  // safetensors file; INTERNAL if it cannot be read.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<SafetensorsTensorInfo>& tensors() const { return header_.tensors; }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
  // The raw header JSON (including any padding), e.g. for fingerprints.
  std::string_view header_json() const { return header_.header_json; }

  // nullptr if there is no tensor `name`.
  const SafetensorsTensorInfo* Find(std::string_view name) const;
  // The tensor's bytes (little-endian, row-major); valid while this object lives.
  std::string_view Data(const SafetensorsTensorInfo& info) const;

 private:
  SafetensorsFile() = default;

  std::string path_;
  const char* map_ = nullptr;
  size_t map_size_ = 0;
  SafetensorsHeader header_;
  std::map<std::string, size_t, std::less<>> index_;  // name -> tensors() index.
};

// One tensor to write.
struct SafetensorsTensor {
  std::string name;
  std::string dtype;  // "F32", "BF16", "I32", ...
  std::vector<int64_t> shape;
  std::string data;  // Raw little-endian bytes, numel * element size.
};

// The complete file contents for `tensors`, laid out like the Rust writer
// (sorted by dtype alignment descending, then name; header padded with spaces
// to a multiple of 8). INVALID_ARGUMENT for unknown dtypes, duplicate names or
// data of the wrong size.
absl::StatusOr<std::string> SerializeSafetensors(
    const std::vector<SafetensorsTensor>& tensors,
    const std::map<std::string, std::string>& metadata = {});

// Serializes and writes to `path` (write to a temporary name, then rename).
absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<SafetensorsTensor>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

}  // namespace adapterd
