#!/bin/bash
# End-to-end test of the ipchub Debian packages on a real systemd.
#
#   tests/e2e/systemd.sh path/to/ipchub_<version>_<arch>.deb [OTHER.deb...]
#
# Boots a minimal Debian root (built once with mmdebstrap, cached) with
# systemd-nspawn, installs the .deb inside with "apt install ./<deb>" and
# runs the user's commands verbatim: socket activation, publish/subscribe on
# several transports, stats, D-Bus, journal, the dashboard service,
# stop/re-activation, reload, restart, watchdog, purge. Then the client
# library packages libipchub0, libipchub-dev and python3-ipchub: a C program
# compiled in the container with pkg-config, and Python, each exchanging
# messages through the running hub. The library packages are the OTHER
# .debs given, or else found next to the ipchub .deb (same version and
# architecture, as debian/build-deb leaves them); a missing one fails its
# steps. Every step prints PASS or FAIL and has a time limit
# (E2E_STEP_TIMEOUT, or its own); the run goes on after a failure and exits
# non-zero if any step failed.
#
# Environment:
#   E2E_ALLOW_FAIL="step ..."  steps allowed to fail for now (reported
#                              loudly, not counted). Steps that pass anyway
#                              are reported so the list can shrink.
#   E2E_CACHE=DIR              root cache (default /var/cache/ipchub-e2e)
#   E2E_LOGDIR=DIR             logs of this run (default /tmp/ipchub-e2e.<pid>)
#   E2E_SUITE=NAME             Debian suite of the root (default: the host's)
#   E2E_STEP_TIMEOUT=SECONDS   limit of a step without one of its own (120)
#
# Needs root, mmdebstrap, systemd-nspawn (systemd-container) and nsenter.
# Machine-specific facts (cgroups without a host systemd, private network,
# offline apt) are explained in docs/PACKAGING.md.
set -u
shopt -s nullglob

# Bump when the way the root is built changes, to invalidate the cache.
ROOT_FORMAT=1
# What the root holds besides the packages' own Depends: an init, the
# system bus (the package Recommends it; busctl and journalctl come with
# systemd); a C compiler, libc headers and pkg-config for the program built
# against libipchub-dev (python3 comes with python3-ipchub's Depends). No
# network inside, so everything must be there beforehand.
BASE_PACKAGES="systemd systemd-sysv dbus procps gcc libc6-dev pkgconf"
# The library packages checked after ipchub itself.
LIB_PACKAGES="libipchub0 libipchub-dev python3-ipchub"
STEP_TIMEOUT=${E2E_STEP_TIMEOUT:-120}
T_START=$(date +%s.%N)

die() { printf '\n*** e2e: %s\n' "$*" >&2; exit 2; }
log() { printf '%s\n' "$*"; }
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1fs", b - a }'; }

[ $# -ge 1 ] || die "usage: $0 path/to/ipchub_<version>_<arch>.deb [OTHER.deb...]"
DEB=$(readlink -f -- "$1") || die "no such file: $1"
[ -f "$DEB" ] || die "no such file: $1"
shift
[ "$(id -u)" = 0 ] || die "must run as root (mmdebstrap, nspawn, cgroups)"
for tool in mmdebstrap systemd-nspawn nsenter dpkg-deb apt-get sha256sum; do
    command -v "$tool" >/dev/null || die "missing tool: $tool (apt-get install mmdebstrap systemd-container)"
done
dpkg-deb --field "$DEB" Package | grep -qx ipchub || die "$DEB is not an ipchub package"
DEB_NAME=$(basename "$DEB")
DEB_ARCH=$(dpkg-deb --field "$DEB" Architecture)
DEB_VERSION=$(dpkg-deb --field "$DEB" Version)
HOST_ARCH=$(dpkg --print-architecture)
[ "$DEB_ARCH" = "$HOST_ARCH" ] || [ "$DEB_ARCH" = all ] || die "$DEB_NAME is for $DEB_ARCH, this host is $HOST_ARCH"

# The library packages: given, or next to the ipchub .deb. LIB_DEBS holds
# their paths on this host, LIB_NAMES their file names in the root's /root.
declare -A LIB_DEB=()
for f in "$@"; do
    f=$(readlink -f -- "$f") && [ -f "$f" ] || die "no such file: $f"
    p=$(dpkg-deb --field "$f" Package) || die "$f is not a .deb"
    case " $LIB_PACKAGES " in *" $p "*) ;; *) die "$f: package $p is not one of $LIB_PACKAGES" ;; esac
    [ "$(dpkg-deb --field "$f" Version)" = "$DEB_VERSION" ] || die "$f is not version $DEB_VERSION"
    LIB_DEB[$p]=$f
done
LIB_DEBS=() LIB_NAMES=()
for p in $LIB_PACKAGES; do
    if [ -z "${LIB_DEB[$p]:-}" ]; then
        f=$(dirname "$DEB")/${p}_${DEB_VERSION#*:}_${DEB_ARCH}.deb
        [ -f "$f" ] && LIB_DEB[$p]=$f
    fi
    if [ -n "${LIB_DEB[$p]:-}" ]; then
        LIB_DEBS+=("${LIB_DEB[$p]}") LIB_NAMES+=("$(basename "${LIB_DEB[$p]}")")
        log "e2e: $p: ${LIB_DEB[$p]}"
    else
        log "e2e: $p: NOT FOUND (no ${p}_${DEB_VERSION#*:}_${DEB_ARCH}.deb next to $DEB_NAME): its steps will fail"
    fi
done

CACHE=${E2E_CACHE:-/var/cache/ipchub-e2e}
LOGDIR=${E2E_LOGDIR:-/tmp/ipchub-e2e.$$}
mkdir -p "$CACHE" "$LOGDIR" || die "cannot create $CACHE or $LOGDIR"
SUITE=${E2E_SUITE:-$(. /etc/os-release && echo "${VERSION_CODENAME:-}")}
[ -n "$SUITE" ] || die "cannot tell the host's Debian suite; set E2E_SUITE"

# ---------------------------------------------------------------- the root --

# The mirror comes from the machine's apt configuration, never from this
# script: every Debian archive apt knows for this suite (suite, -updates,
# -security), as one-line sources entries for mmdebstrap.
mirror_lines() {
    apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT) $(ORIGIN)' \
        'Identifier: Packages' "Architecture: $HOST_ARCH" 2>/dev/null |
    awk -v s="$SUITE" '
        $4 == "Debian" && ($2 == s || index($2, s "-") == 1) {
            key = $1 " " $2
            if (!(key in comps)) order[n++] = key
            if (index(" " comps[key] " ", " " $3 " ") == 0) comps[key] = comps[key] " " $3
        }
        END { for (i = 0; i < n; i++) print "deb " order[i] comps[order[i]] }'
}

# Package names from a Depends field, first alternative, no versions.
depends_of() {
    dpkg-deb --field "$1" Depends | tr ',' '\n' |
        sed -e 's/|.*//' -e 's/(.*)//' -e 's/:any//' -e 's/[[:space:]]//g' | grep -v '^$'
}

MIRRORS=$(mirror_lines)
[ -n "$MIRRORS" ] || die "apt knows no Debian archive for suite '$SUITE' (run apt-get update, check /etc/apt/sources.list*)"
# The Depends of every .deb under test, except on each other.
INCLUDE=$( { printf '%s\n' $BASE_PACKAGES
             for d in "$DEB" "${LIB_DEBS[@]}"; do depends_of "$d"; done; } |
           grep -vxF -e ipchub $(printf -- ' -e %s' $LIB_PACKAGES) | sort -u | paste -sd, -)
KEY=$(printf '%s\n' "$ROOT_FORMAT" "$SUITE" "$HOST_ARCH" "$INCLUDE" "$MIRRORS" | sha256sum | cut -c1-16)
ROOT_TAR=$CACHE/root-$SUITE-$KEY.tar

RUN=$(mktemp -d /tmp/ipchub-e2e-run.XXXXXX) || die "mktemp failed"
mount -t tmpfs -o size=2g,mode=0755 ipchub-e2e "$RUN" || die "cannot mount a tmpfs on $RUN"
ROOT=$RUN/root
MACHINE=ipchub-e2e-$$
NSPAWN_PID=
CPID=
CGROUPS=()

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
        log "e2e: cleanup: container still running, powering it off"
        [ -n "$CPID" ] && in_ct systemctl poweroff >/dev/null 2>&1
        for _ in $(seq 50); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "$NSPAWN_PID" 2>/dev/null; then
            log "e2e: cleanup: nspawn $NSPAWN_PID still alive, killing it"
            kill -TERM "$NSPAWN_PID" 2>/dev/null; sleep 2
            kill -KILL "$NSPAWN_PID" 2>/dev/null
        fi
        wait "$NSPAWN_PID" 2>/dev/null
    fi
    [ -f "$RUN/console.log" ] && cp "$RUN/console.log" "$LOGDIR/console.log" 2>/dev/null
    umount -R "$RUN" 2>/dev/null || umount -l "$RUN" 2>/dev/null
    rmdir "$RUN" 2>/dev/null
    local d
    for d in "${CGROUPS[@]}"; do
        [ -d "$d" ] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
        [ -d "$d" ] && log "e2e: cleanup: could not remove cgroup $d (processes left?)"
    done
    exit "$rc"
}
trap cleanup EXIT
trap 'printf "\n*** e2e: interrupted, cleaning up\n"; exit 130' INT TERM

if [ -f "$ROOT_TAR" ]; then
    log "e2e: root: cached $ROOT_TAR"
else
    log "e2e: root: building $ROOT_TAR"
    log "e2e: root: suite $SUITE, packages $INCLUDE"
    printf '%s\n' "$MIRRORS" | sed 's/^/e2e: root: mirror: /'
    (
        flock 9
        [ -f "$ROOT_TAR" ] && exit 0     # built by a concurrent run meanwhile
        mkdir -p "$RUN/tmp"
        mapfile -t mirror_args <<<"$MIRRORS"
        # TMPDIR on tmpfs: the root is unpacked there (seconds instead of a
        # minute on this disk); only the finished tarball goes to the cache.
        TMPDIR=$RUN/tmp mmdebstrap --variant=apt --format=tar --include="$INCLUDE" \
            "$SUITE" "$ROOT_TAR.tmp" "${mirror_args[@]}" >"$LOGDIR/mmdebstrap.log" 2>&1 ||
            { tail -20 "$LOGDIR/mmdebstrap.log" >&2; exit 1; }
        mv "$ROOT_TAR.tmp" "$ROOT_TAR"
    ) 9>"$CACHE/lock" || die "mmdebstrap failed, see $LOGDIR/mmdebstrap.log"
    log "e2e: root: built in $(elapsed "$T_START")"
fi
mkdir "$ROOT" && tar -C "$ROOT" -xf "$ROOT_TAR" || die "cannot unpack $ROOT_TAR"
cp "$DEB" "${LIB_DEBS[@]}" "$ROOT/root/" || die "cannot copy the .debs into the root"
# The upgrade steps install a higher version over the installed one, so
# dpkg runs the real upgrade path (prerm upgrade NEW, postinst configure
# OLD): the same package with "+e2e1" appended to its version, which sorts
# above it.
UP_VERSION=${DEB_VERSION}+e2e1
UP_NAME=ipchub_${UP_VERSION#*:}_${DEB_ARCH}.deb
mkdir "$RUN/up" && dpkg-deb -R "$DEB" "$RUN/up/pkg" &&
    sed -i "s/^Version: .*/Version: $UP_VERSION/" "$RUN/up/pkg/DEBIAN/control" &&
    dpkg-deb -b "$RUN/up/pkg" "$ROOT/root/$UP_NAME" >/dev/null &&
    dpkg --compare-versions "$UP_VERSION" gt "$DEB_VERSION" &&
    rm -r "$RUN/up" || die "cannot build the higher-version package $UP_NAME"
# The test's own programs (a C client, a Python client, an HTTP getter).
mkdir -p "$ROOT/root/e2e" &&
    cp "$(dirname "$0")"/client.c "$(dirname "$0")"/client.py "$(dirname "$0")"/http_get.py "$ROOT/root/e2e/" ||
    die "cannot copy tests/e2e/client.c, client.py, http_get.py into the root"

# ------------------------------------------------------------------- boot --

# Without a systemd on the host, nspawn (--keep-unit --register=no) puts
# itself in ./supervisor and the container in ./payload below its own
# cgroup; from the root cgroup two runs would share them. So each run gets
# a cgroup of its own, in every hierarchy systemd inside will use.
if [ -d /run/systemd/system ]; then
    LAUNCH=(systemd-run --quiet --scope --unit="$MACHINE" --)
else
    LAUNCH=()
    if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
        CGROUPS=("/sys/fs/cgroup/$MACHINE")                      # unified (v2)
    else
        for h in unified systemd; do                              # hybrid / legacy
            [ -d "/sys/fs/cgroup/$h" ] && CGROUPS+=("/sys/fs/cgroup/$h/$MACHINE")
        done
    fi
    [ ${#CGROUPS[@]} -gt 0 ] || die "no cgroup hierarchy found under /sys/fs/cgroup"
    for d in "${CGROUPS[@]}"; do mkdir "$d" || die "cannot create cgroup $d"; done
fi

(
    for d in "${CGROUPS[@]}"; do echo "$BASHPID" >"$d/cgroup.procs" || exit 1; done
    exec "${LAUNCH[@]}" systemd-nspawn --quiet --boot --register=no --keep-unit \
        --private-network --machine="$MACHINE" --console=read-only -D "$ROOT"
) </dev/null >"$RUN/console.log" 2>&1 &
NSPAWN_PID=$!

# The container's PID 1 is nspawn's child.
for _ in $(seq 100); do
    CPID=$(pgrep -P "$NSPAWN_PID" -x systemd | head -1)
    [ -n "$CPID" ] && break
    kill -0 "$NSPAWN_PID" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$CPID" ]; then
    cat "$RUN/console.log" >&2
    die "the container did not start (nspawn output above)"
fi

# Run a command inside the container: all its namespaces, its root, a clean
# environment (nothing of this host's leaks in), at most SECONDS long:
# timeout(1) inside ends the command's whole process group (background jobs
# of a step included), the one outside ends nsenter should the container
# itself hang.
in_ct_t() {
    local t=$1; shift
    timeout -k 5 $((t + 10)) nsenter -t "$CPID" -m -u -i -n -p -r -w -- \
        /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 TERM=dumb DEBIAN_FRONTEND=noninteractive \
        timeout -k 5 "$t" "$@"
}
in_ct() { in_ct_t 60 "$@"; }
# Same, through a shell; the script is the first argument.
sh_ct() { in_ct /bin/sh -c "$1"; }

# ------------------------------------------------------------------ steps --

PASSED=() FAILED=() ALLOWED=() UNEXPECTED_PASS=()
allowed() { case " ${E2E_ALLOW_FAIL:-} " in *" $1 "*) return 0 ;; esac; return 1; }

# step NAME SHELL-SCRIPT [SECONDS]: runs the script inside the container;
# PASS when it exits 0 within SECONDS (default $STEP_TIMEOUT). Output is
# shown indented and kept in $LOGDIR/NAME.log.
step() {
    local name=$1 script=$2 limit=${3:-$STEP_TIMEOUT} t0 rc
    t0=$(date +%s.%N)
    printf '\n=== %s\n' "$name"
    # In the background and waited for, so that a signal to this script is
    # handled at once rather than when the step ends.
    in_ct_t "$limit" /bin/sh -c "set -u; $script" >"$LOGDIR/$name.log" 2>&1 &
    wait $!
    rc=$?
    [ "$rc" = 124 ] || [ "$rc" = 137 ] && echo "TIMED OUT after ${limit}s" >>"$LOGDIR/$name.log"
    sed 's/^/    /' "$LOGDIR/$name.log"
    record "$name" "$rc" "$t0"
}
record() {
    local name=$1 rc=$2 t0=$3
    if [ "$rc" = 0 ]; then
        PASSED+=("$name")
        if allowed "$name"; then
            UNEXPECTED_PASS+=("$name")
            printf 'PASS %s (%s)  <-- listed in E2E_ALLOW_FAIL but passes now\n' "$name" "$(elapsed "$t0")"
        else
            printf 'PASS %s (%s)\n' "$name" "$(elapsed "$t0")"
        fi
    elif allowed "$name"; then
        ALLOWED+=("$name")
        printf '!!!!!!!! FAIL %s (rc %s) -- ALLOWED by E2E_ALLOW_FAIL, not counted !!!!!!!!\n' "$name" "$rc"
    else
        FAILED+=("$name")
        printf 'FAIL %s (rc %s)\n' "$name" "$rc"
    fi
}

# Shell helpers defined inside the container for every step.
LIB='
fail() { echo "FAILED: $*"; exit 1; }
expect_eq() { [ "$1" = "$2" ] || fail "$3: expected \"$2\", got \"$1\""; }
# pubsub CHANNEL TRANSPORT [SUB-PREFIX]: one subscriber (--count 1), then
# publish until the hub counts it (the subscription is registered
# asynchronously; every attempt is a real publish), then check both ends.
pubsub() {
    ch=$1; tr=$2; as=${3:-}
    out=/tmp/sub.$ch.$tr.out; err=/tmp/sub.$ch.$tr.err
    rm -f "$out" "$err"
    $as timeout 20 ipchubctl sub --channel "$ch" --count 1 --transport "$tr" >"$out" 2>"$err" &
    sp=$!
    i=0; res=
    while [ $i -lt 50 ]; do
        res=$(timeout 10 ipchubctl pub --channel "$ch" --transport "$tr" hello 2>/tmp/pub.err); prc=$?
        echo "pub attempt $i (rc $prc): $res"; sed "s/^/  pub stderr: /" /tmp/pub.err
        [ "$res" = "Published (1 subscriber)" ] && break
        kill -0 $sp 2>/dev/null || break
        i=$((i + 1)); sleep 0.2
    done
    wait $sp; src=$?
    echo "sub exit status: $src"; echo "sub stdout:"; cat "$out"; echo "sub stderr:"; cat "$err"
    expect_eq "$res" "Published (1 subscriber)" "publisher output"
    expect_eq "$src" 0 "subscriber exit status"
    expect_eq "$(cat "$out")" "[$ch] hello" "subscriber output"
}
nobody() { setpriv --reuid=nobody --regid=nogroup --clear-groups "$@"; }
'
lstep() { step "$1" "$LIB
$2" "${3:-}"; }

# 1. boot
t0=$(date +%s.%N)
printf '\n=== boot\n'
# systemd's private socket appears a moment after PID 1 starts: until then
# systemctl says "Failed to connect to bus"; then --wait blocks until the
# boot is finished.
for _ in $(seq 300); do
    state=$(timeout 60 nsenter -t "$CPID" -m -u -i -n -p -r -w -- systemctl is-system-running --wait 2>&1)
    case $state in running|degraded|maintenance|stopping|offline) break ;; esac
    sleep 0.1
done
echo "    system state: $state (after $(elapsed "$t0"))"
case $state in
    running) record boot 0 "$t0" ;;
    degraded) in_ct systemctl --failed --no-pager | sed 's/^/    /'; record boot 1 "$t0" ;;
    *) record boot 1 "$t0" ;;
esac
in_ct systemctl --version | head -1 | sed 's/^/    /'

lstep install "cd /root && apt install -y ./$DEB_NAME" 300

lstep package-files '
for f in /usr/bin/ipchubd /usr/bin/ipchubctl /etc/ipchub/ipchub.toml \
         /lib/systemd/system/ipchub.socket /lib/systemd/system/ipchub.service \
         /lib/systemd/system/ipchub-dashboard.service /etc/ipchub/dashboard.token \
         /usr/share/dbus-1/system.d/org.ipchub.conf /usr/lib/sysctl.d/60-ipchub.conf \
         /usr/share/bash-completion/completions/ipchubctl /usr/share/zsh/vendor-completions/_ipchubctl \
         /usr/share/fish/vendor_completions.d/ipchubctl.fish \
         /usr/share/doc/ipchub/README.md /usr/share/doc/ipchub/PROTOCOL.md \
         /usr/share/doc/ipchub/ARCHITECTURE.md /usr/share/doc/ipchub/SECURITY.md \
         /usr/share/doc/ipchub/BENCHMARKS.md; do
    [ -e "$f" ] && echo "ok $f" || fail "missing $f"
done
dpkg-query -W -f="\${Conffiles}\n" ipchub | grep -q /etc/ipchub/ipchub.toml || fail "ipchub.toml is not a conffile"
# Made by postinst, so that each machine has its own: not a conffile.
dpkg-query -W -f="\${Conffiles}\n" ipchub | grep dashboard.token && fail "dashboard.token is a conffile"
# Information only: whether postinst could apply 60-ipchub.conf depends on
# the container (/proc/sys is read-only in nspawn but fs.mqueue.* belongs
# to the IPC namespace).
echo "info: $(sysctl fs.mqueue.msg_max fs.mqueue.msgsize_max fs.mqueue.queues_max | paste -sd" ")"'

lstep system-user '
getent passwd ipchub || fail "no user ipchub"
getent group ipchub || fail "no group ipchub"
expect_eq "$(getent passwd ipchub | cut -d: -f6)" /nonexistent "home of ipchub"
[ "$(id -u ipchub)" -lt 1000 ] || fail "ipchub is not a system user"
getent passwd ipchub-dashboard || fail "no user ipchub-dashboard"
getent group ipchub-dashboard || fail "no group ipchub-dashboard"
expect_eq "$(getent passwd ipchub-dashboard | cut -d: -f6)" /nonexistent "home of ipchub-dashboard"
expect_eq "$(id -gn ipchub-dashboard)" ipchub-dashboard "primary group of ipchub-dashboard"
[ "$(id -u ipchub-dashboard)" -lt 1000 ] || fail "ipchub-dashboard is not a system user"'

lstep units-after-install '
systemctl daemon-reload
expect_eq "$(systemctl is-enabled ipchub.socket)" enabled "ipchub.socket enabled"
expect_eq "$(systemctl is-active ipchub.socket)" active "ipchub.socket started by postinst"
expect_eq "$(systemctl is-enabled ipchub.service)" disabled "ipchub.service not enabled"
expect_eq "$(systemctl is-active ipchub.service)" inactive "ipchub.service not started"
expect_eq "$(systemctl is-enabled ipchub-dashboard.service)" disabled "ipchub-dashboard.service not enabled"
expect_eq "$(systemctl is-active ipchub-dashboard.service)" inactive "ipchub-dashboard.service not started"'

# The dashboard token postinst made: root's alone (systemd hands the
# service a copy with LoadCredential=), 128 random bits in hex.
lstep dashboard-token '
expect_eq "$(stat -c %a:%U:%G /etc/ipchub/dashboard.token)" 600:root:root "token file mode and owner"
grep -Eqx "[0-9a-f]{32}" /etc/ipchub/dashboard.token || fail "the token is not 32 hex digits"
echo "token: 32 hex digits, mode 0600 root:root"'

lstep socket-start '
systemctl start ipchub.socket || fail "systemctl start ipchub.socket"
expect_eq "$(stat -c %F:%a /run/ipchub/ipchub.sock)" socket:666 "socket file type and mode"
systemctl status --no-pager ipchub.socket'

lstep pubsub-socket 'pubsub weather socket
expect_eq "$(systemctl is-active ipchub.service)" active "service started by socket activation"'
lstep pubsub-mqueue 'pubsub weather mqueue'
lstep pubsub-shm 'pubsub weather shm'
lstep pubsub-pipe 'pubsub weather pipe'

# A client that is not root: the socket mode and the hub handing FIFOs and
# message queues to another uid (CAP_CHOWN under User=ipchub) are tested.
lstep nonroot-socket 'pubsub weather socket nobody'
lstep nonroot-fifo 'pubsub weather fifo nobody'
# A logged-in user has XDG_RUNTIME_DIR set; with only the system hub
# running, ipchubctl must still reach it (/run/ipchub/ipchub.sock).
lstep user-session-client '
install -d -o nobody -g nogroup -m 0700 /run/user/65534
out=$(nobody env XDG_RUNTIME_DIR=/run/user/65534 timeout 10 ipchubctl pub --channel weather hello); rc=$?
echo "pub as nobody with XDG_RUNTIME_DIR=/run/user/65534 (rc $rc): $out"
expect_eq "$out" "Published (0 subscribers)" "publish from a user session"'
lstep nonroot-mqueue 'pubsub weather mqueue nobody'

lstep stats '
ipchubctl stats || fail "ipchubctl stats"
j=$(ipchubctl stats --json) || fail "ipchubctl stats --json"
echo "$j"
case $j in "{"*) ;; *) fail "stats --json is not a JSON object" ;; esac'

# The dashboard unit as the package ships it: its own user, the token from
# the credential, loopback only, /metrics with the token and 401 without.
lstep dashboard-start '
systemctl start ipchub-dashboard.service || fail "systemctl start ipchub-dashboard"
i=0
until code=$(python3 /root/e2e/http_get.py http://127.0.0.1:9178/metrics 2>/tmp/http.err); do
    i=$((i + 1))
    [ $i -lt 100 ] || { cat /tmp/http.err; systemctl status --no-pager ipchub-dashboard.service; fail "nothing listens on 127.0.0.1:9178 after 10 s"; }
    systemctl -q is-active ipchub-dashboard.service || { systemctl status --no-pager ipchub-dashboard.service; fail "ipchub-dashboard.service is not running"; }
    sleep 0.1
done
echo "listening after $i tries (first answer: $code)"
systemctl status --no-pager ipchub-dashboard.service
pid=$(systemctl show -P MainPID ipchub-dashboard.service)
expect_eq "$(ps -o user= -p "$pid")" ipchub-dashboard "user of the dashboard process"
expect_eq "$(ps -o group= -p "$pid")" ipchub-dashboard "group of the dashboard process"
# Listening sockets on port 9178 (0x23DA), IPv4 and IPv6: only 127.0.0.1.
l=$(awk "\$4 == \"0A\" && \$2 ~ /:23DA\$/ { print \$2 }" /proc/net/tcp /proc/net/tcp6 | paste -sd" ")
echo "listening on port 9178 (hex, little endian): $l"
expect_eq "$l" 0100007F:23DA "listening addresses"' 60

lstep dashboard-metrics '
token=$(cat /etc/ipchub/dashboard.token)
code=$(python3 /root/e2e/http_get.py http://127.0.0.1:9178/metrics "$token") || fail "GET /metrics"
echo "GET /metrics with the token: $code"; head -20 /tmp/http.body
expect_eq "$code" 200 "status with the token"
grep -qx "ipchub_up 1" /tmp/http.body || fail "no \"ipchub_up 1\": the dashboard did not reach the hub"
grep -q "^ipchub_info{" /tmp/http.body || fail "no ipchub_info"
code=$(python3 /root/e2e/http_get.py "http://127.0.0.1:9178/?token=$token") || fail "GET /?token="
echo "GET /?token=TOKEN (then / with the cookie it sets): $code"
expect_eq "$code" 200 "the page with the token in the URL"
journalctl --no-pager -o cat -u ipchub-dashboard.service | grep -F "$token" && fail "the token is in the journal"
echo "the token is not in the journal"' 60

lstep dashboard-refuses '
code=$(python3 /root/e2e/http_get.py http://127.0.0.1:9178/metrics) || fail "GET /metrics"
echo "GET /metrics without a token: $code"; cat /tmp/http.body
expect_eq "$code" 401 "status without a token"
grep -q ipchub_up /tmp/http.body && fail "metrics served without a token"
code=$(python3 /root/e2e/http_get.py http://127.0.0.1:9178/metrics 0123456789abcdef0123456789abcdef) || fail "GET /metrics"
echo "GET /metrics with a wrong token: $code"
expect_eq "$code" 401 "status with a wrong token"
code=$(python3 /root/e2e/http_get.py http://127.0.0.1:9178/) || fail "GET /"
echo "GET / without a token: $code"
expect_eq "$code" 401 "the page without a token"
systemctl stop ipchub-dashboard.service || fail "systemctl stop ipchub-dashboard"
expect_eq "$(systemctl is-enabled ipchub-dashboard.service)" disabled "still not enabled"' 60

lstep dbus-introspect '
timeout 15 busctl --timeout=10 introspect org.ipchub /org/ipchub > /tmp/introspect.txt 2>&1; rc=$?
cat /tmp/introspect.txt
expect_eq "$rc" 0 "busctl introspect exit status"
grep -q "^org\.ipchub\.Hub1 " /tmp/introspect.txt || fail "no interface org.ipchub.Hub1"'

lstep dbus-policy '
out=$(timeout 15 setpriv --reuid=nobody --regid=nogroup --clear-groups busctl --timeout=10 call org.ipchub /org/ipchub org.ipchub.Hub1 ListChannels 2>&1); rc=$?
echo "nobody ListChannels (rc $rc): $out"
expect_eq "$rc" 0 "an unprivileged user may call ListChannels"
out=$(timeout 15 setpriv --reuid=nobody --regid=nogroup --clear-groups busctl --timeout=10 call org.ipchub /org/ipchub org.ipchub.Hub1 Reload 2>&1); rc=$?
echo "nobody Reload (rc $rc): $out"
case $out in *"ccess denied"*|*AccessDenied*) ;; *) fail "an unprivileged user must not call Reload" ;; esac'

# Privileged methods: root, and a member of group ipchub (here nobody with
# ipchub as a supplementary group, which both the bus and the daemon see).
lstep dbus-admin '
out=$(timeout 15 busctl --timeout=10 call org.ipchub /org/ipchub org.ipchub.Hub1 Reload 2>&1); rc=$?
echo "root Reload (rc $rc): $out"
expect_eq "$rc" 0 "root may call Reload"
out=$(timeout 15 setpriv --reuid=nobody --regid=nogroup --groups=ipchub busctl --timeout=10 \
      call org.ipchub /org/ipchub org.ipchub.Hub1 Publish say weather 5 104 101 108 108 111 2>&1); rc=$?
echo "nobody+ipchub Publish (rc $rc): $out"
expect_eq "$rc" 0 "a member of group ipchub may call Publish"
case $out in "u "*) ;; *) fail "Publish returns the delivery count (u)" ;; esac'

lstep journal '
n=$(journalctl --no-pager -o cat _SYSTEMD_UNIT=ipchub.service _COMM=ipchubd | tee /tmp/j.txt | wc -l)
head -20 /tmp/j.txt
[ "$n" -gt 0 ] || fail "no journal lines from ipchubd in unit ipchub.service"
echo "($n lines from ipchubd)"'

# Journal fields and MESSAGE_IDs (ipchubd(8), JOURNAL FIELDS): a client
# connecting is found by its MESSAGE_ID, at priority 6 (info), with the
# IPCHUB_* fields and none of tracing-journald's F_* ones.
lstep journal-message-id '
id=241d444c39854de78145bdd778af6a26
timeout 10 ipchubctl pub --channel e2e/journal hello >/dev/null || fail "publish"
i=0
while :; do
    journalctl --no-pager -o json -u ipchub MESSAGE_ID=$id >/tmp/jid.json 2>&1
    grep -q "\"IPCHUB_NAME\":\"ipchubctl pub\"" /tmp/jid.json && break
    [ $i -lt 50 ] || { tail -5 /tmp/jid.json; fail "no MESSAGE_ID=$id entry for ipchubctl pub"; }
    i=$((i + 1)); sleep 0.1
done
line=$(grep "\"IPCHUB_NAME\":\"ipchubctl pub\"" /tmp/jid.json | tail -1)
echo "$line"
case $line in *"\"PRIORITY\":\"6\""*) ;; *) fail "client connected is not priority 6" ;; esac
case $line in *"\"IPCHUB_CLIENT\":\""*) ;; *) fail "no IPCHUB_CLIENT field" ;; esac
case $line in *"\"IPCHUB_TRANSPORT\":\""*) ;; *) fail "no IPCHUB_TRANSPORT field" ;; esac
case $line in *"\"F_"*) fail "F_-prefixed fields are back" ;; esac
journalctl --no-pager -o cat -u ipchub MESSAGE_ID=6fba17bdb7b24bba8d52effca717f834 | tail -1 \
    | grep -q "Backends available:" || fail "no ready line naming the transports"'

lstep reload '
pid=$(systemctl show -P MainPID ipchub.service)
systemctl reload ipchub.service || fail "systemctl reload"
sleep 0.5
expect_eq "$(systemctl is-active ipchub.service)" active "active after reload"
expect_eq "$(systemctl show -P MainPID ipchub.service)" "$pid" "same main pid after reload"'

lstep stop-reactivate '
systemctl stop ipchub.service || fail "systemctl stop ipchub.service"
expect_eq "$(systemctl is-active ipchub.service)" inactive "service stopped"
expect_eq "$(systemctl is-active ipchub.socket)" active "socket still listening"
[ -S /run/ipchub/ipchub.sock ] || fail "socket file gone after stopping the service"
out=$(timeout 10 ipchubctl pub --channel weather hello); echo "pub: $out"
expect_eq "$out" "Published (0 subscribers)" "publish after stop"
expect_eq "$(systemctl is-active ipchub.service)" active "service re-activated by the socket"'

lstep restart '
pid=$(systemctl show -P MainPID ipchub.service)
systemctl restart ipchub.service || fail "systemctl restart"
expect_eq "$(systemctl is-active ipchub.service)" active "active after restart"
[ "$(systemctl show -P MainPID ipchub.service)" != "$pid" ] || fail "main pid unchanged"
pubsub weather socket'

# The unit asks for WatchdogSec=30s; here a drop-in shortens it so that a
# daemon that never sends WATCHDOG=1 is caught within the test.
# Issue #16: `systemctl restart` keeps every connection, through systemd's
# file descriptor store (ipchubd(8), "Restart under systemd"). Subscribers
# on socket, mqueue and shm (its rings and channel ring handed over too),
# and a publisher sending numbered messages; the restart happens in the
# middle of the stream. Each kept
# subscriber must print every number once, in order, and never say it
# reconnected; the store must be empty afterwards (nothing left behind).
fdstore_steps() {
FS_LIB='
# stream_through COMMAND...: run COMMAND (a restart) in the middle of the
# stream and check what every subscriber got.
stream_through() {
n=400; ch=fdstore/seq
systemctl reset-failed ipchub.service
systemctl start ipchub.service || fail "start"
old=$(systemctl show -P MainPID ipchub.service)
for tr in socket mqueue shm; do
    rm -f /tmp/fs.$tr.out /tmp/fs.$tr.err
    timeout 90 ipchubctl sub --channel $ch --lines --transport $tr >/tmp/fs.$tr.out 2>/tmp/fs.$tr.err &
    eval "sub_$tr=\$!"
done
# A fourth, on the socket, with the time each message arrived: the longest
# pause a subscriber sees across the restart (BENCHMARKS.md).
timeout 90 ipchubctl sub --channel $ch --format "%U %p" >/tmp/fs.timed.out 2>/tmp/fs.timed.err &
sub_timed=$!
# Until all three are subscribed: probes "0", left out of the comparison.
i=0
until res=$(timeout 10 ipchubctl pub --channel $ch 0 2>/tmp/fs.probe.err); [ "$res" = "Published (4 subscribers)" ]; do
    i=$((i + 1))
    if [ $i -ge 100 ]; then
        echo "last probe: $res"; cat /tmp/fs.probe.err; head /tmp/fs.*.err
        fail "subscribers never all subscribed"
    fi
    sleep 0.1
done
(seq 1 $n | while read -r k; do echo "$k"; sleep 0.01; done |
    timeout 90 ipchubctl pub --channel $ch --lines >/tmp/fs.pub.out 2>/tmp/fs.pub.err; echo $? >/tmp/fs.pub.rc) &
pubber=$!
sleep 1.5
t0=$(date +%s%N)
timeout 120 "$@" || fail "$*"
echo "$* took $(( ($(date +%s%N) - t0) / 1000000 )) ms"
new=$(systemctl show -P MainPID ipchub.service)
echo "MainPID $old -> $new"
[ "$new" != "$old" ] && [ "$new" != 0 ] || fail "the service was not restarted"
wait $pubber
expect_eq "$(cat /tmp/fs.pub.rc)" 0 "publisher exit status"
sed "s/^/  pub stderr: /" /tmp/fs.pub.err
expect_eq "$(grep -c "^Published" /tmp/fs.pub.out)" "$n" "publishes confirmed"; grep "^Published" /tmp/fs.pub.out | sort | uniq -c | sed "s/^/  pub: /"
for tr in socket mqueue shm; do
    for _ in $(seq 100); do [ "$(tail -n1 /tmp/fs.$tr.out)" = "$n" ] && break; sleep 0.1; done
    eval "kill \$sub_$tr"
done
kill $sub_timed
wait
awk -v n=$n "\$2 != 0 { if (k > 0 && \$1 - prev > gap) { gap = \$1 - prev; at = \$2 } prev = \$1; k++ }
    END { printf \"longest pause between two messages: %.1f ms (before message %s), %d of %d received\\n\", gap * 1000, at, k, n }" /tmp/fs.timed.out
journalctl -u ipchub.service -o short-precise --no-pager -n 30 |
    grep -E "fd store|took over|clients kept|ready|stopping" | sed "s/^/  journal: /"
journalctl -u ipchub.service --no-pager -n 60 | grep -q "clients and state left in the fd store" ||
    fail "the old hub did not use the fd store"
journalctl -u ipchub.service --no-pager -n 60 | grep -q "planned restart: clients kept" ||
    fail "the new hub did not take the clients over"
seq 1 $n >/tmp/fs.want
for tr in socket mqueue shm; do
    echo "$tr subscriber stderr:"; sed "s/^/  /" /tmp/fs.$tr.err
    grep -v "^0$" /tmp/fs.$tr.out >/tmp/fs.$tr.got
    cmp -s /tmp/fs.want /tmp/fs.$tr.got ||
        { diff /tmp/fs.want /tmp/fs.$tr.got | head -20; fail "$tr subscriber: not every message once, in order"; }
    ! grep -q reconnect /tmp/fs.$tr.err || fail "$tr subscriber reconnected"
    echo "$tr subscriber: all $n messages once, in order, no reconnection"
done
sleep 0.5
expect_eq "$(systemctl show -P NFileDescriptorStore ipchub.service)" 0 "descriptors left in the store"
}'
lstep restart-keeps-clients "$FS_LIB
stream_through systemctl restart ipchub.service"
# A package upgrade restarts the service the same way (dh_installsystemd's
# restart after upgrade): the clients must not notice either.
lstep upgrade-keeps-clients "$FS_LIB
cd /root
expect_eq \"\$(dpkg-query -W -f '\${Version}' ipchub)\" '$DEB_VERSION' 'version before the upgrade'
stream_through apt-get install -y ./$UP_NAME
expect_eq \"\$(dpkg-query -W -f '\${Version}' ipchub)\" '$UP_VERSION' 'version after the upgrade'"

# Repeated restarts with a client connected: nothing accumulates in the
# store or in the hub, and the client is still the same connection.
lstep restart-loop-no-growth '
systemctl start ipchub.service || fail "start"
ch=fdstore/loop
timeout 90 ipchubctl sub --channel $ch --lines >/tmp/fl.out 2>/tmp/fl.err &
sp=$!
i=0
until res=$(timeout 10 ipchubctl pub --channel $ch 0 2>/tmp/fl.probe.err); [ "$res" = "Published (1 subscriber)" ]; do
    i=$((i + 1))
    if [ $i -ge 100 ]; then
        echo "last probe: $res"; cat /tmp/fl.probe.err /tmp/fl.err
        fail "never subscribed"
    fi
    sleep 0.1
done
first=
for k in 1 2 3 4 5; do
    # Five restarts in a row would hit the default start rate limit
    # (StartLimitBurst=5 in 10 s): that is systemd guarding against a
    # crash loop, not what is tested here.
    systemctl reset-failed ipchub.service
    timeout 60 systemctl restart ipchub.service || fail "restart $k"
    timeout 10 ipchubctl pub --channel $ch "$k" >/dev/null 2>&1 || fail "publish $k"
    pid=$(systemctl show -P MainPID ipchub.service)
    nfd=$(ls /proc/$pid/fd | wc -l)
    echo "restart $k: pid $pid, $nfd descriptors, store $(systemctl show -P NFileDescriptorStore ipchub.service)"
    first=${first:-$nfd}
done
expect_eq "$nfd" "$first" "descriptors of the hub after the last restart (as after the first)"
for _ in $(seq 50); do [ "$(tail -n1 /tmp/fl.out)" = 5 ] && break; sleep 0.1; done
kill $sp; wait
expect_eq "$(grep -v "^0$" /tmp/fl.out | paste -sd" ")" "1 2 3 4 5" "messages across five restarts"
! grep -q reconnect /tmp/fl.err || { cat /tmp/fl.err; fail "the subscriber reconnected"; }
expect_eq "$(systemctl show -P NFileDescriptorStore ipchub.service)" 0 "descriptors left in the store"'
}
fdstore_steps

lstep watchdog '
mkdir -p /run/systemd/system/ipchub.service.d
printf "[Service]\nWatchdogSec=2s\n" > /run/systemd/system/ipchub.service.d/e2e-watchdog.conf
systemctl daemon-reload && systemctl restart ipchub.service || fail restart
sleep 5
st=$(systemctl show -P ActiveState ipchub.service); res=$(systemctl show -P Result ipchub.service)
n=$(systemctl show -P NRestarts ipchub.service)
rm -r /run/systemd/system/ipchub.service.d; systemctl daemon-reload
echo "after 5 s with WatchdogSec=2s: ActiveState=$st Result=$res NRestarts=$n"
expect_eq "$res" success "service result (watchdog = no WATCHDOG=1 pings)"
expect_eq "$n" 0 "restarts"
expect_eq "$st" active "state"
systemctl restart ipchub.service'

# Upgrade (upgrade-keeps-clients installed the higher version; reinstalling
# it runs the same maintainer scripts with the old version as argument):
# the socket keeps listening (same inode), a running service is restarted
# onto the new binary.
lstep upgrade '
timeout 10 ipchubctl pub --channel weather hello >/dev/null
expect_eq "$(systemctl is-active ipchub.service)" active "service running before the upgrade"
pid=$(systemctl show -P MainPID ipchub.service); ino=$(stat -c %i /run/ipchub/ipchub.sock)
token=$(sha256sum /etc/ipchub/dashboard.token)
cd /root && apt install -y --reinstall ./'"$UP_NAME"' >/tmp/upgrade.log 2>&1 || { cat /tmp/upgrade.log; fail "apt install --reinstall"; }
expect_eq "$(sha256sum /etc/ipchub/dashboard.token)" "$token" "dashboard token kept"
expect_eq "$(systemctl is-active ipchub.socket)" active "socket after the upgrade"
expect_eq "$(stat -c %i /run/ipchub/ipchub.sock)" "$ino" "socket file inode (kept listening)"
expect_eq "$(systemctl is-active ipchub.service)" active "service after the upgrade"
[ "$(systemctl show -P MainPID ipchub.service)" != "$pid" ] || fail "service was not restarted by the upgrade"
echo "service restarted: pid $pid -> $(systemctl show -P MainPID ipchub.service)"
pubsub weather socket' 300

lstep socket-stop-removes-file '
systemctl stop ipchub.socket || fail "systemctl stop ipchub.socket"
expect_eq "$(systemctl is-active ipchub.service)" inactive "service stopped with its socket"
[ ! -e /run/ipchub/ipchub.sock ] || fail "socket file left after stopping ipchub.socket"
systemctl start ipchub.socket || fail "start the socket again"
[ -S /run/ipchub/ipchub.sock ] || fail "socket file not recreated"'

# The client libraries, with the hub running: installed with apt as a user
# would, then a C program built against the installed header and pkg-config
# file, and Python, each publishing and receiving through the hub.
lstep install-libs "
[ ${#LIB_NAMES[@]} = 3 ] || fail 'not all of $LIB_PACKAGES were found next to $DEB_NAME'
cd /root && apt install -y $(printf './%s ' "${LIB_NAMES[@]}")" 300

lstep lib-files '
lib=$(dpkg -L libipchub0 | grep "/libipchub\.so\.0\$") || fail "libipchub0 has no libipchub.so.0"
echo "$lib -> $(readlink -f "$lib")"
case $lib in /usr/lib/*-*/libipchub.so.0) ;; *) fail "$lib is not in /usr/lib/<multiarch>" ;; esac
dir=${lib%/*}
soname=$(objdump -p "$(readlink -f "$lib")" | sed -n "s/^ *SONAME *//p")
echo "SONAME $soname"
expect_eq "$soname" libipchub.so.0 "soname of the library"
ldconfig -p | grep "libipchub\.so\.0 " || fail "ldconfig does not know libipchub.so.0"
expect_eq "$(readlink "$dir/libipchub.so")" libipchub.so.0 "the -dev link"
for f in /usr/include/ipchub.h "$dir/pkgconfig/ipchub.pc" /usr/share/man/man3/libipchub.3.gz \
         /usr/lib/python3/dist-packages/ipchub/ipchub.abi3.so \
         /usr/lib/python3/dist-packages/ipchub/__init__.py \
         /usr/lib/python3/dist-packages/ipchub/__init__.pyi \
         /usr/lib/python3/dist-packages/ipchub/py.typed; do
    [ -e "$f" ] && echo "ok $f" || fail "missing $f"
done
ls /usr/share/doc/libipchub-dev/examples/ | grep -q "^publisher\.c" || fail "no examples in /usr/share/doc/libipchub-dev/examples"
expect_eq "$(pkg-config --modversion ipchub)" "$(dpkg-query -W -f="\${Version}" libipchub0)" "pkg-config --modversion"
echo "pkg-config --cflags --libs ipchub: $(pkg-config --cflags --libs ipchub)"
pkg-config --libs ipchub | grep -q -- -lipchub || fail "pkg-config --libs lacks -lipchub"' 60

# A program of our own (tests/e2e/client.c): subscribe, publish, receive
# its message back through the hub, on three transports.
lstep c-client '
cd /tmp && gcc -Wall -Werror -o client /root/e2e/client.c $(pkg-config --cflags --libs ipchub) || fail "gcc"
ldd ./client | grep libipchub || fail "client is not linked with libipchub"
for t in socket shm mqueue; do
    echo "--- $t"
    timeout 20 ./client $t e2e/c/$t || fail "C client over $t"
done' 120

# The shipped examples, against ipchubctl: C subscribes and ipchubctl
# publishes, then the other way round.
lstep c-examples '
ex=/usr/share/doc/libipchub-dev/examples
mkdir -p /tmp/ex && cd /tmp/ex
for p in publisher subscriber; do
    if [ -f $ex/$p.c ]; then cp $ex/$p.c .; else zcat $ex/$p.c.gz >$p.c; fi
    gcc -Wall -o $p $p.c $(pkg-config --cflags --libs ipchub) || fail "gcc $p.c"
done
timeout 20 ./subscriber -t shm -n 1 -w 15 "e2e/ex/#" >sub.out 2>sub.err &
sp=$!
i=0; while ! grep -q subscribed sub.out && [ $i -lt 100 ]; do i=$((i + 1)); sleep 0.1; done
i=0
while [ $i -lt 50 ]; do
    res=$(timeout 10 ipchubctl pub --channel e2e/ex/today sunny); echo "ipchubctl pub: $res"
    [ "$res" = "Published (1 subscriber)" ] && break
    kill -0 $sp 2>/dev/null || break
    i=$((i + 1)); sleep 0.2
done
wait $sp; src=$?
echo "subscriber ($src):"; cat sub.out sub.err
expect_eq "$src" 0 "C subscriber exit status"
grep -qx "\[e2e/ex/today\] sunny (priority 0)" sub.out || fail "C subscriber output"
timeout 20 ipchubctl sub --channel e2e/ex/back --count 1 >ctl.out 2>ctl.err &
sp=$!
i=0
while [ $i -lt 50 ]; do
    res=$(timeout 10 ./publisher -t shm -c e2e/ex/back rainy); echo "C publisher: $res"
    [ "$res" = "delivered to 1" ] && break
    kill -0 $sp 2>/dev/null || break
    i=$((i + 1)); sleep 0.2
done
wait $sp; src=$?
echo "ipchubctl sub ($src):"; cat ctl.out ctl.err
expect_eq "$src" 0 "ipchubctl sub exit status"
expect_eq "$(cat ctl.out)" "[e2e/ex/back] rainy" "ipchubctl sub output"' 120

# tests/e2e/client.py over three transports, then the one-liner a user
# would try first.
lstep python-client '
python3 -c "import ipchub, sys; print(ipchub.__file__); sys.exit(not ipchub.__file__.startswith(\"/usr/lib/python3/dist-packages/ipchub/\"))" ||
    fail "python3 does not import the packaged module"
expect_eq "$(python3 -c "import importlib.metadata as m; print(m.version(\"ipchub\"))")" \
    "$(dpkg-query -W -f="\${Version}" python3-ipchub)" "the distribution version pip sees"
for t in socket shm mqueue; do
    echo "--- $t"
    timeout 20 python3 /root/e2e/client.py $t e2e/py/$t || fail "Python client over $t"
done
timeout 20 ipchubctl sub --channel e2e/py/ctl --count 1 >/tmp/py-ctl.out 2>&1 &
sp=$!
timeout 15 python3 -c "
import ipchub, time
with ipchub.connect() as hub:
    for _ in range(50):
        n = hub.publish(\"e2e/py/ctl\", b\"from python\", confirm=True)
        print(\"delivered to\", n)
        if n:
            break
        time.sleep(0.2)
" || fail "python3 -c publish"
wait $sp; src=$?
cat /tmp/py-ctl.out
expect_eq "$src" 0 "ipchubctl sub exit status"
grep -qx "\[e2e/py/ctl\] from python" /tmp/py-ctl.out || fail "ipchubctl sub output"' 120

lstep purge-libs '
apt purge -y libipchub-dev libipchub0 python3-ipchub || fail "apt purge"
left=0
for p in /usr/include/ipchub.h /usr/lib/python3/dist-packages/ipchub /usr/share/doc/libipchub-dev; do
    [ -e "$p" ] && { echo "left behind: $p"; left=1; }
done
ls /usr/lib/*/libipchub* /usr/lib/*/pkgconfig/ipchub.pc 2>/dev/null && { echo "library files left behind"; left=1; }
ldconfig -p | grep libipchub && { echo "ldconfig still lists libipchub"; left=1; }
[ $left = 0 ] || fail "purging the libraries left something behind"
systemctl is-active ipchub.socket || fail "the hub went with its client libraries"' 120

# With the dashboard running, as after "systemctl enable --now": removal
# must stop it (prerm), or its user could not be deleted.
lstep purge '
systemctl start ipchub-dashboard.service || fail "systemctl start ipchub-dashboard"
apt purge -y ipchub || fail "apt purge"
left=0
for p in /etc/ipchub /run/ipchub /usr/bin/ipchubd /lib/systemd/system/ipchub.socket \
         /lib/systemd/system/ipchub-dashboard.service \
         /etc/systemd/system/sockets.target.wants/ipchub.socket; do
    [ -e "$p" ] && { echo "left behind: $p"; left=1; }
done
for u in ipchub ipchub-dashboard; do
    getent passwd $u && { echo "user $u left behind"; left=1; }
    getent group $u && { echo "group $u left behind"; left=1; }
done
ls /dev/mqueue | grep -i ipchub && { echo "message queues left behind"; left=1; }
pgrep -l ipchubd && { echo "ipchubd still running"; left=1; }
for u in ipchub.socket ipchub.service ipchub-dashboard.service; do
    s=$(systemctl is-active $u); echo "$u: $s"
    [ "$s" = inactive ] || left=1
done
dpkg -s ipchub >/dev/null 2>&1 && { echo "package still known to dpkg"; left=1; }
[ $left = 0 ] || fail "purge left something behind"' 300

# Keep the whole journal of the container for a post-mortem.
in_ct journalctl -b --no-pager -o short-monotonic >"$LOGDIR/journal.txt" 2>&1

# poweroff
t0=$(date +%s.%N)
printf '\n=== poweroff\n'
in_ct systemctl poweroff >/dev/null 2>&1
for _ in $(seq 150); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.2; done
if kill -0 "$NSPAWN_PID" 2>/dev/null; then
    echo "    the container did not power off within 30 s"
    record poweroff 1 "$t0"
else
    wait "$NSPAWN_PID"; nrc=$?
    NSPAWN_PID=
    echo "    systemd-nspawn exit status: $nrc"
    record poweroff "$nrc" "$t0"
fi

# ---------------------------------------------------------------- summary --

printf '\n================ e2e summary (%s) ================\n' "$(elapsed "$T_START")"
printf 'passed:  %s\n' "${#PASSED[@]}"
[ ${#FAILED[@]} -gt 0 ] && printf 'FAILED:  %s\n' "${FAILED[*]}"
[ ${#ALLOWED[@]} -gt 0 ] && printf '!!!!!!!! allowed to fail (E2E_ALLOW_FAIL): %s\n' "${ALLOWED[*]}"
[ ${#UNEXPECTED_PASS[@]} -gt 0 ] && printf 'pass now, remove from E2E_ALLOW_FAIL: %s\n' "${UNEXPECTED_PASS[*]}"
printf 'logs:    %s\n' "$LOGDIR"
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "RESULT: FAIL"
    exit 1
fi
echo "RESULT: PASS"
exit 0
