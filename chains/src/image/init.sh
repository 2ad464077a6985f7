#!/bin/sh
# /init of a vnf image (`vnfctl image`): PID 1, busybox ash, no other init system.
#
# Boot: mount the kernel's filesystems, load the modules the builder listed (in dependency
# order), find the NoCloud seed (an ISO 9660 holding vnf/boot.env, label cidata) on any
# disk or CD-ROM, configure the underlay NIC (eth0), the external NICs the config names and
# the management NIC (DHCP), then run the VNF and restart it with backoff whenever it
# exits. The console (ttyS0) gets one `vnf-image: ...` line per step; the lines the CI test
# and operators match on are:
#
#   vnf-image: started vnf-KIND pid N
#   vnf-image: READY kind=KIND name=NAME underlay=ADDR admin=ADMIN boot=SECONDS
#   vnf-image: READY again kind=...            (after a restart, ready again)
#   vnf-image: vnf-KIND exited (status S), restarting in Xs
#   vnf-image: powering off
#   vnf-image: FATAL: ...                      (then power off)
#
# Power off: the ACPI power button (busybox acpid runs /etc/acpi/PWRF/00000080), SIGTERM
# or SIGUSR2 to PID 1: SIGTERM to the VNF, up to 5 s for it to exit, sync, poweroff -f.
# Kernel command line: `vnf.shell` gives a shell on the console instead of powering off
# after a FATAL error (for debugging an image by hand).

export PATH=/usr/sbin:/usr/bin:/sbin:/bin

log() { echo "vnf-image: $*"; }

/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
# Nothing here can load a module on demand: keep the kernel from trying.
echo >/proc/sys/kernel/modprobe

. /etc/vnf-image/image.env
log "vnf-$IMAGE_KIND image, kernel $(uname -r), booting"

uptime_s() { read -r up _ </proc/uptime && echo "$up"; }

# Is process $1 running (not gone, not a zombie)?
alive() {
    [ -n "$1" ] && [ -r "/proc/$1/stat" ] || return 1
    read -r _ _ state _ <"/proc/$1/stat" 2>/dev/null || return 1
    [ "$state" != Z ]
}

VNF_PID=
shutdown() {
    trap '' TERM USR2
    log "powering off"
    if alive "$VNF_PID"; then
        kill -TERM "$VNF_PID"
        (sleep 5 && kill -KILL "$VNF_PID" 2>/dev/null) &
        watchdog=$!
        wait "$VNF_PID"
        log "vnf-$VNF_KIND stopped (status $?)"
        kill "$watchdog" 2>/dev/null
    fi
    sync
    poweroff -f
}
trap shutdown TERM USR2

fatal() {
    log "FATAL: $*"
    if grep -qw vnf.shell /proc/cmdline; then
        log "vnf.shell: starting a shell on the console"
        setsid cttyhack sh
    fi
    sync
    poweroff -f
}

# Modules, in the order the builder resolved (dependencies first).
loaded=0
while read -r module; do
    [ -n "$module" ] || continue
    if insmod "$module"; then
        loaded=$((loaded + 1))
    else
        log "cannot load $module"
    fi
done </etc/vnf-image/modules
log "loaded $loaded modules"

# Power button: busybox acpid maps it to the action PWRF/00000080.
mkdir -p /etc/acpi/PWRF
cat >/etc/acpi/PWRF/00000080 <<'EOF'
#!/bin/sh
echo "vnf-image: ACPI power button" >/dev/console
kill -USR2 1
EOF
chmod 0755 /etc/acpi/PWRF/00000080
i=0
while [ ! -e /dev/input/event0 ] && [ $i -lt 20 ]; do
    sleep 0.1
    i=$((i + 1))
done
if [ -e /dev/input/event0 ]; then
    acpid -f -c /etc/acpi -l /run/acpid.log </dev/null &
else
    log "no input device: the ACPI power button will not work"
fi

# eth0's address as it is now (the seed's, or the DHCP lease's).
underlay_now() {
    ip -4 -o addr show dev eth0 | awk '{print $4; exit}'
}

# The user-data vnfctl writes (a #cloud-config with write_files in base64) -> the two files
# this init needs. For seeds made by other tools: an OpenStack config drive
# (openstack/latest/user_data) or a plain NoCloud seed (user-data) holding that user-data.
from_user_data() {
    rm -f /run/config.b64 /run/boot.b64
    awk '/^- path: /{p=$3} /^  content: /{
        if (p == "/etc/vnf/config.yaml") print $2 > "/run/config.b64";
        if (p == "/etc/vnf/boot.env") print $2 > "/run/boot.b64" }' "$1"
    [ -s /run/config.b64 ] && [ -s /run/boot.b64 ] || return 1
    base64 -d /run/config.b64 >/run/seed-config.yaml &&
        base64 -d /run/boot.b64 >/run/seed-boot.env
}

# The seed: the first disk or CD-ROM holding an ISO 9660 (magic CD001 in the volume
# descriptor at 32 KiB) with vnf/boot.env, or with user-data written by vnfctl (an
# OpenStack config drive, or a NoCloud seed). Devices appear asynchronously (SCSI scans in
# the background): look for up to 30 s.
mkdir -p /run/seed /etc/vnf
seed=
i=0
while [ -z "$seed" ] && [ $i -lt 300 ]; do
    for dev in /dev/vd* /dev/sr* /dev/sd* /dev/xvd*; do
        [ -b "$dev" ] || continue
        [ "$(dd if="$dev" bs=1 skip=32769 count=5 2>/dev/null)" = CD001 ] || continue
        mount -t iso9660 -o ro "$dev" /run/seed 2>/dev/null || continue
        if [ -f /run/seed/vnf/boot.env ] && [ -f /run/seed/vnf/config.yaml ]; then
            cp /run/seed/vnf/boot.env /run/seed-boot.env
            cp /run/seed/vnf/config.yaml /run/seed-config.yaml
            seed=$dev
            break
        fi
        for ud in /run/seed/openstack/latest/user_data /run/seed/user-data; do
            if [ -f "$ud" ] && from_user_data "$ud"; then
                seed="$dev (${ud#/run/seed/})"
                break
            fi
        done
        [ -n "$seed" ] && break
        umount /run/seed
    done
    [ -n "$seed" ] || sleep 0.1
    i=$((i + 1))
done
[ -n "$seed" ] || fatal "no seed: no disk or CD-ROM holds an ISO 9660 with vnf/boot.env or vnfctl's user-data"
cp /run/seed-boot.env /etc/vnf/boot.env
cp /run/seed-config.yaml /etc/vnf/config.yaml
umount /run/seed
. /etc/vnf/boot.env
log "seed $seed: tenant $VNF_TENANT instance $VNF_NAME kind $VNF_KIND"
[ "$VNF_KIND" = "$IMAGE_KIND" ] || fatal "the seed is for a $VNF_KIND, this image runs vnf-$IMAGE_KIND"
BIN=/bin/vnf-$VNF_KIND
ADMIN_PORT=${ADMIN##*:}
hostname "$VNF_NAME"

# udhcpc's hook, for a DHCP underlay and the management NIC. The underlay's default route
# (metric 0) wins over the management NIC's (metric 100).
mkdir -p /usr/share/udhcpc
cat >/usr/share/udhcpc/default.script <<'EOF'
#!/bin/sh
metric=100
[ "$interface" = eth0 ] && metric=0
case "$1" in
deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
bound | renew)
    if ! ip -4 addr show dev "$interface" | grep -q "inet $ip/"; then
        ip -4 addr flush dev "$interface"
        ip addr add "$ip/${mask:-24}" dev "$interface"
    fi
    for r in $router; do
        ip route replace default via "$r" dev "$interface" metric "$metric"
        break
    done
    echo "vnf-image: $interface: dhcp $ip/${mask:-24} router ${router:-none}" >/dev/console
    ;;
esac
exit 0
EOF
chmod 0755 /usr/share/udhcpc/default.script

# Network: eth0 is the underlay (the VNF's VTEP), the interfaces the config names for
# external networks are left to the VNF (up, no address), the management NIC gets DHCP.
ip link set lo up
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do
    sleep 0.1
    i=$((i + 1))
done
[ -e /sys/class/net/eth0 ] || fatal "no eth0: the underlay needs a (virtio) NIC"
ip link set eth0 mtu "${UNDERLAY_MTU:-1500}" || log "eth0: cannot set MTU ${UNDERLAY_MTU:-1500}"
ip link set eth0 up
if [ "$UNDERLAY_ADDRESS" = dhcp ]; then
    # In the foreground until a lease (10 tries), then on in the background for renewals.
    udhcpc -i eth0 -s /usr/share/udhcpc/default.script -b -t 10 -T 1 >/dev/null 2>&1
    ip -4 addr show dev eth0 | grep -q inet || log "eth0: no DHCP lease yet: the VNF waits for its address"
else
    ip addr add "$UNDERLAY_ADDRESS" dev eth0 || fatal "eth0: cannot add $UNDERLAY_ADDRESS"
    if [ -n "$UNDERLAY_GATEWAY" ]; then
        ip route add default via "$UNDERLAY_GATEWAY" dev eth0 || log "eth0: cannot route via $UNDERLAY_GATEWAY"
    fi
    log "eth0: underlay $UNDERLAY_ADDRESS gateway ${UNDERLAY_GATEWAY:-none} mtu ${UNDERLAY_MTU:-1500}"
fi
for nic in $(echo "$EXTERNAL_INTERFACES" | tr , " "); do
    if [ -e "/sys/class/net/$nic" ]; then
        ip link set "$nic" up
        log "$nic: external network (the VNF's)"
    else
        log "$nic: missing: the config's external network on it will not work"
    fi
done
if [ -n "$MANAGEMENT_INTERFACE" ] && [ -e "/sys/class/net/$MANAGEMENT_INTERFACE" ]; then
    ip link set "$MANAGEMENT_INTERFACE" up
    udhcpc -i "$MANAGEMENT_INTERFACE" -s /usr/share/udhcpc/default.script -b -t 5 -T 1 >/dev/null 2>&1
else
    log "no management NIC ($MANAGEMENT_INTERFACE): admin only on the underlay"
fi

# The VNF's output goes to the console through a FIFO and cat: not a terminal, so its log
# lines come without colour codes. Init holds the FIFO open (fd 3), so cat never sees the
# end of it when the VNF restarts.
mkfifo /run/vnf.log
cat /run/vnf.log >/dev/console &
exec 3<>/run/vnf.log

# The VNF, restarted with backoff: 0.1 s, doubling up to 5 s; back to 0.1 s after it ran
# for a minute.
ready_once=
delay_ms=100
while :; do
    "$BIN" --config /etc/vnf/config.yaml --admin "$ADMIN" </dev/null >/run/vnf.log 2>&1 &
    VNF_PID=$!
    started=$(uptime_s)
    log "started vnf-$VNF_KIND pid $VNF_PID"
    while alive "$VNF_PID"; do
        # Not wget -T: busybox-static 1.35's wget crashes with it (Debian bookworm).
        if timeout 2 wget -q -O /dev/null "http://127.0.0.1:$ADMIN_PORT/readyz" 2>/dev/null; then
            if [ -z "$ready_once" ]; then
                ready_once=1
                log "READY kind=$VNF_KIND name=$VNF_NAME underlay=$(underlay_now) admin=$ADMIN boot=$(uptime_s)"
            else
                log "READY again kind=$VNF_KIND name=$VNF_NAME underlay=$(underlay_now) admin=$ADMIN boot=$(uptime_s)"
            fi
            break
        fi
        sleep 0.1
    done
    wait "$VNF_PID"
    status=$?
    ran=$(($(uptime_s | cut -d. -f1) - ${started%.*}))
    [ "$ran" -ge 60 ] && delay_ms=100
    log "vnf-$VNF_KIND exited (status $status), restarting in $((delay_ms / 1000)).$((delay_ms % 1000 / 100))s"
    sleep "$((delay_ms / 1000)).$((delay_ms % 1000 / 100))" &
    wait $!
    delay_ms=$((delay_ms * 2))
    [ "$delay_ms" -gt 5000 ] && delay_ms=5000
done
