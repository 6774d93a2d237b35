#!/usr/bin/env bash
# Starts and stops the real database servers keel's tests use, from Debian's packages, under the build tree:
# each with its own data directory and port, bound to 127.0.0.1 only. No system service is touched.
#
#   scripts/services.sh start [pg|mysql|rabbitmq|all]   start (idempotent), wait until ready, create the test database
#   scripts/services.sh stop  [pg|mysql|rabbitmq|all]   stop
#   scripts/services.sh status                          show what runs
#   scripts/services.sh env                             print the export lines for the tests (KEEL_TEST_PG, …)
#
# Settings (environment): KEEL_SERVICES_DIR (default: build/services), KEEL_PG_PORT (default 15432),
# KEEL_MYSQL_PORT (default 13306), KEEL_RABBITMQ_PORT (AMQP, default 15673), KEEL_RABBITMQ_DIST_PORT (Erlang
# distribution, default 25673; rabbitmqctl uses the 30 after it), KEEL_RABBITMQ_EPMD_PORT (default 14369),
# KEEL_RABBITMQ_NODE (default keel-test@localhost). Ports are below 32768 so that a restarted server can always bind
# again.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dir=${KEEL_SERVICES_DIR:-$root/build/services}
pg_port=${KEEL_PG_PORT:-15432}
my_port=${KEEL_MYSQL_PORT:-13306}
rmq_port=${KEEL_RABBITMQ_PORT:-15673}
rmq_dist_port=${KEEL_RABBITMQ_DIST_PORT:-25673}
rmq_epmd_port=${KEEL_RABBITMQ_EPMD_PORT:-14369}
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

# --- RabbitMQ ------------------------------------------------------------------------------------------------------
# Debian's rabbitmq-server, run straight from /usr/lib/rabbitmq/bin as the invoking user (the /usr/sbin wrappers would
# switch to the 'rabbitmq' account and use /var/lib/rabbitmq), with its own node name, Erlang cookie (HOME), config,
# data and logs under $dir/rabbitmq: no other account needs to reach the build tree. AMQP, the Erlang distribution
# port, epmd and rabbitmqctl's own distribution ports are on 127.0.0.1 and below 32768. The broker user keel/keel
# owns the vhost 'keel' (created on first boot from rabbitmq.conf). Start and stop hold a lock, so that concurrent
# calls (two test runs) cannot start the node twice.
rmq_node=${KEEL_RABBITMQ_NODE:-keel-test@localhost}
rmq_dir() { echo "$dir/rabbitmq"; }
rmq_env() {
    local rd
    rd=$(rmq_dir)
    env HOME="$rd" \
        RABBITMQ_NODENAME="$rmq_node" RABBITMQ_USE_LONGNAME=false \
        RABBITMQ_CONF_ENV_FILE="$rd/rabbitmq-env.conf" \
        RABBITMQ_CONFIG_FILE="$rd/rabbitmq.conf" RABBITMQ_ADVANCED_CONFIG_FILE="$rd/advanced.config" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$rd/enabled_plugins" \
        RABBITMQ_MNESIA_BASE="$rd/mnesia" RABBITMQ_LOG_BASE="$rd/log" RABBITMQ_PID_FILE="$rd/rabbit.pid" \
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$rmq_port" RABBITMQ_DIST_PORT="$rmq_dist_port" \
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
        RABBITMQ_CTL_DIST_PORT_MIN=$((rmq_dist_port + 10)) RABBITMQ_CTL_DIST_PORT_MAX=$((rmq_dist_port + 30)) \
        ERL_EPMD_PORT="$rmq_epmd_port" ERL_EPMD_ADDRESS=127.0.0.1 \
        "$@"
}
rmq_ctl() { rmq_env /usr/lib/rabbitmq/bin/rabbitmqctl -n "$rmq_node" "$@"; }
rmq_pid() { local f; f="$(rmq_dir)/rabbit.pid"; [ -s "$f" ] && cat "$f"; }
rmq_port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$rmq_port") 2>/dev/null; }
# Running: the pid file names a live process. A node whose pid file is gone but whose AMQP port answers gets its
# pid file back (asked from the node itself).
rmq_running() {
    local p
    if p=$(rmq_pid) && kill -0 "$p" 2>/dev/null; then return 0; fi
    rmq_port_open || return 1
    p=$(rmq_ctl eval 'list_to_integer(os:getpid()).' 2>/dev/null | tr -dc '0-9') || return 1
    [ -n "$p" ] && kill -0 "$p" 2>/dev/null || return 1
    echo "$p" >"$(rmq_dir)/rabbit.pid"
}
# Runs "$@" holding the RabbitMQ lock of this services directory.
rmq_locked() {
    mkdir -p "$(rmq_dir)"
    (
        flock -w 300 9 || die "RabbitMQ: could not get the lock $(rmq_dir)/.lock"
        "$@"
    ) 9>"$(rmq_dir)/.lock"
}
rmq_start() {
    [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || die "RabbitMQ is not installed (run scripts/install-deps.sh)"
    local rd p
    rd=$(rmq_dir)
    mkdir -p "$rd/mnesia" "$rd/log"
    chmod 700 "$rd"
    : >"$rd/rabbitmq-env.conf"
    echo '[].' >"$rd/enabled_plugins"
    echo '[].' >"$rd/advanced.config"
    printf '%s\n' "listeners.tcp.1 = 127.0.0.1:$rmq_port" "loopback_users = none" \
        "default_user = keel" "default_pass = keel" "default_vhost = keel" "default_user_tags.administrator = true" \
        "default_permissions.configure = .*" "default_permissions.read = .*" "default_permissions.write = .*" \
        "log.console = false" "log.file.level = info" >"$rd/rabbitmq.conf"
    if rmq_running; then
        if rmq_port_open; then
            log "RabbitMQ already running on 127.0.0.1:$rmq_port"
            return 0
        fi
        log "RabbitMQ (pid $(rmq_pid)) is starting"
    else
        log "starting RabbitMQ on 127.0.0.1:$rmq_port (node $rmq_node)"
        rm -f "$rd/rabbit.pid"
        # The subshell gives up the lock (9) and the caller's stdin, stdout and stderr for good (exec) before it
        # starts the server: a redirection on the command itself would leave copies of the caller's stdout in the
        # shell that waits for the server, and a caller reading this script's output through a pipe would then wait
        # for the server to end.
        (
            exec 9>&- >"$rd/startup.log" 2>&1 </dev/null
            cd "$rd" && rmq_env setsid /usr/lib/rabbitmq/bin/rabbitmq-server &
        )
    fi
    for _ in $(seq 1 240); do
        rmq_port_open && break
        if [ -s "$rd/rabbit.pid" ] && ! kill -0 "$(rmq_pid)" 2>/dev/null; then break; fi
        sleep 0.5
    done
    if ! rmq_port_open; then
        tail -n 30 "$rd/startup.log" >&2 || true
        tail -n 30 "$rd/log/$rmq_node.log" >&2 || true
        die "RabbitMQ did not start (logs in $rd)"
    fi
    rmq_ctl await_startup --timeout 120 >/dev/null \
        || { tail -n 30 "$rd/log/$rmq_node.log" >&2; die "RabbitMQ did not finish booting (logs in $rd)"; }
    p=$(rmq_pid) || true
    log "RabbitMQ ready on 127.0.0.1:$rmq_port (pid ${p:-?})"
}
rmq_stop() {
    local p
    if rmq_running; then
        log "stopping RabbitMQ"
        p=$(rmq_pid)
        rmq_ctl stop >/dev/null 2>&1 || true
        for _ in $(seq 1 120); do
            kill -0 "$p" 2>/dev/null || break
            sleep 0.5
        done
        if kill -0 "$p" 2>/dev/null; then
            log "RabbitMQ did not stop in 60 s; killing pid $p"
            kill -9 "$p" 2>/dev/null || true
        fi
    fi
    rm -f "$(rmq_dir)/rabbit.pid"
    # The epmd the node started on its own port (no other node uses that port).
    if command -v epmd >/dev/null 2>&1; then
        ERL_EPMD_PORT="$rmq_epmd_port" epmd -kill >/dev/null 2>&1 || true
    fi
}

print_env() {
    echo "export KEEL_TEST_PG='postgresql://keel@127.0.0.1:$pg_port/keel_test'"
    echo "export KEEL_TEST_MYSQL='mysql://keel:keel@127.0.0.1:$my_port/keel_test'"
    echo "export KEEL_TEST_RABBITMQ='rabbitmq://keel:keel@127.0.0.1:$rmq_port/keel'"
}

cmd=${1:-}
what=${2:-all}
case "$cmd" in
    start)
        case "$what" in pg) pg_start ;; mysql) my_start ;; rabbitmq) rmq_locked rmq_start ;; all) pg_start; my_start; rmq_locked rmq_start ;; *) die "unknown service '$what'" ;; esac ;;
    stop)
        case "$what" in pg) pg_stop ;; mysql) my_stop ;; rabbitmq) rmq_locked rmq_stop ;; all) pg_stop; my_stop; rmq_locked rmq_stop ;; *) die "unknown service '$what'" ;; esac ;;
    status)
        bin=$(pg_bin)
        if as_pg "$bin/pg_ctl" -D "$(pg_dir)/data" status >/dev/null 2>&1; then echo "pg: running on $pg_port"; else echo "pg: stopped"; fi
        if my_running; then echo "mysql: running on $my_port"; else echo "mysql: stopped"; fi
        if rmq_running; then echo "rabbitmq: running on $rmq_port"; else echo "rabbitmq: stopped"; fi ;;
    env) print_env ;;
    *) die "usage: $0 start|stop [pg|mysql|rabbitmq|all] | status | env" ;;
esac
