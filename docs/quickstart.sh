#!/usr/bin/env bash
# certmint quickstart: bring up a server on the embedded defaults (SQLite and
# a PKCS#11 token in ./.certmint-dev) and enroll one workload with curl and
# openssl, printing every step. Re-running it reuses the same CA.
#
#   docs/quickstart.sh            # set up, start the server, enroll once
#   docs/quickstart.sh stop       # stop the background server
#
# Until hsm-sim lands (issue 5) the token is SoftHSM2: `apt-get install softhsm2`.
set -euo pipefail

cd "$(dirname "$0")/.."
DEV="$PWD/.certmint-dev"
PORT="${CERTMINT_PORT:-8443}"
URL="https://localhost:$PORT"
SERVER="$PWD/target/debug/certmint-server"
MODULE="${CERTMINT_PKCS11_MODULE:-/usr/lib/softhsm/libsofthsm2.so}"

if [ "${1:-}" = stop ]; then
  [ -f "$DEV/server.pid" ] && kill "$(cat "$DEV/server.pid")" 2>/dev/null && echo "stopped"
  rm -f "$DEV/server.pid"
  exit 0
fi

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
need() { command -v "$1" >/dev/null || { echo "quickstart needs '$1' ($2)" >&2; exit 1; }; }
need curl "apt-get install curl"
need openssl "apt-get install openssl"
need softhsm2-util "apt-get install softhsm2 — hsm-sim will replace it (issue 5)"
[ -f "$MODULE" ] || { echo "PKCS#11 module $MODULE not found (set CERTMINT_PKCS11_MODULE)" >&2; exit 1; }

step "build certmint-server"
cargo build -q -p certmint-server

step "token directory, PINs and config in $DEV"
mkdir -p "$DEV/tokens"
chmod 700 "$DEV"
export SOFTHSM2_CONF="$DEV/softhsm2.conf"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$DEV/tokens" > "$SOFTHSM2_CONF"
umask 077
[ -f "$DEV/hsm-pin" ] || openssl rand -hex 8 > "$DEV/hsm-pin"
[ -f "$DEV/hsm-so-pin" ] || openssl rand -hex 8 > "$DEV/hsm-so-pin"
umask 022
# The SO PIN is only needed to initialise the token; the user PIN is read
# from the file named in the config, never from the command line.
export CERTMINT_HSM_SO_PIN="$(cat "$DEV/hsm-so-pin")"

step "certmint-server init (safe to repeat: an existing CA is never touched)"
"$SERVER" init --config "$DEV/certmint.toml" --init-token --pin-file "$DEV/hsm-pin" \
  --pkcs11-module "$MODULE" --listen "127.0.0.1:$PORT" --database-url "sqlite://certmint.db"
unset CERTMINT_HSM_SO_PIN

if [ -f "$DEV/server.pid" ] && kill -0 "$(cat "$DEV/server.pid")" 2>/dev/null; then
  step "server already running (pid $(cat "$DEV/server.pid"))"
else
  step "certmint-server serve (log: $DEV/server.log)"
  nohup "$SERVER" serve --config "$DEV/certmint.toml" > "$DEV/server.log" 2>&1 &
  echo $! > "$DEV/server.pid"
  for _ in $(seq 50); do
    curl -sf --cacert "$DEV/root.pem" "$URL/healthz" >/dev/null 2>&1 && break
    sleep 0.2
  done
fi
curl -sf --cacert "$DEV/root.pem" "$URL/readyz"; echo

step "admin token (certmint-server admin-token, valid 1h)"
ADMIN="$("$SERVER" admin-token --config "$DEV/certmint.toml" --ttl 1h --subject quickstart)"
api() { curl -sS --cacert "$DEV/root.pem" -H "Authorization: Bearer $ADMIN" -H 'content-type: application/json' "$@"; }

step "policy 'demo' (PUT makes a new version if it exists)"
POLICY='{"name":"demo","description":"quickstart workloads",
  "allowed":{"dns":["*.demo.internal"],"uri":["spiffe://demo.internal/workload/*"]},
  "key_types":["ec-p256","ed25519"],"ttl":{"default":"24h","max":"72h"},
  "extended_key_usage":["client_auth","server_auth"]}'
api -X POST "$URL/v1/admin/policies" -d "$POLICY" -o /dev/null -w 'create: %{http_code}\n' ||
  true
api -X PUT "$URL/v1/admin/policies/demo" -d "$POLICY" -o /dev/null -w 'replace: %{http_code}\n'

step "bootstrap token for api.demo.internal (single use, 15 minutes)"
MINTED="$(api -X POST "$URL/v1/admin/tokens" \
  -d '{"policy":"demo","identity":{"dns":["api.demo.internal"]},"ttl":"15m","max_uses":1}')"
TOKEN="$(printf '%s' "$MINTED" | sed -n 's/.*"token":"\([^"]*\)".*/\1/p')"
[ -n "$TOKEN" ] || { echo "minting failed: $MINTED" >&2; exit 1; }
echo "${TOKEN:0:32}…"

step "workload: key and CSR made locally with openssl"
WORK="$DEV/workload"; mkdir -p "$WORK"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$WORK/key.pem" \
  -subj "/CN=api.demo.internal" -addext "subjectAltName=DNS:api.demo.internal" \
  -out "$WORK/csr.pem" 2>/dev/null
chmod 600 "$WORK/key.pem"

step "POST /v1/enroll"
CSR_JSON="$(awk 'BEGIN{ORS="\\n"} {print}' "$WORK/csr.pem")"
BUNDLE="$(curl -sS --cacert "$DEV/root.pem" -H 'content-type: application/json' \
  -X POST "$URL/v1/enroll" -d "{\"csr\":\"$CSR_JSON\",\"token\":\"$TOKEN\"}")"
field() { printf '%s' "$BUNDLE" | sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p"; }
[ -n "$(field serial)" ] || { echo "enrollment refused: $BUNDLE" >&2; exit 1; }
printf '%b' "$(field certificate_pem)" > "$WORK/cert.pem"
printf '%b' "$(field chain_pem)" > "$WORK/chain.pem"
echo "serial $(field serial), renew after $(field renew_after)"

step "verify the chain and show the certificate"
openssl verify -CAfile "$DEV/root.pem" -untrusted "$WORK/chain.pem" "$WORK/cert.pem"
openssl x509 -in "$WORK/cert.pem" -noout -subject -issuer -dates -ext subjectAltName,extendedKeyUsage

step "the same token a second time is refused (single use)"
curl -sS --cacert "$DEV/root.pem" -H 'content-type: application/json' \
  -X POST "$URL/v1/enroll" -d "{\"csr\":\"$CSR_JSON\",\"token\":\"$TOKEN\"}"; echo

cat <<MSG

certmint is running at $URL (pid $(cat "$DEV/server.pid")), files in $DEV.
  admin token:  $SERVER admin-token --config $DEV/certmint.toml
  inventory:    curl --cacert $DEV/root.pem -H "Authorization: Bearer \$ADMIN" $URL/v1/admin/certificates
  stop:         docs/quickstart.sh stop
MSG
