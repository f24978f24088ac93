#pragma once

// Where the CTest fixtures are (tests/CMakeLists.txt makes them with the
// reference libraries) and reading a fixture file whole. Test-only.

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

namespace adapterd::testing {

// ADAPTERD_FIXTURES_DIR as CTest sets it; outside CTest, "fixtures" below
// the directory the test runs in (the build directory).
inline std::string FixturesDir() {
  const char* dir = std::getenv("ADAPTERD_FIXTURES_DIR");
  return dir != nullptr ? dir : "fixtures";
}

// The file's bytes, or "" if it cannot be read.
inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

}  // namespace adapterd::testing
