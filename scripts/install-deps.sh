#!/usr/bin/env bash
# Installs every Debian 12 package that keel's build, tests and benchmarks need.
# Idempotent: packages already installed are skipped, and `apt-get update` runs only when something is missing.
# Run as root (or with sudo available). Usage: scripts/install-deps.sh
set -euo pipefail

packages=(
    # toolchain
    g++ make cmake ninja-build pkg-config
    # libraries (all from Debian, see README "Dependencies")
    libsqlite3-dev nlohmann-json3-dev libcli11-dev libfmt-dev libspdlog-dev
    # PostgreSQL and MariaDB: client libraries for the backends, servers for the tests (scripts/services.sh)
    libpq-dev postgresql libmariadb-dev mariadb-server mariadb-client
    # RabbitMQ: client library for the rabbitmq: broker, server for the tests (scripts/services.sh)
    librabbitmq-dev rabbitmq-server
    # HTTP for keeld and the DTM client (Boost.Asio / Boost.Beast, header-only)
    libboost-dev
    # tests and benchmarks
    libgtest-dev libgmock-dev libbenchmark-dev
)

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "install-deps: all ${#packages[@]} packages present"
    exit 0
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        sudo="sudo"
    else
        echo "install-deps: missing packages (${missing[*]}) and not root; run as root or install sudo" >&2
        exit 1
    fi
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# The server packages would start system-wide services on install; keel's tests start their own instances under the
# build tree instead (scripts/services.sh), so forbid service starts while installing unless a policy already exists.
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod +x "$policy"
    own_policy=1
fi
cleanup() { if [ "$own_policy" -eq 1 ]; then $sudo rm -f "$policy"; fi; }
trap cleanup EXIT
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
