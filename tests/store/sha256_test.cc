#include "common/sha256.h"

#include <string>

#include "gtest/gtest.h"

namespace adapterd {
namespace {

TEST(Sha256Test, MatchesTheFipsVectors) {
  EXPECT_EQ(Sha256::Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256::Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Sha256::Hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(Sha256::Hex(std::string(1000000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256Test, IncrementalUpdatesInAnySplitGiveTheSameDigest) {
  std::string data;
  for (int i = 0; i < 1000; ++i) data.push_back(static_cast<char>(i * 37));
  const std::string whole = Sha256::Hex(data);
  for (size_t step : {1u, 3u, 63u, 64u, 65u, 999u}) {
    Sha256 sha;
    for (size_t off = 0; off < data.size(); off += step) sha.Update(data.substr(off, step));
    EXPECT_EQ(sha.HexDigest(), whole) << step;
  }
}

TEST(Sha256Test, RecognisesHexDigests) {
  EXPECT_TRUE(Sha256::IsHexDigest(Sha256::Hex("x")));
  EXPECT_FALSE(Sha256::IsHexDigest("abc"));
  EXPECT_FALSE(Sha256::IsHexDigest(std::string(64, 'A')));
  EXPECT_FALSE(Sha256::IsHexDigest(std::string(64, 'g')));
}

}  // namespace
}  // namespace adapterd
