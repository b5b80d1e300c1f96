#!/usr/bin/env bash
# A real MLflow tracking server on PostgreSQL on this machine, for tests, CI and trying the team
# set-up (README "Team set-up"). PostgreSQL from Debian packages, its cluster in a directory of
# its own (not the Debian system cluster), both servers on loopback ports only.
#
#   scripts/local-mlflow.sh install   apt-get install PostgreSQL (root; only when its binaries
#                                     are missing); checks that the Python driver is installed
#   scripts/local-mlflow.sh start     initdb (first time), start PostgreSQL, create the database,
#                                     start `mlflow server --serve-artifacts`; wait until both
#                                     answer; print MLFLOW_TRACKING_URI=... (idempotent: running
#                                     parts are left alone, so it also restarts a killed server)
#   scripts/local-mlflow.sh stop      stop the MLflow server and PostgreSQL (by pid / pg_ctl)
#   scripts/local-mlflow.sh status    exit 0 only when PostgreSQL and the MLflow server answer
#
# Environment knobs:
#   MLFLOW_LOCAL_DIR=/tmp/defectbench-mlflow-<uid>  cluster, artifacts, logs, pid and password files
#   MLFLOW_PG_PORT=55432     PostgreSQL port (127.0.0.1)
#   MLFLOW_PORT=55000        MLflow server port (127.0.0.1)
#   MLFLOW_START_TIMEOUT=120 seconds to wait for each server to answer
#   MLFLOW_BIN=mlflow        the mlflow command (the project's venv: .venv/bin/mlflow)
#
# As root, PostgreSQL runs as the `postgres` system user (it refuses to run as root); otherwise
# as the calling user, so a non-root user with PostgreSQL installed needs no root at all.
set -euo pipefail

LOCAL_DIR=${MLFLOW_LOCAL_DIR:-${TMPDIR:-/tmp}/defectbench-mlflow-$(id -u)}
PG_PORT=${MLFLOW_PG_PORT:-55432}
MLFLOW_PORT=${MLFLOW_PORT:-55000}
START_TIMEOUT=${MLFLOW_START_TIMEOUT:-120}
MLFLOW_BIN=${MLFLOW_BIN:-mlflow}
PG_DATA=$LOCAL_DIR/pgdata
PG_SOCKETS=$LOCAL_DIR/sockets
PG_LOG=$LOCAL_DIR/postgresql.log
PASSWORD_FILE=$LOCAL_DIR/password
ARTIFACTS=$LOCAL_DIR/artifacts
MLFLOW_LOG=$LOCAL_DIR/mlflow.log
MLFLOW_PID=$LOCAL_DIR/mlflow.pid
DB_USER=defectbench
DB_NAME=mlflow

SCRIPT_NAME=local-mlflow
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

pg_bin() {
    # The newest installed PostgreSQL major version (Debian keeps binaries off PATH).
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
    [[ -n $dir && -x $dir/initdb ]] || return 1
    echo "$dir"
}

# as_pg CMD...: run a PostgreSQL server command as its owner (postgres when we are root).
as_pg() {
    if [[ $(id -u) -eq 0 ]]; then
        timeout 120 runuser -u postgres -- "$@"
    else
        timeout 120 "$@"
    fi
}

cmd_install() {
    if pg_bin >/dev/null; then
        log "PostgreSQL already installed: $(pg_bin)"
    else
        [[ $(id -u) -eq 0 ]] || die "PostgreSQL is missing and installing it needs root (apt-get install postgresql)"
        log "installing PostgreSQL (Debian packages)"
        # not the Debian system cluster: we run our own
        apt_install_without_daemons postgresql
        pg_bin >/dev/null || die "apt-get installed postgresql but no /usr/lib/postgresql/*/bin/initdb was found"
        log "installed: $(pg_bin)"
    fi
    local python
    python=$(dirname "$(command -v "$MLFLOW_BIN" || echo /nonexistent/mlflow)")/python
    if [[ -x $python ]] && ! timeout 60 "$python" -c "import psycopg2" 2>/dev/null; then
        die "the PostgreSQL driver is missing in $(dirname "$python"): pip install -e . (pyproject pins psycopg2-binary)"
    fi
}

password() {
    if [[ ! -s $PASSWORD_FILE ]]; then
        (umask 077 && head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$PASSWORD_FILE")
    fi
    cat "$PASSWORD_FILE"
}

backend_uri() { echo "postgresql://$DB_USER:$(password)@127.0.0.1:$PG_PORT/$DB_NAME"; }
tracking_uri() { echo "http://127.0.0.1:$MLFLOW_PORT"; }

pg_running() { [[ -f $PG_DATA/PG_VERSION ]] && as_pg "$(pg_bin)/pg_ctl" status -D "$PG_DATA" >/dev/null 2>&1; }

psql_db() {
    PGPASSWORD=$(password) timeout 60 "$(pg_bin)/psql" -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" -v ON_ERROR_STOP=1 -qtA "$@"
}

start_postgres() {
    local bin
    bin=$(pg_bin) || die "PostgreSQL is not installed: run 'scripts/local-mlflow.sh install' first"
    mkdir -p "$LOCAL_DIR" "$ARTIFACTS"
    chmod 755 "$LOCAL_DIR"
    password >/dev/null
    if [[ ! -f $PG_DATA/PG_VERSION ]]; then
        rm -rf "$PG_DATA"
        mkdir -p "$PG_DATA" "$PG_SOCKETS"
        local pwcopy=$PG_DATA.pw
        cp "$PASSWORD_FILE" "$pwcopy"
        if [[ $(id -u) -eq 0 ]]; then
            chown postgres: "$PG_DATA" "$PG_SOCKETS" "$pwcopy"
        fi
        log "initdb $PG_DATA"
        as_pg "$bin/initdb" -D "$PG_DATA" -U "$DB_USER" --pwfile="$pwcopy" --auth=scram-sha-256 \
            -E UTF8 --locale=C >"$LOCAL_DIR/initdb.log" 2>&1 || { rm -f "$pwcopy"; die "initdb failed: $(tail -n 3 "$LOCAL_DIR/initdb.log")"; }
        rm -f "$pwcopy"
    fi
    if ! pg_running; then
        # Loopback only; the socket in our own directory (the Debian default /run/postgresql may
        # belong to the system cluster).
        touch "$PG_LOG"
        if [[ $(id -u) -eq 0 ]]; then chown postgres: "$PG_LOG"; fi
        as_pg "$bin/pg_ctl" start -D "$PG_DATA" -l "$PG_LOG" -w -t "$START_TIMEOUT" \
            -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -c unix_socket_directories=$PG_SOCKETS" >/dev/null \
            || die "PostgreSQL did not start on 127.0.0.1:$PG_PORT: $(tail -n 3 "$PG_LOG")"
    fi
    if [[ -z $(psql_db -d postgres -c "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'") ]]; then
        psql_db -d postgres -c "CREATE DATABASE $DB_NAME" || die "could not create database $DB_NAME"
    fi
}

mlflow_alive() { [[ -s $MLFLOW_PID ]] && kill -0 "$(cat "$MLFLOW_PID")" 2>/dev/null; }

mlflow_healthy() {
    timeout 10 python3 -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('$(tracking_uri)/health', timeout=5).read().strip() != b'OK')" 2>/dev/null
}

start_mlflow() {
    if mlflow_alive && mlflow_healthy; then
        return 0
    fi
    stop_mlflow
    command -v "$MLFLOW_BIN" >/dev/null || die "'$MLFLOW_BIN' not found: activate the project's venv or set MLFLOW_BIN"
    # setsid: the server and its workers form one process group, stopped together by its id.
    setsid "$MLFLOW_BIN" server --backend-store-uri "$(backend_uri)" --serve-artifacts \
        --artifacts-destination "$ARTIFACTS" --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
        >"$MLFLOW_LOG" 2>&1 </dev/null &
    echo $! >"$MLFLOW_PID"
    local deadline=$((SECONDS + START_TIMEOUT))
    while ((SECONDS < deadline)); do
        mlflow_alive || die "mlflow server exited: $(tail -n 5 "$MLFLOW_LOG")"
        mlflow_healthy && return 0
        sleep 0.5
    done
    die "mlflow server not answering at $(tracking_uri) after ${START_TIMEOUT}s (see $MLFLOW_LOG)"
}

stop_mlflow() {
    mlflow_alive || { rm -f "$MLFLOW_PID"; return 0; }
    local pid i
    pid=$(cat "$MLFLOW_PID")
    kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
    for i in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$MLFLOW_PID"; return 0; }
        sleep 0.1
    done
    log "mlflow server (pid $pid) still running 30 s after SIGTERM; sending SIGKILL"
    kill -9 -- "-$pid" 2>/dev/null || kill -9 "$pid" 2>/dev/null || true
    rm -f "$MLFLOW_PID"
}

cmd_start() {
    local t0=$SECONDS
    start_postgres
    start_mlflow
    log "up in $((SECONDS - t0)) s: PostgreSQL 127.0.0.1:$PG_PORT/$DB_NAME, MLflow $(tracking_uri), artifacts in $ARTIFACTS"
    echo "MLFLOW_TRACKING_URI=$(tracking_uri)"
}

cmd_stop() {
    stop_mlflow
    if pg_running; then
        as_pg "$(pg_bin)/pg_ctl" stop -D "$PG_DATA" -m fast -w -t 60 >/dev/null
    fi
    log "stopped"
}

cmd_status() {
    local ok=0
    if pg_running; then echo "postgresql: running (127.0.0.1:$PG_PORT)"; else echo "postgresql: stopped"; ok=1; fi
    if mlflow_alive && mlflow_healthy; then
        echo "mlflow: running (pid $(cat "$MLFLOW_PID"), $(tracking_uri))"
    else
        echo "mlflow: stopped"
        ok=1
    fi
    return $ok
}

dispatch "$@"
