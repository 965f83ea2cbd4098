#!/usr/bin/env bash
# Starts or stops a throwaway PostgreSQL 15 server for the tests.
#
#   scripts/pg-test-server.sh start DIR   # prints nothing; writes DIR/env
#   scripts/pg-test-server.sh stop DIR
#   scripts/pg-test-server.sh restart DIR      # fast stop, then start
#   scripts/pg-test-server.sh kill DIR         # SIGKILL to every process
#   scripts/pg-test-server.sh start-again DIR  # after kill: same dir, port
#
# The server runs as the unprivileged `postgres` user (created by Debian's
# postgresql-common) from a data directory under DIR, listens only on
# 127.0.0.1 on a free port, requires scram-sha-256 passwords, and has SSL on
# with a CA and a server certificate (CN and SAN localhost / 127.0.0.1) that
# this script generates. DIR/env holds the connection settings the tests
# read (PAC_TEST_PG_*), including a role whose password has spaces, quotes,
# a backslash and '='.
set -euo pipefail

cmd=${1:?usage: pg-test-server.sh start|stop|restart|kill|start-again DIR}
dir=${2:?usage: pg-test-server.sh start|stop|restart|kill|start-again DIR}
PGBIN=/usr/lib/postgresql/15/bin
RUN_AS=postgres

as_pg() {
  if [ "$(id -un)" = "$RUN_AS" ]; then "$@"; else runuser -u "$RUN_AS" -- "$@"; fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

case "$cmd" in
start)
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  chown "$RUN_AS" "$dir"
  port=$(free_port)
  data="$dir/data"
  tls="$dir/tls"
  mkdir -p "$tls"

  # Certificates: a CA, a server certificate it signs, and a second,
  # unrelated CA for the "wrong CA" tests.
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=pac test CA" \
    -keyout "$tls/ca.key" -out "$tls/ca.crt" >/dev/null 2>&1
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=pac other CA" \
    -keyout "$tls/other-ca.key" -out "$tls/other-ca.crt" >/dev/null 2>&1
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$tls/server.key" -out "$tls/server.csr" >/dev/null 2>&1
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$tls/san.ext"
  openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" \
    -CAcreateserial -days 2 -extfile "$tls/san.ext" -out "$tls/server.crt" >/dev/null 2>&1
  chown -R "$RUN_AS" "$tls"
  chmod 600 "$tls/server.key"

  super_pw="super-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"
  printf '%s\n' "$super_pw" >"$dir/superuser.pw"
  chown "$RUN_AS" "$dir/superuser.pw"
  as_pg "$PGBIN/initdb" -D "$data" -U postgres --auth=scram-sha-256 \
    --pwfile="$dir/superuser.pw" -E UTF8 --no-instructions >"$dir/initdb.log" 2>&1

  cat >>"$data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
max_connections = 200
ssl = on
ssl_cert_file = '$tls/server.crt'
ssl_key_file = '$tls/server.key'
password_encryption = 'scram-sha-256'
shared_buffers = 128MB
logging_collector = off
CONF
  cat >"$data/pg_hba.conf" <<HBA
local all all scram-sha-256
host  all all 127.0.0.1/32 scram-sha-256
HBA
  as_pg "$PGBIN/pg_ctl" -D "$data" -l "$dir/server.log" -w -t 60 start >/dev/null

  # The test role and database. The password is passed as a psql variable,
  # never glued into SQL text.
  user_pw=$'p@ss w\'rd "x" \\back=slash'
  printf '%s' "$user_pw" >"$dir/user.pw"
  PGPASSWORD="$super_pw" "$PGBIN/psql" -q -h 127.0.0.1 -p "$port" -U postgres -d postgres \
    -v ON_ERROR_STOP=1 -v pw="$user_pw" <<'SQL'
CREATE ROLE pac_user LOGIN PASSWORD :'pw';
CREATE DATABASE pac_concurrency OWNER pac_user;
SQL

  cat >"$dir/env" <<ENV
export PAC_TEST_PG_HOST=127.0.0.1
export PAC_TEST_PG_PORT=$port
export PAC_TEST_PG_DATABASE=pac_concurrency
export PAC_TEST_PG_USER=pac_user
export PAC_TEST_PG_PASSWORD_FILE=$dir/user.pw
export PAC_TEST_PG_SUPERUSER_PASSWORD_FILE=$dir/superuser.pw
export PAC_TEST_PG_CA=$tls/ca.crt
export PAC_TEST_PG_OTHER_CA=$tls/other-ca.crt
export PAC_TEST_PG_DATA=$data
export PAC_TEST_PG_CTL="$(readlink -f "$0") restart $dir"
export PAC_TEST_PG_KILL="$(readlink -f "$0") kill $dir"
export PAC_TEST_PG_START="$(readlink -f "$0") start-again $dir"
ENV
  ;;
restart)
  # Used by the restart test: a fast stop and a start on the same port.
  as_pg "$PGBIN/pg_ctl" -D "$dir/data" -m fast -w -t 60 restart -l "$dir/server.log" >/dev/null
  ;;
kill)
  # The outage tests: the server dies as on a machine crash (SIGKILL to the
  # postmaster and every backend at once; no shutdown, crash recovery on
  # the next start). Returns once they are all gone.
  pid=$(head -1 "$dir/data/postmaster.pid")
  pids="$pid $(pgrep -P "$pid" | tr '\n' ' ' || true)"
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null || true
  for _ in $(seq 1 500); do
    alive=0
    for p in $pids; do
      st=$(ps -o stat= -p "$p" 2>/dev/null || true)
      case "$st" in "" | Z*) ;; *) alive=1 ;; esac
    done
    [ "$alive" -eq 0 ] && break
    sleep 0.01
  done
  # A killed postmaster may stay a zombie until PID 1 reaps it, and the
  # next start would take its pid in the lock files for a live server.
  rm -f "$dir/data/postmaster.pid" "$dir"/.s.PGSQL.*
  ;;
start-again)
  # After `kill`: starts on the same data directory and port; returns once
  # the server accepts connections (crash recovery done).
  as_pg "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null
  ;;
stop)
  if [ -d "$dir/data" ]; then
    as_pg "$PGBIN/pg_ctl" -D "$dir/data" -m immediate -w -t 60 stop >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
  ;;
*)
  echo "usage: pg-test-server.sh start|stop|restart|kill|start-again DIR" >&2
  exit 2
  ;;
esac
