#!/usr/bin/env bash
# certmint quickstart: bring up a server on the embedded defaults (SQLite and
# the hsm-sim PKCS#11 token, both in ./.certmint-dev) and enroll one workload,
# printing every step. Needs only the Rust toolchain; curl and openssl, when
# present, also show the same enrollment over plain REST. Re-running it
# reuses the same CA.
#
#   docs/quickstart.sh            # set up, start the server, enroll once
#   docs/quickstart.sh agent      # then: the certmint agent enrolls a workload
#                                 # and renews it every ~20 s; watch it rotate
#   docs/quickstart.sh stop       # stop the background server and agent
#
# CERTMINT_PKCS11_MODULE=/usr/lib/softhsm/libsofthsm2.so uses SoftHSM2
# instead of hsm-sim (in a fresh .certmint-dev).
set -euo pipefail

cd "$(dirname "$0")/.."
DEV="$PWD/.certmint-dev"
PORT="${CERTMINT_PORT:-8443}"
CRL_PORT="${CERTMINT_CRL_PORT:-8080}"
URL="https://localhost:$PORT"
SERVER="$PWD/target/debug/certmint-server"
CERTMINT="$PWD/target/debug/certmint"

if [ "${1:-}" = stop ]; then
  for what in agent server; do
    [ -f "$DEV/$what.pid" ] && kill "$(cat "$DEV/$what.pid")" 2>/dev/null && echo "stopped the $what"
    rm -f "$DEV/$what.pid"
  done
  exit 0
fi
MODE="${1:-enroll}"
case "$MODE" in enroll | agent) ;; *) echo "usage: $0 [agent|stop]" >&2; exit 2 ;; esac

# Bold headings on a terminal only, so a captured run stays plain text.
if [ -t 1 ]; then
  step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
  step() { printf '\n== %s\n' "$*"; }
fi
# A path as the shell reads it back, for the hints below that are meant to
# be pasted (a directory with a space in its name still pastes).
q() { printf '%q' "$1"; }
random_hex() { od -An -tx1 -N8 /dev/urandom | tr -d ' \n'; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

step "build certmint-server, certmint and hsm-sim"
if [ ! -x "$SERVER" ] || [ ! -x "$CERTMINT" ]; then
  echo "first build: cargo compiles about 430 crates, which takes a few minutes"
  echo "(on 2 cores, about 5); later runs only rebuild what changed"
fi
cargo build -p certmint-server -p certmint -p hsm-sim

step "token directory, PINs and config in $DEV"
mkdir -p "$DEV"
chmod 700 "$DEV"
MODULE_ARGS=()
if [ -n "${CERTMINT_PKCS11_MODULE:-}" ]; then
  # A system PKCS#11 module (SoftHSM2): its own token directory.
  mkdir -p "$DEV/tokens"
  export SOFTHSM2_CONF="$DEV/softhsm2.conf"
  printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$DEV/tokens" > "$SOFTHSM2_CONF"
  MODULE_ARGS=(--pkcs11-module "$CERTMINT_PKCS11_MODULE")
  TOKEN_ENV="SOFTHSM2_CONF=$(q "$SOFTHSM2_CONF")"
  echo "token: $CERTMINT_PKCS11_MODULE"
else
  # hsm-sim, the default: a software PKCS#11 token that keeps its state in
  # HSM_SIM_DIR (private keys sealed under the PIN). For development only.
  export HSM_SIM_DIR="$DEV/hsm-sim"
  TOKEN_ENV="HSM_SIM_DIR=$(q "$HSM_SIM_DIR")"
  echo "token: hsm-sim in $HSM_SIM_DIR"
fi
umask 077
[ -f "$DEV/hsm-pin" ] || random_hex > "$DEV/hsm-pin"
[ -f "$DEV/hsm-so-pin" ] || random_hex > "$DEV/hsm-so-pin"
umask 022
# The SO PIN is only needed to initialise the token; the user PIN is read
# from the file named in the config, never from the command line.
export CERTMINT_HSM_SO_PIN="$(cat "$DEV/hsm-so-pin")"

step "certmint-server init (safe to repeat: an existing CA is never touched)"
INIT="$("$SERVER" init --config "$DEV/certmint.toml" --init-token --pin-file "$DEV/hsm-pin" \
  "${MODULE_ARGS[@]}" --listen "127.0.0.1:$PORT" --crl-listen "127.0.0.1:$CRL_PORT" --database-url "sqlite://certmint.db" 2>&1)" ||
  { echo "$INIT" >&2; exit 1; }
echo "$INIT" | grep -v 'hsm-sim, a software HSM simulator' || true
unset CERTMINT_HSM_SO_PIN
FINGERPRINT="$(echo "$INIT" | sed -n 's/^root fingerprint: \(sha256:[0-9a-f]*\)$/\1/p' | tail -n1)"
[ -n "$FINGERPRINT" ] || { echo "init printed no root fingerprint" >&2; exit 1; }
# init records hsm-sim's token directory in the config ([hsm] sim_dir), so
# the server's commands find the token in any shell; a config written
# before that setting existed still needs HSM_SIM_DIR in the environment.
if [ -z "${CERTMINT_PKCS11_MODULE:-}" ] && grep -q '^sim_dir = ' "$DEV/certmint.toml"; then
  TOKEN_ENV=""
fi
# How the hints below run admin-token: with the token's environment when
# the config alone does not name it (SoftHSM2's SOFTHSM2_CONF, say).
ADMIN_TOKEN_COMMAND="${TOKEN_ENV:+$TOKEN_ENV }$(q "$SERVER") admin-token --config $(q "$DEV/certmint.toml")"

if [ -f "$DEV/server.pid" ] && kill -0 "$(cat "$DEV/server.pid")" 2>/dev/null; then
  step "server already running (pid $(cat "$DEV/server.pid"))"
else
  step "certmint-server serve (log: $DEV/server.log)"
  nohup "$SERVER" serve --config "$DEV/certmint.toml" > "$DEV/server.log" 2>&1 &
  echo $! > "$DEV/server.pid"
  for _ in $(seq 100); do
    port_open && break
    kill -0 "$(cat "$DEV/server.pid")" 2>/dev/null || { cat "$DEV/server.log" >&2; exit 1; }
    sleep 0.2
  done
fi

step "admin token (certmint-server admin-token, valid 1h) and the CLI's environment"
ADMIN="$("$SERVER" admin-token --config "$DEV/certmint.toml" --ttl 1h --subject quickstart)"
# The certmint CLI reads these three; the root is pinned by its fingerprint.
export CERTMINT_SERVER="$URL" CERTMINT_ROOT_FINGERPRINT="$FINGERPRINT" CERTMINT_ADMIN_TOKEN="$ADMIN"
echo "CERTMINT_SERVER=$URL"
echo "CERTMINT_ROOT_FINGERPRINT=$FINGERPRINT"

# Creates policy $1 from the file $2 when it does not exist, and replaces
# it (a new version) only when the file differs from the one last applied,
# so re-running the quickstart does not bump the version every time.
apply_policy() {
  if ! "$CERTMINT" admin policies show "$1" >/dev/null 2>&1; then
    "$CERTMINT" admin policies create --file "$2"
  elif ! cmp -s "$2" "$2.applied"; then
    "$CERTMINT" admin policies replace "$1" --file "$2"
  else
    echo "policy '$1' exists and is unchanged"
  fi
  cp "$2" "$2.applied"
}

step "policy 'demo' (created if absent, replaced only when its file changed)"
cat > "$DEV/demo.json" <<'JSON'
{"name": "demo", "description": "quickstart workloads",
 "allowed": {"dns": ["*.demo.internal"], "uri": ["spiffe://demo.internal/workload/*"]},
 "key_types": ["ec-p256", "ed25519"], "ttl": {"default": "24h", "max": "72h"},
 "extended_key_usage": ["client_auth", "server_auth"]}
JSON
apply_policy demo "$DEV/demo.json"

WORK="$DEV/workload"
rm -rf "$WORK"; mkdir -p "$WORK"
step "bootstrap token for api.demo.internal (single use, 15 minutes), written 0600"
"$CERTMINT" admin tokens mint --policy demo --dns api.demo.internal --ttl 15m --out "$WORK/token"

step "certmint enroll: key made locally, CSR + token sent, chain checked against the pinned root"
"$CERTMINT" enroll --token-file "$WORK/token" --dns api.demo.internal --out "$WORK/out"
ls -l "$WORK/out/"

step "certmint status: usable for mutual TLS?"
"$CERTMINT" status --dir "$WORK/out"

step "the same token a second time is refused (single use)"
if "$CERTMINT" enroll --token-file "$WORK/token" --dns api.demo.internal --out "$WORK/again"; then
  echo "a used token enrolled again" >&2; exit 1
fi

if command -v curl >/dev/null && command -v openssl >/dev/null; then
  step "the same over plain REST: openssl makes the key and CSR, curl enrolls"
  openssl x509 -in "$DEV/root.pem" -noout -fingerprint -sha256
  TOKEN="$("$CERTMINT" admin tokens mint --policy demo --dns rest.demo.internal --ttl 15m 2>/dev/null)"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$WORK/rest-key.pem" \
    -subj "/CN=rest.demo.internal" -addext "subjectAltName=DNS:rest.demo.internal" \
    -out "$WORK/rest-csr.pem" 2>/dev/null
  chmod 600 "$WORK/rest-key.pem"
  CSR_JSON="$(awk 'BEGIN{ORS="\\n"} {print}' "$WORK/rest-csr.pem")"
  BUNDLE="$(curl -sS --cacert "$DEV/root.pem" -H 'content-type: application/json' \
    -X POST "$URL/v1/enroll" -d "{\"csr\":\"$CSR_JSON\",\"token\":\"$TOKEN\"}")"
  field() { printf '%s' "$BUNDLE" | sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p"; }
  [ -n "$(field serial)" ] || { echo "enrollment refused: $BUNDLE" >&2; exit 1; }
  printf '%b' "$(field certificate_pem)" > "$WORK/rest-cert.pem"
  printf '%b' "$(field chain_pem)" > "$WORK/rest-chain.pem"
  echo "POST /v1/enroll -> serial $(field serial), renew after $(field renew_after)"
  openssl verify -CAfile "$DEV/root.pem" -untrusted "$WORK/rest-chain.pem" "$WORK/rest-cert.pem"
  openssl x509 -in "$WORK/rest-cert.pem" -noout -subject -dates -ext subjectAltName,extendedKeyUsage
fi

# The CLI's environment, as lines that paste into a fresh shell.
cli_environment() {
  cat <<MSG
# the CLI's environment (the admin token is valid for 12 hours)
export CERTMINT_SERVER=$URL CERTMINT_ROOT_FINGERPRINT=$FINGERPRINT
export CERTMINT_ADMIN_TOKEN=\$($ADMIN_TOKEN_COMMAND)
MSG
}

if [ "$MODE" = enroll ]; then
  cat <<MSG

certmint is running at $URL (pid $(cat "$DEV/server.pid")), files in $DEV.
Every line below pastes as it is into any shell:
$(cli_environment)
# the certificates issued so far
$(q "$CERTMINT") admin certificates list
# next: the agent enrolls a workload and keeps renewing it
${CERTMINT_PKCS11_MODULE:+CERTMINT_PKCS11_MODULE=$(q "$CERTMINT_PKCS11_MODULE") }$(q "$PWD/docs/quickstart.sh") agent
# stop the server
$(q "$PWD/docs/quickstart.sh") stop
MSG
  exit 0
fi

# ---- the agent: enroll at boot, renew over mTLS, rotate the key -------------
step "policy 'demo-fast': 30 s certificates, so renewals come every ~20 s"
cat > "$DEV/demo-fast.json" <<'JSON'
{"name": "demo-fast", "description": "quickstart agent: very short-lived certificates",
 "allowed": {"dns": ["*.demo.internal"]}, "key_types": ["ec-p256"],
 "ttl": {"default": "30s", "max": "30s"}, "extended_key_usage": ["client_auth", "server_auth"],
 "renewal": {"allowed": true, "max_chain_age": "1d"}}
JSON
apply_policy demo-fast "$DEV/demo-fast.json"

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
root_fingerprint = "$FINGERPRINT"
token_file = "bootstrap.jwt"
output_dir = "out"

[names]
dns = ["worker.demo.internal"]

[reload]
command = ["sh", "-c", "echo reload hook: new certificate \$CERTMINT_SERIAL"]
TOML
  cat "$AGENT_DIR/agent.toml"

  step "certmint agent (log: $DEV/agent.log)"
  nohup "$CERTMINT" --log-format json agent --config "$AGENT_DIR/agent.toml" > "$DEV/agent.log" 2>&1 &
  echo $! > "$DEV/agent.pid"
fi

step "watching: an enrollment, then renewals over mTLS with a new key each time (~45 s)"
count() { grep -cE '"message":"(enrolled|renewed)' "$DEV/agent.log" 2>/dev/null || true; }
shown=0
for _ in $(seq 150); do
  while [ "$shown" -lt "$(count)" ]; do
    shown=$((shown + 1))
    grep -E '"message":"(enrolled|renewed)' "$DEV/agent.log" | sed -n "${shown}p" |
      sed -n 's/.*"timestamp":"[0-9-]*T\([0-9:]*\).*"message":"\([a-z]*\)".*"cert.serial":"\([0-9a-f]*\)".*"key.spki_sha256":"sha256:\([0-9a-f]\{16\}\).*/\1 \2 serial \3  key \4/p'
  done
  [ "$shown" -ge 3 ] && break
  kill -0 "$(cat "$DEV/agent.pid")" 2>/dev/null || { cat "$DEV/agent.log" >&2; exit 1; }
  sleep 0.5
done
[ "$shown" -ge 3 ] || { echo "no renewals seen; agent log:" >&2; cat "$DEV/agent.log" >&2; exit 1; }

step "certmint status: are the files usable for mTLS?"
"$CERTMINT" status --dir "$AGENT_DIR/out"

# The agent renews every ~20 s, so a serial printed now is stale by the time
# it is pasted: the revoke line reads the current one from meta.json (no jq).
CURRENT_SERIAL="\$(sed -n 's/.*\"serial\": *\"\([0-9a-f]*\)\".*/\\1/p' $(q "$AGENT_DIR/out/meta.json"))"
cat <<MSG

The agent keeps renewing in the background (pid $(cat "$DEV/agent.pid"); log $DEV/agent.log).
Every line below pastes as it is into any shell:
$(cli_environment)
# the agent's certificates
$(q "$CERTMINT") admin certificates list --policy demo-fast
# revoke the agent's current certificate: its next renewal is refused and it exits with code 5
$(q "$CERTMINT") admin certificates revoke $CURRENT_SERIAL
# the CRLs that list it within seconds, over plain HTTP (the agent keeps them in $(q "$AGENT_DIR/out/crl.pem"))
curl -s http://127.0.0.1:$CRL_PORT/v1/crls
# renew now
kill -HUP \$(cat $(q "$DEV/agent.pid"))
# stop the agent and the server
$(q "$PWD/docs/quickstart.sh") stop
MSG
