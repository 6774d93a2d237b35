#!/usr/bin/env bash
# Starts and stops the real database servers keel's tests use, from Debian's packages, under the build tree:
# each with its own data directory and port, bound to 127.0.0.1 only. No system service is touched.
#
#   scripts/services.sh start [pg|mysql|all]   start (idempotent), wait until ready, create the test database
#   scripts/services.sh stop  [pg|mysql|all]   stop
#   scripts/services.sh status                 show what runs
#   scripts/services.sh env                    print the export lines for the tests (KEEL_TEST_PG, KEEL_TEST_MYSQL)
#
# Settings (environment): KEEL_SERVICES_DIR (default: build/services), KEEL_PG_PORT (default 15432),
# KEEL_MYSQL_PORT (default 13306). Ports are below 32768 so that a restarted server can always bind again.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dir=${KEEL_SERVICES_DIR:-$root/build/services}
pg_port=${KEEL_PG_PORT:-15432}
my_port=${KEEL_MYSQL_PORT:-13306}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

log() { echo "services: $*" >&2; }
die() { echo "services: $*" >&2; exit 1; }

# --- PostgreSQL ----------------------------------------------------------------------------------------------------
pg_bin() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [ -n "$d" ] || die "PostgreSQL is not installed (run scripts/install-deps.sh)"
    echo "$d"
}
# initdb and postgres refuse to run as root: run them as the 'postgres' account the Debian package creates.
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}
# The PostgreSQL directory: under the build tree when the postgres account can reach it there, else (a clone under
# a private home directory, say) under /tmp, named after the build tree so that runs of different trees stay apart.
pg_dir() {
    local d="$dir/pg"
    if [ "$(id -u)" -eq 0 ] && ! runuser -u postgres -- test -x "$dir" 2>/dev/null; then
        d="/tmp/keel-services-$(echo "$dir" | cksum | cut -d' ' -f1)/pg"
    fi
    echo "$d"
}
pg_start() {
    local bin pgd data
    bin=$(pg_bin)
    pgd=$(pg_dir)
    data="$pgd/data"
    mkdir -p "$pgd"
    if [ "$(id -u)" -eq 0 ]; then chown postgres:postgres "$pgd"; fi
    if [ ! -f "$data/PG_VERSION" ]; then
        log "initdb $data"
        as_pg "$bin/initdb" -D "$data" -U keel --auth=trust --encoding=UTF8 --locale=C.UTF-8 >"$pgd/initdb.log" 2>&1 \
            || { cat "$pgd/initdb.log" >&2; die "initdb failed"; }
        # keel_pw must authenticate with a password (the tests of wrong credentials); everyone else is trusted.
        { echo "host all keel_pw 127.0.0.1/32 scram-sha-256"; cat "$data/pg_hba.conf"; } > "$pgd/pg_hba.new"
        as_pg cp "$pgd/pg_hba.new" "$data/pg_hba.conf"
    fi
    if as_pg "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        log "PostgreSQL already running on 127.0.0.1:$pg_port"
    else
        log "starting PostgreSQL on 127.0.0.1:$pg_port"
        as_pg "$bin/pg_ctl" -D "$data" -l "$pgd/server.log" -w -t 60 start \
            -o "-c listen_addresses=127.0.0.1 -p $pg_port -c unix_socket_directories=$pgd -c fsync=on \
                -c synchronous_commit=on -c max_connections=200 -c max_prepared_transactions=0" >/dev/null \
            || { tail -n 30 "$pgd/server.log" >&2; die "PostgreSQL did not start"; }
    fi
    "$bin/psql" -h 127.0.0.1 -p "$pg_port" -U keel -d postgres -qc \
        "DO \$\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'keel_pw') THEN
             CREATE ROLE keel_pw LOGIN PASSWORD 'keel_pw'; END IF; END \$\$" >/dev/null
    for db in keel_test; do
        if ! "$bin/psql" -h 127.0.0.1 -p "$pg_port" -U keel -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$db'" | grep -q 1; then
            "$bin/createdb" -h 127.0.0.1 -p "$pg_port" -U keel "$db"
        fi
    done
}
pg_stop() {
    local bin data
    bin=$(pg_bin)
    data="$(pg_dir)/data"
    if [ -f "$data/PG_VERSION" ] && as_pg "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        log "stopping PostgreSQL"
        as_pg "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null
    fi
}

# --- MariaDB -------------------------------------------------------------------------------------------------------
my_sock() { echo "$dir/my/mysqld.sock"; }
my_client() { mariadb --no-defaults --protocol=socket -S "$(my_sock)" -uroot "$@"; }
my_running() { [ -S "$(my_sock)" ] && my_client -e "SELECT 1" >/dev/null 2>&1; }
my_start() {
    command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || die "MariaDB is not installed (run scripts/install-deps.sh)"
    local data="$dir/my/data" user
    user=$(id -un)
    mkdir -p "$dir/my"
    if [ ! -d "$data/mysql" ]; then
        log "mariadb-install-db $data"
        mariadb-install-db --no-defaults --datadir="$data" --user="$user" --auth-root-authentication-method=socket \
            --skip-test-db >"$dir/my/install.log" 2>&1 || { cat "$dir/my/install.log" >&2; die "mariadb-install-db failed"; }
    fi
    if my_running; then
        log "MariaDB already running on 127.0.0.1:$my_port"
    else
        log "starting MariaDB on 127.0.0.1:$my_port"
        /usr/sbin/mariadbd --no-defaults --datadir="$data" --user="$user" --bind-address=127.0.0.1 --port="$my_port" \
            --socket="$(my_sock)" --pid-file="$dir/my/mysqld.pid" --log-error="$dir/my/server.log" \
            --innodb-flush-log-at-trx-commit=1 --sync-binlog=0 --skip-name-resolve --max-connections=300 \
            --innodb-buffer-pool-size=256M >/dev/null 2>&1 &
        for _ in $(seq 1 120); do
            my_running && break
            sleep 0.5
        done
        my_running || { tail -n 30 "$dir/my/server.log" >&2; die "MariaDB did not start"; }
    fi
    my_client -e "CREATE DATABASE IF NOT EXISTS keel_test;
        CREATE USER IF NOT EXISTS 'keel'@'127.0.0.1' IDENTIFIED BY 'keel';
        CREATE USER IF NOT EXISTS 'keel'@'localhost' IDENTIFIED BY 'keel';
        GRANT ALL ON *.* TO 'keel'@'127.0.0.1'; GRANT ALL ON *.* TO 'keel'@'localhost'; FLUSH PRIVILEGES;"
}
my_stop() {
    if my_running; then
        log "stopping MariaDB"
        my_client -e "SHUTDOWN" >/dev/null 2>&1 || true
        for _ in $(seq 1 60); do
            [ -f "$dir/my/mysqld.pid" ] || break
            sleep 0.5
        done
    fi
}

print_env() {
    echo "export KEEL_TEST_PG='postgresql://keel@127.0.0.1:$pg_port/keel_test'"
    echo "export KEEL_TEST_MYSQL='mysql://keel:keel@127.0.0.1:$my_port/keel_test'"
}

cmd=${1:-}
what=${2:-all}
case "$cmd" in
    start)
        case "$what" in pg) pg_start ;; mysql) my_start ;; all) pg_start; my_start ;; *) die "unknown service '$what'" ;; esac ;;
    stop)
        case "$what" in pg) pg_stop ;; mysql) my_stop ;; all) pg_stop; my_stop ;; *) die "unknown service '$what'" ;; esac ;;
    status)
        bin=$(pg_bin)
        if as_pg "$bin/pg_ctl" -D "$(pg_dir)/data" status >/dev/null 2>&1; then echo "pg: running on $pg_port"; else echo "pg: stopped"; fi
        if my_running; then echo "mysql: running on $my_port"; else echo "mysql: stopped"; fi ;;
    env) print_env ;;
    *) die "usage: $0 start|stop [pg|mysql|all] | status | env" ;;
esac
