#!/bin/sh
# Runs kirimhook's benchmarks from the repository root; see bench/README.md.
#
#   bench/run.sh              the receive benchmark (kirimhook, kirimhook+relay, minimal server)
#   bench/run.sh --store      the same, then the store-only benchmark
#   bench/run.sh --flood      only the connection-flood benchmark (about 80 s with the defaults)
#   bench/run.sh --sustained  only the sustained-load benchmark (open loop 300 s, then closed 180 s)
#   bench/run.sh --quick      1 round with a 2 s window (unless BENCH_ROUNDS/BENCH_SECS are set);
#                             with --flood, a 20 s flood (unless FLOOD_SECS is set)
#
# BENCH_SECS, BENCH_WARMUP_SECS, BENCH_ROUNDS, BENCH_CONNS, BENCH_RELAY_CONCURRENCY,
# BENCH_RUST_LOG and the FLOOD_* settings pass through; --sustained also reads BENCH_MODE,
# BENCH_RATE, BENCH_OPEN_CONNS and BENCH_WINDOW_SECS.
set -eu

store=0
flood=0
sustained=0
for arg in "$@"; do
    case "$arg" in
        --store) store=1 ;;
        --flood) flood=1 ;;
        --sustained) sustained=1 ;;
        --quick)
            BENCH_ROUNDS=${BENCH_ROUNDS:-1}
            BENCH_SECS=${BENCH_SECS:-2}
            FLOOD_SECS=${FLOOD_SECS:-20}
            export BENCH_ROUNDS BENCH_SECS FLOOD_SECS
            ;;
        -h | --help)
            sed -n '2,13s/^# \{0,1\}//p' "$0"
            exit 0
            ;;
        *)
            echo "bench/run.sh: unknown argument: $arg (try --help)" >&2
            exit 2
            ;;
    esac
done

cd "$(dirname "$0")/.."
if [ "$flood" = 1 ] || [ "$sustained" = 1 ]; then
    if [ "$store" = 1 ] || [ "$((flood + sustained))" = 2 ]; then
        echo "bench/run.sh: --flood and --sustained each run one benchmark alone" >&2
        exit 2
    fi
    if [ "$flood" = 1 ]; then
        exec cargo bench --bench flood
    fi
    exec cargo bench --bench sustained
fi
cargo bench --bench receive
if [ "$store" = 1 ]; then
    cargo bench --bench store
fi
