#!/usr/bin/env bash
# Runs keel's benchmarks (bench/, docs/benchmarks.md) and prints a summary table of the medians, the baselines and
# the keel/baseline ratios with their targets.
#
# Usage: scripts/run-bench.sh [BUILD_DIR] [benchmark flags…]
#   BUILD_DIR          a Release build holding bench/bench_* (default: build/release; `make bench` builds it)
#   benchmark flags    passed to every binary, e.g. --benchmark_repetitions=3
# Environment:
#   KEEL_BENCH_SCALE   multiplies every event count (default 1.0; e.g. 0.05 for a quick run)
#   KEEL_BENCH_ONLY    space-separated names to run a subset, e.g. "append_single read_all"
#
# bench_pg and bench_mysql need the PostgreSQL and MariaDB servers, bench_outbox's RabbitMQ cases the RabbitMQ test
# server: this script starts them first (scripts/services.sh start pg / mysql / rabbitmq; idempotent) and exports
# KEEL_TEST_PG / KEEL_TEST_MYSQL / KEEL_TEST_RABBITMQ from scripts/services.sh env.
#
# Scratch databases go to BUILD_DIR/bench-tmp (same disk as the build) and are deleted afterwards. The full output
# goes to BUILD_DIR/bench-output.txt, the summary to BUILD_DIR/bench-results.txt. Exits non-zero when a benchmark
# failed to run; a missed target is reported as BELOW, not as a failure.
set -euo pipefail

build_dir=${1:-build/release}
[[ $# -gt 0 ]] && shift
if [[ ! -d "$build_dir/bench" ]]; then
    echo "run-bench.sh: no benchmarks in '$build_dir/bench'; build a Release tree first (make bench does)" >&2
    exit 2
fi
build_dir=$(cd "$build_dir" && pwd)

# The usual order, then any other bench_* binary.
order=(append_single append_concurrent append_batch read_all load_aggregate memory_rss pg mysql keeld)
benches=()
for name in "${order[@]}"; do
    [[ -x "$build_dir/bench/bench_$name" ]] && benches+=("$name")
done
for exe in "$build_dir"/bench/bench_*; do
    [[ -f "$exe" && -x "$exe" ]] || continue
    name=${exe##*/bench_}
    [[ " ${benches[*]} " == *" $name "* ]] || benches+=("$name")
done
if [[ -n "${KEEL_BENCH_ONLY:-}" ]]; then
    wanted=()
    for name in $KEEL_BENCH_ONLY; do
        if [[ " ${benches[*]} " == *" $name "* ]]; then
            wanted+=("$name")
        else
            echo "run-bench.sh: KEEL_BENCH_ONLY names unknown benchmark '$name' (have: ${benches[*]})" >&2
            exit 2
        fi
    done
    benches=("${wanted[@]}")
fi
if [[ ${#benches[@]} -eq 0 ]]; then
    echo "run-bench.sh: no bench_* executables in '$build_dir/bench'" >&2
    exit 2
fi

# The database servers the pg / mysql benchmarks run against.
services="$(cd "$(dirname "$0")" && pwd)/services.sh"
need_services=0
for name in "${benches[@]}"; do
    case $name in
        pg | keeld) "$services" start pg; need_services=1 ;;
        mysql) "$services" start mysql; need_services=1 ;;
        outbox) "$services" start rabbitmq; need_services=1 ;;
    esac
done
if [[ $need_services -eq 1 ]]; then
    eval "$("$services" env)"
    export KEEL_TEST_PG KEEL_TEST_MYSQL KEEL_TEST_RABBITMQ
fi

scale=${KEEL_BENCH_SCALE:-1}
tmp_dir="$build_dir/bench-tmp"
results="$build_dir/bench-results.txt"
output="$build_dir/bench-output.txt"
summary_rows=$(mktemp)
cleanup() {
    rm -rf "$tmp_dir"
    rm -f "$summary_rows"
}
trap cleanup EXIT
mkdir -p "$tmp_dir"
: >"$output"

export KEEL_BENCH_SCALE="$scale"
export KEEL_BENCH_TMPDIR="$tmp_dir"
export KEEL_BENCH_SUMMARY="$summary_rows"

echo "keel benchmarks: ${benches[*]}"
echo "build dir $build_dir, KEEL_BENCH_SCALE=$scale, scratch $tmp_dir${*:+, flags: $*}"
failed=()
started=$SECONDS
for name in "${benches[@]}"; do
    echo
    echo "######## bench_$name ########" | tee -a "$output"
    t0=$SECONDS
    if ! "$build_dir/bench/bench_$name" "$@" 2>&1 | tee -a "$output"; then
        failed+=("$name")
    fi
    echo "(bench_$name took $((SECONDS - t0)) s)" | tee -a "$output"
done

{
    echo "keel benchmark summary — $(date -u '+%Y-%m-%d %H:%M UTC'), KEEL_BENCH_SCALE=$scale, $((SECONDS - started)) s"
    machine=$(awk -F'\t' '$1 == "machine" { print $2; exit }' "$summary_rows")
    echo "machine: ${machine:-unknown}"
    echo
    {
        printf 'result\tkeel (median)\tbaseline (median)\tratio\ttarget\tverdict\n'
        awk -F'\t' '$1 == "row" { print $3 "\t" $4 "\t" $5 "\t" $6 "\t" $7 "\t" $8 }' "$summary_rows"
    } | column -t -s $'\t'
    echo
    echo "settings:"
    awk -F'\t' '$1 == "setting" { print "  " $2 ": " $3 }' "$summary_rows"
    if grep -q '^noisy' "$summary_rows"; then
        echo
        echo "noisy (repetitions of a case differ by more than 1.5x: the machine was busy; trust ratios over absolutes):"
        awk -F'\t' '$1 == "noisy" { print "  " $2 ": " $3 }' "$summary_rows"
    fi
    if [[ ${#failed[@]} -gt 0 ]]; then
        echo
        echo "FAILED to run: ${failed[*]} (see $output)"
    fi
} >"$results"

echo
echo "================================================================================"
cat "$results"
echo "(summary written to $results; full output in $output)"
[[ ${#failed[@]} -eq 0 ]]
