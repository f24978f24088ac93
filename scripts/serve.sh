#!/usr/bin/env bash
# Quickstart: installs what is missing, builds the server and adapterctl, and
# starts adapterd on 127.0.0.1:50051. Without --model it serves the embedded
# seeded demo model (materialised in ./data). Extra arguments go to adapterd.
#   scripts/serve.sh [--model DIR] [--listen HOST:PORT] ...
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh adapterd adapterctl
source scripts/env.sh
exec "$ADAPTERD_BUILD_DIR/server/adapterd" --data-dir ./data "$@"
