#!/bin/bash
# Checks the D-Bus policy etc/dbus-1/system.d/org.ipchub.conf on a private
# bus that uses the system bus's own default policy (/usr/share/dbus-1/system.conf),
# without ipchubd and without touching this machine's users or system bus.
#
#   tests/e2e/dbus-policy.sh
#
# A stand-in service owns org.ipchub and exports /org/ipchub with no methods:
# a call the policy lets through comes back as UnknownMethod from the
# service, a call it refuses as AccessDenied from the bus. That tells the
# two apart without the real daemon.
#
# The host has no user or group "ipchub" (the package creates them), so the
# policy is loaded with user ipchub -> "daemon" and group ipchub -> "staff";
# the rules themselves are the file's, unchanged.
# Needs root, dbus-daemon, /usr/bin/python3 with python3-dbus and python3-gi.
set -u
here=$(cd "$(dirname "$0")" && pwd)
policy=$here/../../etc/dbus-1/system.d/org.ipchub.conf
PY=/usr/bin/python3

[ "$(id -u)" = 0 ] || { echo "dbus-policy: must run as root" >&2; exit 2; }
command -v dbus-daemon >/dev/null || { echo "dbus-policy: no dbus-daemon (apt-get install dbus)" >&2; exit 2; }
$PY -c 'import dbus, gi' 2>/dev/null || { echo "dbus-policy: $PY needs python3-dbus and python3-gi" >&2; exit 2; }
getent passwd daemon >/dev/null && getent group staff >/dev/null || { echo "dbus-policy: needs user daemon, group staff" >&2; exit 2; }

tmp=$(mktemp -d /tmp/ipchub-dbus-policy.XXXXXX)
chmod 0755 "$tmp"
bus_pid= svc_pid=
cleanup() {
    [ -n "$svc_pid" ] && kill "$svc_pid" 2>/dev/null
    [ -n "$bus_pid" ] && kill "$bus_pid" 2>/dev/null
    wait 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT

sed -e 's/user="ipchub"/user="daemon"/g' -e 's/group="ipchub"/group="staff"/g' "$policy" >"$tmp/org.ipchub.conf"
# The system bus configuration minus what only the real one does (fork, run
# as messagebus, pid file, syslog, its socket, the installed policies).
sed -e '/<user>/d' -e '/<fork\/>/d' -e '/<pidfile>/d' -e '/<syslog\/>/d' \
    -e '/<servicehelper>/d' -e '/<standard_system_servicedirs\/>/d' \
    -e "s|<listen>.*</listen>|<listen>unix:path=$tmp/bus</listen>|" \
    -e '/<includedir>/d' -e '/<include .*>/d' \
    -e "s|</busconfig>|  <include>$tmp/org.ipchub.conf</include>\n</busconfig>|" \
    /usr/share/dbus-1/system.conf >"$tmp/bus.conf"

(umask 0; exec dbus-daemon --config-file="$tmp/bus.conf" --nofork --print-address=3 3>"$tmp/address" 2>"$tmp/bus.log") &
bus_pid=$!
for _ in $(seq 50); do [ -s "$tmp/address" ] && break; sleep 0.1; done
[ -s "$tmp/address" ] || { cat "$tmp/bus.log"; echo "dbus-policy: bus did not start" >&2; exit 1; }
if grep -qi 'ipchub' "$tmp/bus.log"; then
    cat "$tmp/bus.log"; echo "dbus-policy: the bus complained about the policy" >&2; exit 1
fi
export DBUS_SYSTEM_BUS_ADDRESS=$(head -1 "$tmp/address")

cat >"$tmp/own.py" <<'EOF'
import sys, dbus, dbus.service, dbus.mainloop.glib
from gi.repository import GLib
dbus.mainloop.glib.DBusGMainLoop(set_as_default=True)
bus = dbus.SystemBus()
try:
    name = dbus.service.BusName("org.ipchub", bus, do_not_queue=True)
except dbus.exceptions.DBusException as e:
    print(e.get_dbus_name()); sys.exit(1)
class Hub(dbus.service.Object):
    pass
hub = Hub(bus, "/org/ipchub")
print("owned", flush=True)
if len(sys.argv) > 1:
    GLib.MainLoop().run()
EOF
chmod 0644 "$tmp/own.py"

as() { local u=$1 g=$2; shift 2; setpriv --reuid="$u" --regid="$g" --init-groups "$@"; }
as_nobody() { setpriv --reuid=nobody --regid=nogroup --clear-groups "$@"; }
as_staff() { setpriv --reuid=nobody --regid=nogroup --groups=staff "$@"; }

fails=0
check() { # check NAME EXPECTED(allowed|denied) OUTPUT
    local got=allowed
    case $3 in *AccessDenied*|*"ccess denied"*) got=denied ;; esac
    if [ "$got" = "$2" ]; then echo "PASS $1: $2"; else echo "FAIL $1: expected $2, got: $3"; fails=$((fails+1)); fi
}

# Owning the name.
check "nobody owns org.ipchub" denied "$(as_nobody $PY "$tmp/own.py" 2>&1)"
check "root owns org.ipchub" allowed "$($PY "$tmp/own.py" 2>&1)"
# The stand-in runs as the stand-in for user ipchub, and stays.
as daemon daemon $PY "$tmp/own.py" serve >"$tmp/svc.out" 2>&1 &
svc_pid=$!
for _ in $(seq 50); do grep -q owned "$tmp/svc.out" && break; sleep 0.1; done
check "user ipchub owns org.ipchub" allowed "$(cat "$tmp/svc.out")"
grep -q owned "$tmp/svc.out" || { echo "dbus-policy: stand-in service did not start" >&2; exit 1; }

call() { # call WHO INTERFACE MEMBER
    local who=$1 iface=$2 member=$3
    $who dbus-send --system --print-reply --reply-timeout=5000 --dest=org.ipchub /org/ipchub "$iface.$member" 2>&1
}
for who in as_nobody as_staff ""; do
    label=${who:-root}; label=${label#as_}; [ "$label" = staff ] && label="group ipchub"
    check "$label Introspect" allowed "$(call "$who" org.freedesktop.DBus.Introspectable Introspect)"
    check "$label Peer.Ping" allowed "$(call "$who" org.freedesktop.DBus.Peer Ping)"
    check "$label Properties.Get" allowed "$(call "$who" org.freedesktop.DBus.Properties Get)"
    check "$label Properties.GetAll" allowed "$(call "$who" org.freedesktop.DBus.Properties GetAll)"
    check "$label GetManagedObjects" allowed "$(call "$who" org.freedesktop.DBus.ObjectManager GetManagedObjects)"
    for m in ListChannels ListClients ChannelStats Components; do
        check "$label $m" allowed "$(call "$who" org.ipchub.Hub1 $m)"
    done
    priv=denied; [ "$label" != nobody ] && priv=allowed
    check "$label Properties.Set" $priv "$(call "$who" org.freedesktop.DBus.Properties Set)"
    for m in Publish DisconnectClient Reload; do
        check "$label $m" $priv "$(call "$who" org.ipchub.Hub1 $m)"
    done
done

if [ $fails -gt 0 ]; then echo "dbus-policy: $fails FAILED"; exit 1; fi
echo "dbus-policy: all checks passed"
