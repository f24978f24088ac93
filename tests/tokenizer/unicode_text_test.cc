#include "engine/model/unicode_text.h"

#include <gtest/gtest.h>

#include <string>

namespace adapterd {
namespace {

TEST(UnicodeTextTest, NfcComposesAndReorders) {
  EXPECT_EQ(Nfc("cafe\u0301"), "caf\u00e9");
  EXPECT_EQ(Nfc("\u212b"), "\u00c5");                // Angstrom sign: singleton.
  EXPECT_EQ(Nfc("\u1e0b\u0323"), "\u1e0d\u0307");    // Reordering then composition.
  EXPECT_EQ(Nfc("q\u0307\u0323"), "q\u0323\u0307");  // No composite: reordered only.
  EXPECT_EQ(Nfc("\u1100\u1161\u11a8"), "\uac01");    // Hangul L V T.
  EXPECT_EQ(Nfc("\u0344"), "\u0308\u0301");          // Excluded from composition.
  EXPECT_EQ(Nfc("\u0301a"), "\u0301a");              // Leading non-starter.
  EXPECT_EQ(Nfc("plain ascii"), "plain ascii");
}

TEST(UnicodeTextTest, NfdDecomposes) {
  EXPECT_EQ(Nfd("\u00e9"), "e\u0301");
  EXPECT_EQ(Nfd("\uac01"), "\u1100\u1161\u11a8");
}

TEST(UnicodeTextTest, LossyReplacesMaximalSubparts) {
  EXPECT_EQ(ToValidUtf8Lossy("a\xF0\x9F\x98"
                             "b"),
            "a\uFFFD"
            "b");                                           // Truncated 4-byte.
  EXPECT_EQ(ToValidUtf8Lossy("\xE0\x80"), "\uFFFD\uFFFD");  // Bad second byte.
  EXPECT_EQ(ToValidUtf8Lossy("\xC0\xAF"), "\uFFFD\uFFFD");
  EXPECT_EQ(ToValidUtf8Lossy("ok \xF0\x9F\x98\x80"), "ok \xF0\x9F\x98\x80");
}

TEST(UnicodeTextTest, FindsIncompleteSuffix) {
  EXPECT_EQ(IncompleteUtf8Suffix("a\xF0\x9F\x98"), 3u);
  EXPECT_EQ(IncompleteUtf8Suffix("a\xF0"), 1u);
  EXPECT_EQ(IncompleteUtf8Suffix("a\xF0\x9F\x98\x80"), 0u);
  EXPECT_EQ(IncompleteUtf8Suffix("a\x80"), 0u);  // Stray continuation: invalid, not incomplete.
  EXPECT_EQ(IncompleteUtf8Suffix("a\xE0\x80"), 0u);
  EXPECT_EQ(IncompleteUtf8Suffix(""), 0u);
}

}  // namespace
}  // namespace adapterd
