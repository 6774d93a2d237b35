#!/usr/bin/env bash
# `make demo`: runs the seed scenarios on the embedded default (SQLite service databases, the local: broker), each in
# a fresh directory, printing every step. A scenario passes when its program exits 0 and prints "ok <scenario>",
# which it does only after checking its outcome in the databases.
#
#   examples/demo/run-demo.sh [BUILD_DIR] [WORK_DIR]     (defaults: build/release, BUILD_DIR/demo)
#
# Exit status: 0 when every scenario passed, 1 otherwise (the failing ones are named at the end).
set -uo pipefail

build=${1:-build/release}
work=${2:-$build/demo}
failed=()

run() {
    local name=$1
    shift
    local dir=$work/$name
    rm -rf "$dir"
    mkdir -p "$dir"
    echo
    echo "=================== $name ==================="
    "$@" --dir "$dir" 2>&1 | tee "$dir.log"
    local rc=${PIPESTATUS[0]}
    if [[ $rc -ne 0 ]]; then
        echo "FAILED $name: exit status $rc"
        failed+=("$name")
    elif ! grep -qx "ok $name" "$dir.log"; then
        echo "FAILED $name: no line \"ok $name\""
        failed+=("$name")
    fi
}

for program in foo_bar order_customer payment_offset; do
    if [[ ! -x $build/examples/$program/$program ]]; then
        echo "FAILED: $build/examples/$program/$program is not built (run make build-release)"
        exit 1
    fi
done

run foo_bar "$build/examples/foo_bar/foo_bar" demo
run order_customer "$build/examples/order_customer/order_customer"
run payment_offset "$build/examples/payment_offset/payment_offset"
# Seed 003 (needs keeld, built with the examples): the transfer through keeld with the barrier.
if [[ -x $build/examples/transfer/transfer ]]; then
    run transfer "$build/examples/transfer/transfer"
else
    echo "FAILED: $build/examples/transfer/transfer is not built (run make build-release)"
    failed+=(transfer)
fi

echo
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "demo FAILED: ${failed[*]} (logs in $work)"
    exit 1
fi
echo "demo: all 4 scenarios ok (databases and logs in $work)"
