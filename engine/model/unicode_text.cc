#include "engine/model/unicode_text.h"

#include <algorithm>
#include <iterator>

// The tables in unicode_text_data.inc were generated with Python's unicodedata
// (Unicode 14.0; `tokenizers` uses the unicode-normalization crate, whose
// canonical mappings agree for every character assigned in both versions):
//
//   import unicodedata as ud
//   for cp in range(0x110000):  # minus surrogates
//     c = chr(cp); k = ud.combining(c)           -> kCombiningClasses if k
//     d = ud.decomposition(c)                     # canonical if no "<tag>"
//       -> kDecompositions {cp, first, second or 0}
//       -> kCompositions {first, second, cp} if len(d) == 2 and
//          ud.normalize("NFC", ud.normalize("NFD", c)) == c  (not excluded)
//
// NFKC/NFKD (compatibility mappings) are not included.

namespace adapterd {
namespace {

struct CombiningClass {
  char32_t cp;
  uint8_t ccc;
};
struct Decomposition {
  char32_t cp;
  char32_t first;
  char32_t second;
};
struct Composition {
  char32_t first;
  char32_t second;
  char32_t composite;
};

#include "engine/model/unicode_text_data.inc"

constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr int kLCount = 19, kVCount = 21, kTCount = 28;
constexpr int kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

int CombiningClassOf(char32_t cp) {
  if (cp < 0x300) return 0;
  auto it = std::lower_bound(std::begin(kCombiningClasses), std::end(kCombiningClasses), cp,
                             [](const CombiningClass& e, char32_t c) { return e.cp < c; });
  return (it != std::end(kCombiningClasses) && it->cp == cp) ? it->ccc : 0;
}

const Decomposition* FindDecomposition(char32_t cp) {
  auto it = std::lower_bound(std::begin(kDecompositions), std::end(kDecompositions), cp,
                             [](const Decomposition& e, char32_t c) { return e.cp < c; });
  return (it != std::end(kDecompositions) && it->cp == cp) ? &*it : nullptr;
}

void Decompose(char32_t cp, std::vector<char32_t>* out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    const int s = static_cast<int>(cp - kSBase);
    out->push_back(kLBase + s / kNCount);
    out->push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount != 0) out->push_back(kTBase + s % kTCount);
    return;
  }
  const Decomposition* d = cp < 0xC0 ? nullptr : FindDecomposition(cp);
  if (d == nullptr) {
    out->push_back(cp);
    return;
  }
  Decompose(d->first, out);
  if (d->second != 0) Decompose(d->second, out);
}

// Returns 0 when the pair has no primary composite.
char32_t Compose(char32_t a, char32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount) {
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  }
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase &&
      b < kTBase + kTCount) {
    return a + (b - kTBase);
  }
  auto it =
      std::lower_bound(std::begin(kCompositions), std::end(kCompositions), std::make_pair(a, b),
                       [](const Composition& e, auto key) {
                         return e.first != key.first ? e.first < key.first : e.second < key.second;
                       });
  if (it != std::end(kCompositions) && it->first == a && it->second == b) return it->composite;
  return 0;
}

std::vector<char32_t> CanonicalDecomposition(std::string_view s) {
  std::vector<char32_t> out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) Decompose(NextCodePoint(s, &i), &out);
  // Canonical ordering: stable sort of every run of non-starters.
  for (size_t i = 0; i < out.size();) {
    if (CombiningClassOf(out[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < out.size() && CombiningClassOf(out[j]) != 0) ++j;
    if (j - i > 1) {
      std::stable_sort(out.begin() + i, out.begin() + j, [](char32_t x, char32_t y) {
        return CombiningClassOf(x) < CombiningClassOf(y);
      });
    }
    i = j;
  }
  return out;
}

std::string FromCodePoints(const std::vector<char32_t>& cps) {
  std::string out;
  out.reserve(cps.size() * 2);
  for (char32_t cp : cps) AppendUtf8(cp, &out);
  return out;
}

bool AllBelowCombiningMarks(std::string_view s) {
  // Every character below U+0300 is a starter and NFC/NFD-stable except the
  // precomposed Latin-1/Latin Extended letters, which only matter for NFD.
  for (unsigned char c : s) {
    if (c >= 0xCC) return false;
  }
  return true;
}

// Length of the maximal prefix of a well-formed sequence at s[i] (>= 1), and
// whether it is complete.
size_t MaximalSubpart(std::string_view s, size_t i, bool* complete) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  *complete = false;
  if (b0 < 0x80) {
    *complete = true;
    return 1;
  }
  int need;
  unsigned char lo = 0x80, hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 1;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 2;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 3;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return 1;
  }
  size_t len = 1;
  for (int k = 0; k < need; ++k) {
    if (i + len >= s.size()) return len;
    const auto b = static_cast<unsigned char>(s[i + len]);
    if (b < lo || b > hi) return len;
    lo = 0x80;
    hi = 0xBF;
    ++len;
  }
  *complete = true;
  return len;
}

}  // namespace

void AppendUtf8(char32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

size_t ValidSequenceLength(std::string_view s, size_t i) {
  bool complete;
  const size_t len = MaximalSubpart(s, i, &complete);
  return complete ? len : 0;
}

char32_t NextCodePoint(std::string_view s, size_t* i) {
  const auto b0 = static_cast<unsigned char>(s[*i]);
  if (b0 < 0x80) {
    ++*i;
    return b0;
  }
  int extra = b0 >= 0xF0 ? 3 : b0 >= 0xE0 ? 2 : 1;
  char32_t cp = b0 & (0x3F >> extra);
  for (int k = 1; k <= extra; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[*i + k]) & 0x3F);
  *i += extra + 1;
  return cp;
}

std::vector<char32_t> ToCodePoints(std::string_view s) {
  std::vector<char32_t> out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) out.push_back(NextCodePoint(s, &i));
  return out;
}

bool IsValidUtf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    const size_t len = ValidSequenceLength(s, i);
    if (len == 0) return false;
    i += len;
  }
  return true;
}

std::string ToValidUtf8Lossy(std::string_view s) {
  if (IsValidUtf8(s)) return std::string(s);
  std::string out;
  out.reserve(s.size() + 8);
  for (size_t i = 0; i < s.size();) {
    bool complete;
    const size_t len = MaximalSubpart(s, i, &complete);
    if (complete) {
      out.append(s.substr(i, len));
    } else {
      out.append("\xEF\xBF\xBD");
    }
    i += len;
  }
  return out;
}

size_t IncompleteUtf8Suffix(std::string_view s) {
  for (size_t k = 1; k <= 3 && k <= s.size(); ++k) {
    const size_t p = s.size() - k;
    const auto b = static_cast<unsigned char>(s[p]);
    if (b >= 0x80 && b < 0xC0) continue;  // Continuation byte: look further back.
    bool complete;
    const size_t len = MaximalSubpart(s, p, &complete);
    return (!complete && len == k && b >= 0xC2) ? k : 0;
  }
  return 0;
}

bool IsWhiteSpace(char32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}

std::string Nfd(std::string_view s) {
  bool ascii = std::all_of(s.begin(), s.end(), [](char c) { return (c & 0x80) == 0; });
  if (ascii) return std::string(s);
  return FromCodePoints(CanonicalDecomposition(s));
}

std::string Nfc(std::string_view s) {
  if (AllBelowCombiningMarks(s)) return std::string(s);
  std::vector<char32_t> d = CanonicalDecomposition(s);
  if (d.empty()) return std::string();
  std::vector<char32_t> out;
  out.reserve(d.size());
  out.push_back(d[0]);
  size_t starter = 0;
  int last_class = CombiningClassOf(d[0]);
  if (last_class != 0) last_class = 256;  // No starter yet: nothing composes.
  for (size_t i = 1; i < d.size(); ++i) {
    const char32_t ch = d[i];
    const int cls = CombiningClassOf(ch);
    if (last_class < cls || last_class == 0) {
      const char32_t composite = Compose(out[starter], ch);
      if (composite != 0) {
        out[starter] = composite;
        continue;
      }
    }
    if (cls == 0) starter = out.size();
    last_class = cls;
    out.push_back(ch);
  }
  return FromCodePoints(out);
}

}  // namespace adapterd
