#pragma once

// SHA-256 (FIPS 180-4), torch-free and dependency-free: content-addressed
// blobs, upload checksums and model fingerprints. Not thread-safe; one object per stream.

#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"

namespace adapterd {

class Sha256 {
 public:
  Sha256();

  void Update(absl::string_view data);
  // The digest as 64 lowercase hex characters. Call once; the object is spent.
  std::string HexDigest();

  // sha256 of `data` in hex.
  static std::string Hex(absl::string_view data);
  // True for 64 lowercase hex characters.
  static bool IsHexDigest(absl::string_view s);

 private:
  void Blocks(const uint8_t* p, size_t n);

  uint32_t h_[8];
  uint8_t buffer_[64];
  size_t buffered_ = 0;
  uint64_t total_ = 0;
};

}  // namespace adapterd
