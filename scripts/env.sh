# Sourced by the scripts: where the Python environment and the build live.
export ADAPTERD_VENV="${ADAPTERD_VENV:-$HOME/.cache/adapterd/venv}"
export ADAPTERD_BUILD_DIR="${ADAPTERD_BUILD_DIR:-build}"
export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/ccache}"
# Clones in other folders share the cache (CI builds a fresh clone).
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$(pwd)}"
export CCACHE_MAXSIZE="${CCACHE_MAXSIZE:-8G}"
# Keep torch's CPU thread pool to the cores we have.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"
