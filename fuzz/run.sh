#!/usr/bin/env bash
# Seeds (if needed) and fuzzes one target on stable Rust, no nightly needed:
#   fuzz/run.sh <sip_message|sdp|engine> [seconds=60] [extra libFuzzer args...]
# Equivalent to, from the repo root:
#   fuzz/seed-corpus.sh   # only when fuzz/corpus/<target> is missing or empty
#   cargo fuzz run <target> -s none -- -max_total_time=<seconds> [extra args...]
# `-s none` (no sanitizer) is what keeps cargo-fuzz off `-Zsanitizer`, the only nightly-only
# flag it would pass. Crashes land in fuzz/artifacts/<target>/.
set -euo pipefail

fuzz_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$fuzz_dir/.."

target="${1:?usage: fuzz/run.sh <sip_message|sdp|engine> [seconds] [libFuzzer args...]}"
seconds="${2:-60}"
shift $(( $# >= 2 ? 2 : 1 ))

if [ ! -f "fuzz/fuzz_targets/$target.rs" ]; then
    echo "run.sh: no fuzz target $target (have: $(cd fuzz/fuzz_targets && ls *.rs | sed 's/\.rs$//' | tr '\n' ' '))" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "run.sh: cargo-fuzz is not installed; run: cargo install cargo-fuzz --locked" >&2
    exit 2
fi
if [ -z "$(ls -A "fuzz/corpus/$target" 2>/dev/null)" ]; then
    fuzz/seed-corpus.sh
fi

exec cargo fuzz run "$target" -s none -- -max_total_time="$seconds" "$@"
