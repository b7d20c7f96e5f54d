#!/usr/bin/env bash
# Runs the certmint benchmark from a clean state on this machine: release
# build, a fresh SoftHSM2 token and SQLite database (synchronous=FULL), a
# certmint server, then certmint-bench at each requested concurrency.
# Everything is local; nothing reaches the internet. The servers and the
# temporary directory are removed on exit.
#
# Modes (CERTMINT_BENCH_MODE, or the first argument):
#   enroll  (default) `certmint-bench enroll`: enrollment beside the raw
#           C_Sign rate and a cfssl server with a software P-256 CA (needs
#           cfssl and cfssljson)
#   renew   `certmint-bench renew`: renewal over mutual TLS, one new
#           connection per renewal, beside the bare mTLS handshake rate of
#           the same server (no cfssl)
#   crl     `certmint-bench crl sizes|sign|latency` (CERTMINT_BENCH_CRL_PHASES):
#           CRL sizes of a large population (no server), the signing of a
#           shard of 10 000 revoked certificates (the server runs with
#           crl.shards = CERTMINT_BENCH_CRL_SHARDS, 1 by default, so every
#           certificate lands in one shard), then revocation-to-served-CRL
#           latency at a steady revocation rate
#
# Environment (all optional):
#   CERTMINT_BENCH_MODE         enroll | renew                    (enroll)
#   CERTMINT_BENCH_TOKEN        softhsm2 | hsm-sim                (softhsm2)
#   CERTMINT_BENCH_HSM_LATENCY  hsm-sim latency per PKCS#11 call, e.g. 200ms
#   CERTMINT_BENCH_SESSION_POOL_SIZE  the server's [hsm] session_pool_size (8)
#   CERTMINT_BENCH_SIGN_COUNT   signatures in the raw C_Sign phase (4000)
#   CERTMINT_BENCH_REQUESTS     timed requests (renew: holders)   (2000)
#   CERTMINT_BENCH_CONCURRENCY  space-separated concurrencies     ("8")
#   CERTMINT_BENCH_CFSSL        enroll: how cfssl runs             (plain)
#                               plain:   plain HTTP, no database (the bar
#                                        set for certmint)
#                               durable: HTTPS (-tls-cert) and every
#                                        certificate recorded in SQLite
#                                        (-db-config; WAL, synchronous=FULL,
#                                        as certmint), i.e. the transport and
#                                        durability certmint pays for
#   CERTMINT_BENCH_ROUNDS       enroll: alternate certmint and cfssl R times
#                               on N/R requests each; adds the median ratio (1)
#   CERTMINT_BENCH_WARMUP       warm-up requests per worker       (5)
#   CERTMINT_BENCH_PORT         certmint HTTPS port               (18443)
#   CERTMINT_BENCH_CRL_PORT     certmint plain-HTTP CRL listener  (18080)
#   CERTMINT_BENCH_CRL_PHASES   crl: phases, in order   ("sizes sign latency")
#   CERTMINT_BENCH_CRL_SHARDS   crl: the server's [crl] shards    (1)
#   CERTMINT_BENCH_CRL_ENTRIES  crl sign: revoked certificates    (10000)
#   CERTMINT_BENCH_CRL_PROBES   crl sign: single revocations timed into the full shard (20)
#   CERTMINT_BENCH_CRL_RATE     crl latency: revocations/s        (100)
#   CERTMINT_BENCH_CRL_SECONDS  crl latency: seconds of revocations (30)
#   CFSSL_BENCH_PORT            cfssl HTTP port                   (18888)
#   CERTMINT_BENCH_JSON=1       print JSON reports instead of tables
#   CERTMINT_BENCH_KEEP=1       keep the temporary directory (logs, db)
#   CERTMINT_BENCH_NO_BUILD=1   skip `cargo build` (binaries must exist)
#   CERTMINT_BENCH_DB_POOL_SIZE set [database] pool_size        (server default: 16)
#   CERTMINT_BENCH_WORKERS      set [server] workers            (server default: 0 = one per CPU)
#   CERTMINT_LOG                server log filter               (server default: info)
#   SOFTHSM2_MODULE             PKCS#11 module (/usr/lib/softhsm/libsofthsm2.so)
#   CFSSL                       cfssl binary (cfssl on $PATH)
set -euo pipefail

MODE=${1:-${CERTMINT_BENCH_MODE:-enroll}}
case "$MODE" in
    enroll | renew | crl) ;;
    *) echo "run.sh: unknown mode '$MODE' (enroll, renew or crl)" >&2; exit 2 ;;
esac
REQUESTS=${CERTMINT_BENCH_REQUESTS:-2000}
CONCURRENCY=${CERTMINT_BENCH_CONCURRENCY:-8}
WARMUP=${CERTMINT_BENCH_WARMUP:-5}
PORT=${CERTMINT_BENCH_PORT:-18443}
CRL_PORT=${CERTMINT_BENCH_CRL_PORT:-18080}
CFSSL_PORT=${CFSSL_BENCH_PORT:-18888}
CFSSL=${CFSSL:-cfssl}
TOKEN=${CERTMINT_BENCH_TOKEN:-softhsm2}
CFSSL_SETUP=${CERTMINT_BENCH_CFSSL:-plain}
case "$CFSSL_SETUP" in
    plain | durable) ;;
    *) echo "run.sh: CERTMINT_BENCH_CFSSL must be plain or durable" >&2; exit 2 ;;
esac

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
SERVER_BIN=$TARGET/release/certmint-server
BENCH_BIN=$TARGET/release/certmint-bench
case "$TOKEN" in
    softhsm2) MODULE=${SOFTHSM2_MODULE:-/usr/lib/softhsm/libsofthsm2.so} ;;
    hsm-sim) MODULE=$TARGET/release/libhsm_sim.so ;;
    *) echo "run.sh: CERTMINT_BENCH_TOKEN must be softhsm2 or hsm-sim" >&2; exit 2 ;;
esac
if [ -n "${CERTMINT_BENCH_HSM_LATENCY:-}" ] && [ "$TOKEN" != hsm-sim ]; then
    echo "run.sh: CERTMINT_BENCH_HSM_LATENCY needs CERTMINT_BENCH_TOKEN=hsm-sim" >&2
    exit 2
fi

TOOLS=(curl)
PORTS=("$PORT" "$CRL_PORT")
if [ "$MODE" = enroll ]; then
    TOOLS+=("$CFSSL" cfssljson)
    [ "$CFSSL_SETUP" = durable ] && TOOLS+=(sqlite3)
    PORTS+=("$CFSSL_PORT")
fi
for tool in "${TOOLS[@]}"; do
    command -v "$tool" >/dev/null || { echo "run.sh: $tool not found" >&2; exit 1; }
done
for port in "${PORTS[@]}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "run.sh: port $port is in use; set CERTMINT_BENCH_PORT / CFSSL_BENCH_PORT" >&2
        exit 1
    fi
done

if [ "${CERTMINT_BENCH_NO_BUILD:-0}" != 1 ]; then
    (cd "$ROOT" && cargo build --release -p certmint-server -p certmint-e2e -p hsm-sim)
fi
[ -e "$MODULE" ] || { echo "run.sh: PKCS#11 module $MODULE not found" >&2; exit 1; }

DIR=$(mktemp -d "${TMPDIR:-/tmp}/certmint-bench.XXXXXX")
case "$DIR" in
    *[\"\\]*) echo "run.sh: TMPDIR must not hold a quote or a backslash: $DIR" >&2; rmdir "$DIR"; exit 2 ;;
esac
SERVER_PID=
CFSSL_PID=
cleanup() {
    local pid
    for pid in "$SERVER_PID" "$CFSSL_PID"; do
        if [ -n "$pid" ]; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    if [ "${CERTMINT_BENCH_KEEP:-0}" = 1 ]; then
        echo "run.sh: kept $DIR" >&2
    else
        rm -rf "$DIR"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- SoftHSM2 token and certmint CA -----------------------------------------
mkdir -p "$DIR/tokens"
cat >"$DIR/softhsm2.conf" <<EOF
directories.tokendir = $DIR/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
EOF
export SOFTHSM2_CONF=$DIR/softhsm2.conf
export HSM_SIM_DIR=$DIR/hsm-sim
unset HSM_SIM_CONFIG
# Throwaway PINs for a throwaway token.
export CERTMINT_HSM_PIN=bench-user-pin
export CERTMINT_HSM_SO_PIN=bench-so-pin

echo "== certmint init ($DIR)" >&2
"$SERVER_BIN" init --config "$DIR/certmint.toml" --init-token \
    --listen "127.0.0.1:$PORT" --crl-listen "127.0.0.1:$CRL_PORT" \
    --database-url "sqlite://$DIR/certmint.db" \
    --pkcs11-module "$MODULE" >"$DIR/init.log"
# Optional tuning, for experiments (the defaults are what `init` writes).
if [ -n "${CERTMINT_BENCH_DB_POOL_SIZE:-}" ]; then
    sed -i "s/^# pool_size = 16\$/pool_size = $CERTMINT_BENCH_DB_POOL_SIZE/" "$DIR/certmint.toml"
    grep -q "^pool_size = " "$DIR/certmint.toml"
fi
if [ -n "${CERTMINT_BENCH_SESSION_POOL_SIZE:-}" ]; then
    sed -i "s/^# session_pool_size = 8\$/session_pool_size = $CERTMINT_BENCH_SESSION_POOL_SIZE/" "$DIR/certmint.toml"
    grep -q "^session_pool_size = " "$DIR/certmint.toml"
fi
if [ -n "${CERTMINT_BENCH_HSM_LATENCY:-}" ]; then
    # Every PKCS#11 call the server (and the raw C_Sign phase) makes waits
    # this long, outside hsm-sim's lock, as on a slow network HSM.
    "$TARGET/release/hsm-sim" fault set --latency "$CERTMINT_BENCH_HSM_LATENCY" >&2
fi
if [ "$MODE" = crl ]; then
    sed -i "s/^# shards = 16\$/shards = ${CERTMINT_BENCH_CRL_SHARDS:-1}/" "$DIR/certmint.toml"
    grep -q "^shards = " "$DIR/certmint.toml"
fi
if [ -n "${CERTMINT_BENCH_WORKERS:-}" ]; then
    sed -i "s/^# workers = 0 .*/workers = $CERTMINT_BENCH_WORKERS/" "$DIR/certmint.toml"
    grep -q "^workers = " "$DIR/certmint.toml"
fi
"$SERVER_BIN" serve --config "$DIR/certmint.toml" >"$DIR/server.log" 2>&1 &
SERVER_PID=$!
"$SERVER_BIN" admin-token --config "$DIR/certmint.toml" >"$DIR/admin.jwt"

# --- cfssl with a software P-256 CA, no policy (enroll mode) ----------------
CFSSL_SCHEME=http
CFSSL_ARGS=()
if [ "$MODE" = enroll ]; then
    mkdir -p "$DIR/cfssl"
    cat >"$DIR/cfssl/ca-csr.json" <<'EOF'
{"CN": "cfssl bench CA", "key": {"algo": "ecdsa", "size": 256}, "names": [{"O": "certmint-bench"}]}
EOF
    cat >"$DIR/cfssl/config.json" <<'EOF'
{"signing": {"default": {"expiry": "24h", "usages": ["digital signature", "client auth"]},
             "profiles": {"tls": {"expiry": "24h", "usages": ["digital signature", "server auth"]}}}}
EOF
    (cd "$DIR/cfssl" && "$CFSSL" genkey -initca ca-csr.json 2>/dev/null | cfssljson -bare ca)
    CFSSL_SERVE=(-address 127.0.0.1 -port "$CFSSL_PORT"
        -ca "$DIR/cfssl/ca.pem" -ca-key "$DIR/cfssl/ca-key.pem" -config "$DIR/cfssl/config.json")
    if [ "$CFSSL_SETUP" = durable ]; then
        # HTTPS with a P-256 server certificate from the same CA, and every
        # signed certificate inserted into cfssl's certdb (its 1.2 schema),
        # SQLite in WAL mode with synchronous=FULL set on each of cfssl's
        # connections (go-sqlite3 DSN parameters): each commit is synced,
        # as certmint's are.
        cat >"$DIR/cfssl/tls-csr.json" <<'EOF'
{"CN": "127.0.0.1", "hosts": ["127.0.0.1"], "key": {"algo": "ecdsa", "size": 256}}
EOF
        (cd "$DIR/cfssl" && "$CFSSL" gencert -ca ca.pem -ca-key ca-key.pem -config config.json \
            -profile tls tls-csr.json 2>/dev/null | cfssljson -bare tls)
        sqlite3 "$DIR/cfssl/certs.db" >/dev/null <<'EOF'
PRAGMA journal_mode = WAL;
CREATE TABLE certificates (
  serial_number            blob NOT NULL,
  authority_key_identifier blob NOT NULL,
  ca_label                 blob,
  status                   blob NOT NULL,
  reason                   int,
  expiry                   timestamp,
  revoked_at               timestamp,
  pem                      blob NOT NULL,
  PRIMARY KEY(serial_number, authority_key_identifier)
);
CREATE TABLE ocsp_responses (
  serial_number            blob NOT NULL,
  authority_key_identifier blob NOT NULL,
  body                     blob NOT NULL,
  expiry                   timestamp,
  PRIMARY KEY(serial_number, authority_key_identifier),
  FOREIGN KEY(serial_number, authority_key_identifier)
    REFERENCES certificates(serial_number, authority_key_identifier)
);
EOF
        printf '{"driver": "sqlite3", "data_source": "%s?_journal_mode=WAL&_synchronous=FULL&_busy_timeout=10000"}\n' \
            "$DIR/cfssl/certs.db" >"$DIR/cfssl/db-config.json"
        CFSSL_SERVE+=(-tls-cert "$DIR/cfssl/tls.pem" -tls-key "$DIR/cfssl/tls-key.pem"
            -db-config "$DIR/cfssl/db-config.json")
        CFSSL_SCHEME=https
        CFSSL_ARGS=(--cfssl-root "$DIR/cfssl/ca.pem"
            --cfssl-setup "HTTPS, every certificate recorded in SQLite (WAL, synchronous=FULL)")
    fi
    "$CFSSL" serve "${CFSSL_SERVE[@]}" >"$DIR/cfssl.log" 2>&1 &
    CFSSL_PID=$!
fi

# --- wait for the server(s) ---------------------------------------------------
ready() {
    curl -fsS --cacert "$DIR/root.pem" "https://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 || return 1
    if [ -n "$CFSSL_PID" ]; then
        curl -fsS --cacert "$DIR/cfssl/ca.pem" "$CFSSL_SCHEME://127.0.0.1:$CFSSL_PORT/api/v1/cfssl/scaninfo" \
            >/dev/null 2>&1 || return 1
    fi
}
for _ in $(seq 1 300); do
    ready && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$DIR/server.log" >&2; exit 1; }
    if [ -n "$CFSSL_PID" ]; then
        kill -0 "$CFSSL_PID" 2>/dev/null || { cat "$DIR/cfssl.log" >&2; exit 1; }
    fi
    sleep 0.1
done
ready || { echo "run.sh: the server(s) did not come up" >&2; exit 1; }

echo "== $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(nproc) CPU(s): $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')" >&2
JSON=()
[ "${CERTMINT_BENCH_JSON:-0}" = 1 ] && JSON=(--json)
status=0
for c in $CONCURRENCY; do
    echo "== certmint-bench $MODE --requests $REQUESTS --concurrency $c (load average: $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    if [ "$MODE" = crl ]; then
        SERVER_ARGS=(--server "https://127.0.0.1:$PORT" --root "$DIR/root.pem"
            --admin-token-file "$DIR/admin.jwt" --concurrency "$c" --server-log "$DIR/server.log"
            ${JSON[@]+"${JSON[@]}"})
        for phase in ${CERTMINT_BENCH_CRL_PHASES:-sizes sign latency}; do
            echo "== certmint-bench crl $phase" >&2
            case "$phase" in
                sizes) "$BENCH_BIN" crl sizes ${JSON[@]+"${JSON[@]}"} || status=$? ;;
                sign) "$BENCH_BIN" crl sign "${SERVER_ARGS[@]}" \
                    --entries "${CERTMINT_BENCH_CRL_ENTRIES:-10000}" \
                    --probes "${CERTMINT_BENCH_CRL_PROBES:-20}" \
                    --pkcs11-module "$MODULE" --token-label certmint --key-label certmint-issuing \
                    --token-name "$TOKEN" || status=$? ;;
                latency) "$BENCH_BIN" crl latency "${SERVER_ARGS[@]}" \
                    --rate "${CERTMINT_BENCH_CRL_RATE:-100}" \
                    --seconds "${CERTMINT_BENCH_CRL_SECONDS:-30}" || status=$? ;;
                *) echo "run.sh: unknown crl phase '$phase' (sizes, sign, latency)" >&2; status=2 ;;
            esac
        done
    elif [ "$MODE" = renew ]; then
        "$BENCH_BIN" renew \
            --server "https://127.0.0.1:$PORT" --root "$DIR/root.pem" \
            --admin-token-file "$DIR/admin.jwt" --server-pid "$SERVER_PID" \
            --requests "$REQUESTS" --concurrency "$c" --warmup "$WARMUP" \
            ${JSON[@]+"${JSON[@]}"} || status=$?
    else
        "$BENCH_BIN" enroll \
            --server "https://127.0.0.1:$PORT" --root "$DIR/root.pem" \
            --admin-token-file "$DIR/admin.jwt" --server-pid "$SERVER_PID" \
            --requests "$REQUESTS" --concurrency "$c" --warmup "$WARMUP" \
            --pkcs11-module "$MODULE" --token-label certmint --key-label certmint-issuing \
            --sign-count "${CERTMINT_BENCH_SIGN_COUNT:-4000}" \
            --cfssl-url "$CFSSL_SCHEME://127.0.0.1:$CFSSL_PORT" --cfssl-pid "$CFSSL_PID" \
            ${CFSSL_ARGS[@]+"${CFSSL_ARGS[@]}"} --rounds "${CERTMINT_BENCH_ROUNDS:-1}" \
            ${JSON[@]+"${JSON[@]}"} || status=$?
        if [ "$CFSSL_SETUP" = durable ]; then
            echo "== cfssl's certdb holds $(sqlite3 "$DIR/cfssl/certs.db" 'SELECT count(*) FROM certificates') certificates" >&2
        fi
    fi
    echo "== load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    echo >&2
done
exit "$status"
