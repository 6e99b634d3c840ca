#!/usr/bin/env bash
# The README's first command: build xfer, serve a sample from input_file/, fetch it into
# output_file/, and compare the copy with the original.
#   ./demo.sh [input_file/NAME]
set -euo pipefail
cd "$(dirname "$0")"
sample=${1:-input_file/sample.txt}
name=$(basename "$sample")
cargo build --release --quiet
xfer=target/release/xfer

log=$(mktemp)
# --port 0: any free port, so the demo never collides with a running server.
"$xfer" serve "$sample" --listen 127.0.0.1 --port 0 >"$log" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 100); do [ -s "$log" ] && break; sleep 0.05; done
addr=$(head -n1 "$log" | sed -n 's/^listening on //p')
[ -n "$addr" ] || { echo "demo: server did not start" >&2; exit 1; }
cat "$log"

"$xfer" fetch "$addr" "output_file/$name"
cmp "$sample" "output_file/$name" && echo "identical: $sample -> output_file/$name"
