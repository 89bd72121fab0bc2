#!/usr/bin/env bash
# Load benchmark of the release flowbot-server (see benches/src/load.rs): builds the server
# and flowbot-load, raises the open-files limit (10,000 WebSocket sessions need as many
# sockets in this process and in the server, which inherits the limit), and runs flowbot-load
# in a fresh temporary directory for the SQLite databases and server logs.
#
#   benches/load.sh [flowbot-load flags, e.g. --duration 5 --idle-sessions 2000]
#   FLOWBOT_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test benches/load.sh
#
# The Markdown report goes to stdout, progress to stderr. The temporary directory is removed
# afterwards unless the run failed or FLOWBOT_BENCH_KEEP=1.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
case "$target" in /*) ;; *) target="$root/$target" ;; esac

(cd "$root" && cargo build --release -p flowbot-server -p flowbot-bench \
    --bin flowbot-server --bin flowbot-load)

want=65535
if ! ulimit -n "$want" 2>/dev/null; then
    hard="$(ulimit -Hn)"
    if [ "$hard" != unlimited ]; then ulimit -n "$hard"; fi
    echo "load.sh: cannot raise the open-files limit to $want; using the hard limit, $(ulimit -n)" >&2
fi

dir="$(mktemp -d "${TMPDIR:-/tmp}/flowbot-load.XXXXXX")"
cd "$dir"
status=0
FLOWBOT_BENCH_DIR="$dir" \
    FLOWBOT_SERVER_BIN="${FLOWBOT_SERVER_BIN:-$target/release/flowbot-server}" \
    "$target/release/flowbot-load" "$@" || status=$?
cd /
if [ "$status" -ne 0 ] || [ "${FLOWBOT_BENCH_KEEP:-0}" = 1 ]; then
    echo "load.sh: server logs and databases kept in $dir" >&2
else
    rm -rf "$dir"
fi
exit "$status"
