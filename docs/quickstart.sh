#!/usr/bin/env bash
# certmint quickstart: bring up a server on the embedded defaults (SQLite and
# a PKCS#11 token in ./.certmint-dev) and enroll one workload with curl and
# openssl, printing every step. Re-running it reuses the same CA.
#
#   docs/quickstart.sh            # set up, start the server, enroll once
#   docs/quickstart.sh agent      # then: the certmint agent enrolls a workload
#                                 # and renews it every ~20 s; watch it rotate
#   docs/quickstart.sh stop       # stop the background server and agent
#
# Until hsm-sim lands (issue 5) the token is SoftHSM2: `apt-get install softhsm2`.
set -euo pipefail

cd "$(dirname "$0")/.."
DEV="$PWD/.certmint-dev"
PORT="${CERTMINT_PORT:-8443}"
URL="https://localhost:$PORT"
SERVER="$PWD/target/debug/certmint-server"
CERTMINT="$PWD/target/debug/certmint"
MODULE="${CERTMINT_PKCS11_MODULE:-/usr/lib/softhsm/libsofthsm2.so}"

if [ "${1:-}" = stop ]; then
  for what in agent server; do
    [ -f "$DEV/$what.pid" ] && kill "$(cat "$DEV/$what.pid")" 2>/dev/null && echo "stopped the $what"
    rm -f "$DEV/$what.pid"
  done
  exit 0
fi
MODE="${1:-enroll}"
case "$MODE" in enroll | agent) ;; *) echo "usage: $0 [agent|stop]" >&2; exit 2 ;; esac

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
need() { command -v "$1" >/dev/null || { echo "quickstart needs '$1' ($2)" >&2; exit 1; }; }
need curl "apt-get install curl"
need openssl "apt-get install openssl"
need softhsm2-util "apt-get install softhsm2 — hsm-sim will replace it (issue 5)"
[ -f "$MODULE" ] || { echo "PKCS#11 module $MODULE not found (set CERTMINT_PKCS11_MODULE)" >&2; exit 1; }

step "build certmint-server and certmint"
cargo build -q -p certmint-server -p certmint

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

if [ "$MODE" = enroll ]; then
  cat <<MSG

certmint is running at $URL (pid $(cat "$DEV/server.pid")), files in $DEV.
  admin token:  $SERVER admin-token --config $DEV/certmint.toml
  inventory:    curl --cacert $DEV/root.pem -H "Authorization: Bearer \$ADMIN" $URL/v1/admin/certificates
  the agent:    docs/quickstart.sh agent
  stop:         docs/quickstart.sh stop
MSG
  exit 0
fi

# ---- the agent: enroll at boot, renew over mTLS, rotate the key -------------
# The certmint CLI reads these three from the environment.
export CERTMINT_SERVER="$URL" CERTMINT_ADMIN_TOKEN="$ADMIN"
CERTMINT_ROOT_FINGERPRINT="sha256:$(openssl x509 -in "$DEV/root.pem" -outform der | openssl dgst -sha256 -r | cut -d' ' -f1)"
export CERTMINT_ROOT_FINGERPRINT
echo "root fingerprint: $CERTMINT_ROOT_FINGERPRINT"

step "policy 'demo-fast': 30 s certificates, so renewals come every ~20 s"
cat > "$DEV/demo-fast.json" <<'JSON'
{"name": "demo-fast", "description": "quickstart agent: very short-lived certificates",
 "allowed": {"dns": ["*.demo.internal"]}, "key_types": ["ec-p256"],
 "ttl": {"default": "30s", "max": "30s"}, "extended_key_usage": ["client_auth", "server_auth"],
 "renewal": {"allowed": true, "max_chain_age": "1d"}}
JSON
"$CERTMINT" admin policies create --file "$DEV/demo-fast.json" 2>/dev/null ||
  "$CERTMINT" admin policies replace demo-fast --file "$DEV/demo-fast.json"

AGENT_DIR="$DEV/agent"
if [ -f "$DEV/agent.pid" ] && kill -0 "$(cat "$DEV/agent.pid")" 2>/dev/null; then
  step "agent already running (pid $(cat "$DEV/agent.pid"))"
else
  step "bootstrap token for worker.demo.internal, written 0600 to $AGENT_DIR/bootstrap.jwt"
  mkdir -p "$AGENT_DIR"
  rm -rf "$AGENT_DIR/out"
  "$CERTMINT" admin tokens mint --policy demo-fast --dns worker.demo.internal --ttl 15m \
    --out "$AGENT_DIR/bootstrap.jwt"

  step "agent.toml (sample with every key: docs/agent/agent.toml)"
  cat > "$AGENT_DIR/agent.toml" <<TOML
server = "$URL"
root_fingerprint = "$CERTMINT_ROOT_FINGERPRINT"
token_file = "bootstrap.jwt"
output_dir = "out"

[names]
dns = ["worker.demo.internal"]

[reload]
command = ["sh", "-c", "echo reload hook: new certificate \$CERTMINT_SERIAL"]
TOML
  cat "$AGENT_DIR/agent.toml"

  step "certmint agent (log: $DEV/agent.log)"
  nohup "$CERTMINT" agent --config "$AGENT_DIR/agent.toml" > "$DEV/agent.log" 2>&1 &
  echo $! > "$DEV/agent.pid"
fi

step "watching: an enrollment, then renewals over mTLS with a new key each time (~45 s)"
serial() { sed -n 's/.*"serial": *"\([0-9a-f]*\)".*/\1/p' "$AGENT_DIR/out/meta.json" 2>/dev/null || true; }
seen=""
for _ in $(seq 150); do
  now="$(serial)"
  if [ -n "$now" ] && [ "$now" != "${seen##* }" ]; then
    seen="$seen $now"
    key="$(openssl pkey -in "$AGENT_DIR/out/key.pem" -pubout -outform der 2>/dev/null | openssl dgst -sha256 -r | cut -c1-16)"
    echo "$(date -u +%T) serial $now  key $key"
  fi
  [ "$(echo $seen | wc -w)" -ge 3 ] && break
  kill -0 "$(cat "$DEV/agent.pid")" 2>/dev/null || { cat "$DEV/agent.log" >&2; exit 1; }
  sleep 0.5
done
[ "$(echo $seen | wc -w)" -ge 3 ] || { echo "no renewals seen; agent log:" >&2; cat "$DEV/agent.log" >&2; exit 1; }

step "certmint status: are the files usable for mTLS?"
"$CERTMINT" status --dir "$AGENT_DIR/out"

step "the agent's log"
tail -n 8 "$DEV/agent.log"

cat <<MSG

The agent keeps renewing in the background (pid $(cat "$DEV/agent.pid")).
  inventory:    $CERTMINT admin certificates list --policy demo-fast
  revoke:       $CERTMINT admin certificates revoke \$(sed -n 's/.*"serial": *"\([0-9a-f]*\)".*/\1/p' $AGENT_DIR/out/meta.json)
                (the agent's next renewal is refused; it exits with code 5)
  renew now:    kill -HUP \$(cat $DEV/agent.pid)
  stop:         docs/quickstart.sh stop
  (CLI environment: export CERTMINT_SERVER=$URL CERTMINT_ROOT_FINGERPRINT=$CERTMINT_ROOT_FINGERPRINT
                    CERTMINT_ADMIN_TOKEN=\$($SERVER admin-token --config $DEV/certmint.toml))
MSG
