#!/usr/bin/env bash
# Quickstart: installs what is missing, builds the server and adapterctl, and
# starts adapterd on 127.0.0.1:50051. Without --model it serves the embedded
# seeded demo model (materialised in ./data). Extra arguments go to adapterd.
#   scripts/serve.sh [--model DIR] [--listen HOST:PORT] ...
# For a local trial it runs WITHOUT AUTHENTICATION (--insecure-no-auth: every
# caller is the tenant "default" with the admin role). ADAPTERD_SERVE_AUTH=1
# turns authentication on: the first start logs an admin key once.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh adapterd adapterctl
source scripts/env.sh
auth=(--insecure-no-auth)
if [[ "${ADAPTERD_SERVE_AUTH:-0}" == 1 ]]; then auth=(); fi
exec "$ADAPTERD_BUILD_DIR/server/adapterd" --data-dir ./data "${auth[@]}" "$@"
