#!/usr/bin/env bash
# Bridge throughput, cleartext and TLS, against mosquitto_pub through the
# same broker in the same run (BENCHMARKS.md, "MQTT bridge").
#
# One Mosquitto with a cleartext and a TLS listener (certificates made here
# with openssl), one ipchubd with two bridges to it (mqtt:// and mqtts://),
# one mosquitto_sub on the cleartext listener counting arrivals. Each row
# sends N messages of SIZE bytes at QoS 1 and times the first send to the
# N-th arrival:
#   mosquitto_pub -l   → broker (mqtt://, then mqtts://)
#   ipchubctl pub      → ipchubd → bridge → broker (mqtt://, then mqtts://)
# Needs: mosquitto, mosquitto-clients, openssl, and release binaries
# (cargo build --release). Usage: bench/mqtt-bridge.sh [N] [SIZE] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20000}
SIZE=${2:-1024}
ROUNDS=${3:-3}
BIN=${BIN:-target/release}
dir=$(mktemp -d /tmp/ipchub-bridge-bench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
plain=$(free_port)
tls=$(free_port)

# Certificates: a CA and a server certificate for 127.0.0.1 (EC P-256).
(
    cd "$dir"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout ca.key -out ca.pem -days 2 -subj /CN=bench-ca 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout server.key -out server.csr -subj /CN=127.0.0.1 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
        -out server.pem -days 2 -extfile server.ext 2>/dev/null
)

cat >"$dir/mosquitto.conf" <<EOF
user root
persistence false
allow_anonymous true
# The counting subscriber may lag: queue, never drop.
max_queued_messages 0
max_queued_bytes 0
listener $plain 127.0.0.1
listener $tls 127.0.0.1
certfile $dir/server.pem
keyfile $dir/server.key
EOF
mosquitto -c "$dir/mosquitto.conf" 2>"$dir/mosquitto.log" &
pids+=($!)

bridge() { # name url extra
    cat <<EOF
[[bridge.mqtt]]
name = "$1"
enabled = true
url = "$2"
client_id = "bench-$1-$$"
spool_max_messages = $((N * 2))
spool_max_bytes = $((N * (SIZE + 64) * 2))
$3
[[bridge.mqtt.export]]
pattern = "$1/#"
prefix = "out/"
EOF
}
{
    echo "[dbus]"
    echo "enabled = false"
    bridge plain "mqtt://127.0.0.1:$plain" ""
    bridge tls "mqtts://127.0.0.1:$tls" "ca_file = \"$dir/ca.pem\""
} >"$dir/ipchub.toml"
sock="$dir/ipchub.sock"
IPCHUB_LOG=warn "$BIN/ipchubd" --socket "$sock" --config "$dir/ipchub.toml" 2>"$dir/ipchubd.log" &
pids+=($!)

# Wait for both bridges to report themselves connected.
for _ in $(seq 200); do
    s=$("$BIN/ipchubctl" --socket "$sock" stats 2>/dev/null || true)
    if [ "$(grep -c 'state=connected' <<<"$s")" -ge 2 ]; then break; fi
    sleep 0.1
done
grep -q 'state=connected' <<<"$s" || { echo "bridges did not connect"; cat "$dir/ipchubd.log"; exit 1; }

python3 -c "import sys; sys.stdout.write(('x'*$SIZE+'\n')*$N)" >"$dir/lines"

now() { date +%s.%N; }
# run NAME COMMAND...: time N messages from the command's start to the
# subscriber's N-th arrival; prints msgs/s.
run() {
    local topic_filter=$1
    shift
    mosquitto_sub -h 127.0.0.1 -p "$plain" -q 1 -C "$N" -t "$topic_filter" >/dev/null &
    local sub=$!
    sleep 0.5 # let the subscription settle
    local t0
    t0=$(now)
    "$@" <"$dir/lines" >/dev/null 2>&1
    wait "$sub"
    local t1
    t1=$(now)
    python3 -c "print(f'{$N / ($t1 - $t0):10.0f}')"
}

printf '%-44s %s\n' "1 KiB at QoS 1, $N messages, $ROUNDS rounds" "msgs/s per round"
for row in direct-plain direct-tls bridge-plain bridge-tls; do
    results=()
    for _ in $(seq "$ROUNDS"); do
        case $row in
        direct-plain) r=$(run "out/direct" mosquitto_pub -h 127.0.0.1 -p "$plain" -q 1 -l -t out/direct) ;;
        direct-tls) r=$(run "out/direct" mosquitto_pub -h 127.0.0.1 -p "$tls" --cafile "$dir/ca.pem" -q 1 -l -t out/direct) ;;
        bridge-plain) r=$(run "out/plain/m" "$BIN/ipchubctl" --socket "$sock" pub -c plain/m) ;;
        bridge-tls) r=$(run "out/tls/m" "$BIN/ipchubctl" --socket "$sock" pub -c tls/m) ;;
        esac
        results+=("$r")
    done
    case $row in
    direct-plain) label="mosquitto_pub → broker (mqtt://)" ;;
    direct-tls) label="mosquitto_pub → broker (mqtts://)" ;;
    bridge-plain) label="ipchubctl pub → hub → bridge (mqtt://)" ;;
    bridge-tls) label="ipchubctl pub → hub → bridge (mqtts://)" ;;
    esac
    printf '%-44s %s\n' "$label" "${results[*]}"
done
sleep 1.5 # statuses are reported once a second
"$BIN/ipchubctl" --socket "$sock" stats | grep -E 'COMPONENT|dropped=' | sed 's/^/  /' | cut -c1-200
