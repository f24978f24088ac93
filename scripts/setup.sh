#!/usr/bin/env bash
# Installs what adapterd needs, idempotently: Debian packages, and a Python
# virtual environment with torch==2.11.0 (the libtorch the engine links, the
# same version as the GPU machines). With --test, also the pinned test-only
# packages of scripts/requirements-test.txt.
#   scripts/setup.sh [--test]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

want_test=0
[[ "${1:-}" == "--test" ]] && want_test=1

packages=(build-essential cmake ninja-build ccache pkg-config git python3 python3-venv
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  libspdlog-dev nlohmann-json3-dev libcli11-dev libgtest-dev libgmock-dev libbenchmark-dev
  libsqlite3-dev libpcre2-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo_cmd=""; [[ $(id -u) -ne 0 ]] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [[ ! -x "$ADAPTERD_VENV/bin/python" ]]; then
  echo "setup: creating the Python environment $ADAPTERD_VENV"
  python3 -m venv "$ADAPTERD_VENV"
fi
py="$ADAPTERD_VENV/bin/python"
stamp_of() { cat "$@" | sha256sum | cut -c1-16; }
runtime_stamp="torch==2.11.0"
if [[ "$(cat "$ADAPTERD_VENV/.runtime-stamp" 2>/dev/null)" != "$runtime_stamp" ]]; then
  echo "setup: installing torch==2.11.0 into $ADAPTERD_VENV"
  "$py" -m pip install -q --disable-pip-version-check "torch==2.11.0"
  echo "$runtime_stamp" > "$ADAPTERD_VENV/.runtime-stamp"
fi
if ((want_test)); then
  test_stamp=$(stamp_of scripts/requirements-test.txt)
  if [[ "$(cat "$ADAPTERD_VENV/.test-stamp" 2>/dev/null)" != "$test_stamp" ]]; then
    echo "setup: installing test packages (scripts/requirements-test.txt)"
    "$py" -m pip install -q --disable-pip-version-check "torch==2.11.0" -r scripts/requirements-test.txt
    echo "$test_stamp" > "$ADAPTERD_VENV/.test-stamp"
  fi
fi
