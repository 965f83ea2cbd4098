#!/usr/bin/env bash
# Starts or stops throwaway etcd 3.4 servers (Debian's etcd-server) on free
# 127.0.0.1 ports, each in its own data directory under DIR.
#
#   scripts/etcd-test-server.sh single  DIR   # one node; writes DIR/env
#   scripts/etcd-test-server.sh cluster DIR   # three nodes; writes DIR/env
#   scripts/etcd-test-server.sh secure  DIR   # TLS + client certs + auth
#   scripts/etcd-test-server.sh stop    DIR
#
# DIR/env exports PAC_TEST_ETCD_* for the tests; DIR/pids lists the node
# pids (one per line, in member order) so a test can kill one.
set -euo pipefail
cmd=${1:?usage: etcd-test-server.sh single|cluster|secure|stop DIR}
dir=${2:?usage: etcd-test-server.sh single|cluster|secure|stop DIR}
ETCD=${ETCD:-/usr/bin/etcd}
ETCDCTL=${ETCDCTL:-/usr/bin/etcdctl}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_healthy() {  # endpoint [ctl flags...]
  local ep=$1
  shift
  for _ in $(seq 1 100); do
    if ETCDCTL_API=3 "$ETCDCTL" --endpoints="$ep" "$@" endpoint health >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  echo "etcd at $ep did not become healthy" >&2
  return 1
}

case "$cmd" in
single | cluster)
  mkdir -p "$dir"
  n=1
  [ "$cmd" = cluster ] && n=3
  declare -a cports pports
  for i in $(seq 1 "$n"); do
    cports[$i]=$(free_port)
    pports[$i]=$(free_port)
  done
  initial=""
  for i in $(seq 1 "$n"); do
    initial+="${initial:+,}n$i=http://127.0.0.1:${pports[$i]}"
  done
  : >"$dir/pids"
  endpoints=""
  for i in $(seq 1 "$n"); do
    "$ETCD" --name "n$i" --data-dir "$dir/n$i" \
      --listen-client-urls "http://127.0.0.1:${cports[$i]}" \
      --advertise-client-urls "http://127.0.0.1:${cports[$i]}" \
      --listen-peer-urls "http://127.0.0.1:${pports[$i]}" \
      --initial-advertise-peer-urls "http://127.0.0.1:${pports[$i]}" \
      --initial-cluster "$initial" --initial-cluster-state new \
      --initial-cluster-token "pac-$$" \
      --heartbeat-interval 50 --election-timeout 500 \
      >"$dir/n$i.log" 2>&1 &
    echo $! >>"$dir/pids"
    endpoints+="${endpoints:+,}127.0.0.1:${cports[$i]}"
  done
  for i in $(seq 1 "$n"); do wait_healthy "127.0.0.1:${cports[$i]}"; done
  var=PAC_TEST_ETCD
  [ "$cmd" = cluster ] && var=PAC_TEST_ETCD_CLUSTER
  cat >"$dir/env" <<ENV
export ${var}_ENDPOINTS=$endpoints
export ${var}_PIDS=$dir/pids
ENV
  ;;
secure)
  mkdir -p "$dir/tls"
  t="$dir/tls"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=pac etcd CA" \
    -keyout "$t/ca.key" -out "$t/ca.crt" >/dev/null 2>&1
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=pac other CA" \
    -keyout "$t/other-ca.key" -out "$t/other-ca.crt" >/dev/null 2>&1
  openssl req -newkey rsa:2048 -nodes -subj "/CN=etcd.test" \
    -keyout "$t/server.key" -out "$t/server.csr" >/dev/null 2>&1
  printf 'subjectAltName=DNS:etcd.test,DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' >"$t/server.ext"
  openssl x509 -req -in "$t/server.csr" -CA "$t/ca.crt" -CAkey "$t/ca.key" \
    -CAcreateserial -days 2 -extfile "$t/server.ext" -out "$t/server.crt" >/dev/null 2>&1
  openssl req -newkey rsa:2048 -nodes -subj "/CN=pac-client" \
    -keyout "$t/client.key" -out "$t/client.csr" >/dev/null 2>&1
  printf 'extendedKeyUsage=clientAuth\n' >"$t/client.ext"
  openssl x509 -req -in "$t/client.csr" -CA "$t/ca.crt" -CAkey "$t/ca.key" \
    -CAcreateserial -days 2 -extfile "$t/client.ext" -out "$t/client.crt" >/dev/null 2>&1
  cport=$(free_port)
  pport=$(free_port)
  "$ETCD" --name s1 --data-dir "$dir/s1" \
    --listen-client-urls "https://127.0.0.1:$cport" \
    --advertise-client-urls "https://127.0.0.1:$cport" \
    --listen-peer-urls "http://127.0.0.1:$pport" \
    --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
    --initial-cluster "s1=http://127.0.0.1:$pport" \
    --cert-file "$t/server.crt" --key-file "$t/server.key" \
    --client-cert-auth --trusted-ca-file "$t/ca.crt" \
    >"$dir/s1.log" 2>&1 &
  echo $! >"$dir/pids"
  ctl=(--cacert "$t/ca.crt" --cert "$t/client.crt" --key "$t/client.key")
  wait_healthy "127.0.0.1:$cport" "${ctl[@]}"
  pw=$'p@ss w\'rd "x" \\=y'
  printf '%s' "$pw" >"$dir/user.pw"
  export ETCDCTL_API=3
  "$ETCDCTL" --endpoints="127.0.0.1:$cport" "${ctl[@]}" user add root --new-user-password="root-$$" >/dev/null
  "$ETCDCTL" --endpoints="127.0.0.1:$cport" "${ctl[@]}" user add pac --new-user-password="$pw" >/dev/null
  "$ETCDCTL" --endpoints="127.0.0.1:$cport" "${ctl[@]}" role add pac >/dev/null
  "$ETCDCTL" --endpoints="127.0.0.1:$cport" "${ctl[@]}" role grant-permission pac --prefix=true readwrite / >/dev/null
  "$ETCDCTL" --endpoints="127.0.0.1:$cport" "${ctl[@]}" user grant-role pac pac >/dev/null
  "$ETCDCTL" --endpoints="127.0.0.1:$cport" "${ctl[@]}" user grant-role root root >/dev/null
  "$ETCDCTL" --endpoints="127.0.0.1:$cport" "${ctl[@]}" auth enable >/dev/null
  cat >"$dir/env" <<ENV
export PAC_TEST_ETCD_SECURE_ENDPOINT=127.0.0.1:$cport
export PAC_TEST_ETCD_CA=$t/ca.crt
export PAC_TEST_ETCD_OTHER_CA=$t/other-ca.crt
export PAC_TEST_ETCD_CLIENT_CERT=$t/client.crt
export PAC_TEST_ETCD_CLIENT_KEY=$t/client.key
export PAC_TEST_ETCD_USER=pac
export PAC_TEST_ETCD_PASSWORD_FILE=$dir/user.pw
ENV
  ;;
stop)
  if [ -f "$dir/pids" ]; then
    while read -r pid; do kill "$pid" 2>/dev/null || true; done <"$dir/pids"
    sleep 0.2
    while read -r pid; do kill -9 "$pid" 2>/dev/null || true; done <"$dir/pids"
  fi
  rm -rf "$dir"
  ;;
*)
  echo "usage: etcd-test-server.sh single|cluster|secure|stop DIR" >&2
  exit 2
  ;;
esac
