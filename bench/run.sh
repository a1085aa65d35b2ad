#!/bin/sh
# Runs kirimhook's benchmarks from the repository root; see bench/README.md.
#
#   bench/run.sh            the receive benchmark (kirimhook, kirimhook+relay, minimal server)
#   bench/run.sh --store    the same, then the store-only benchmark
#   bench/run.sh --sustained  only the sustained-load benchmark (open loop 300 s, then closed 180 s)
#   bench/run.sh --quick    1 round with a 2 s window (unless BENCH_ROUNDS/BENCH_SECS are set)
#
# BENCH_SECS, BENCH_WARMUP_SECS, BENCH_ROUNDS, BENCH_CONNS, BENCH_RELAY_CONCURRENCY and
# BENCH_RUST_LOG pass through; --sustained also reads BENCH_MODE, BENCH_RATE, BENCH_OPEN_CONNS
# and BENCH_WINDOW_SECS.
set -eu

store=0
sustained=0
for arg in "$@"; do
    case "$arg" in
        --store) store=1 ;;
        --sustained) sustained=1 ;;
        --quick)
            BENCH_ROUNDS=${BENCH_ROUNDS:-1}
            BENCH_SECS=${BENCH_SECS:-2}
            export BENCH_ROUNDS BENCH_SECS
            ;;
        -h | --help)
            sed -n '2,11s/^# \{0,1\}//p' "$0"
            exit 0
            ;;
        *)
            echo "bench/run.sh: unknown argument: $arg (try --help)" >&2
            exit 2
            ;;
    esac
done

cd "$(dirname "$0")/.."
if [ "$sustained" = 1 ]; then
    exec cargo bench --bench sustained
fi
cargo bench --bench receive
if [ "$store" = 1 ]; then
    cargo bench --bench store
fi
