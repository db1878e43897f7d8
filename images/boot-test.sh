#!/usr/bin/env bash
# Boot an image under qemu and wait for the agent:   ./images/boot-test.sh tx|rx [IMAGE]
#
# qemu-system-aarch64 -M virt -cpu cortex-a53 with the image's own Debian arm64 kernel and
# initrd (read from its FAT partition), on a sparse copy of the image into which a test link
# key and a test config are injected (boot partition, diode/): the agent then opens its link
# on loopback and sits connecting to brokers that are not there, which is fine. PASS when
# systemd reports the role's unit started, which for Type=notify means the agent sent READY=1;
# FAIL (exit 1, the console's last lines shown) on a failed start, a panic or the timeout.
#
# Environment: BOOT_TIMEOUT (seconds, default 600), KEEP=1 keeps the work folder and console log.
set -euo pipefail
ROLE="${1:-}"
case "$ROLE" in tx|rx) ;; *) echo "usage: $0 tx|rx [IMAGE]" >&2; exit 2 ;; esac
HERE="$(cd "$(dirname "$0")" && pwd)"
IMG="${2:-$HERE/out/diode-$ROLE.img}"
TIMEOUT="${BOOT_TIMEOUT:-600}"
[ -f "$IMG" ] || { echo "boot-test: no image $IMG (build it: sudo ./images/build.sh $ROLE)" >&2; exit 1; }
need=()
command -v qemu-system-aarch64 >/dev/null || need+=(qemu-system-arm)
command -v mcopy >/dev/null || need+=(mtools)
command -v sfdisk >/dev/null || need+=(fdisk)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  echo "boot-test: installing ${need[*]}" >&2
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

W=$(mktemp -d /tmp/diode-boot-test.XXXXXX)
QPID=""
cleanup() {
  if [ -n "$QPID" ] && kill -0 "$QPID" 2>/dev/null; then kill "$QPID"; wait "$QPID" 2>/dev/null || true; fi
  if [ "${KEEP:-0}" = 1 ]; then echo "boot-test: kept $W" >&2; else rm -rf "$W"; fi
}
trap cleanup EXIT
t0=$(date +%s)

cp --sparse=always "$IMG" "$W/disk.img"
start=$(sfdisk -d "$W/disk.img" | awk -F'[=,]' '/^[^ ]*1 : start=/{gsub(/ /,"",$2); print $2}')
[ -n "$start" ] || { echo "boot-test: no partition 1 in $IMG" >&2; exit 1; }
export MTOOLS_SKIP_CHECK=1
FAT="$W/disk.img@@$((start * 512))"

# test key and config (never in the image itself)
python3 -c 'import secrets; print(secrets.token_bytes(32).hex())' > "$W/link.key"
if [ "$ROLE" = tx ]; then
  cat > "$W/$ROLE.toml" <<'TOML'
# boot-test.sh: link on loopback, a broker that is not there
[link]
transport = "udp"
host = "127.0.0.1"
port = 5600
key_file = "link.key"
heartbeat_interval = 1.0
[status]
file = "/run/diode/tx.json"
[[mqtt]]
name = "plant"
host = "127.0.0.1"
port = 1883
topics = ["plant/#"]
TOML
else
  cat > "$W/$ROLE.toml" <<'TOML'
# boot-test.sh: link on loopback, a broker that is not there, metrics on
[link]
transport = "udp"
host = "0.0.0.0"
port = 5600
key_file = "link.key"
[status]
file = "/run/diode/rx.json"
[metrics]
listen = "0.0.0.0:9108"
[[mqtt]]
name = "plant"
host = "127.0.0.1"
port = 1883
tls = false
TOML
fi
mcopy -o -i "$FAT" "$W/link.key" "$W/$ROLE.toml" ::diode/
kernel=$(mdir -b -i "$FAT" :: | sed -n 's|^::/||p' | grep '^vmlinuz-' | sort -V | tail -1)
initrd=$(mdir -b -i "$FAT" :: | sed -n 's|^::/||p' | grep '^initrd.img-' | sort -V | tail -1)
[ -n "$kernel" ] && [ -n "$initrd" ] || { echo "boot-test: no kernel/initrd on the boot partition" >&2; exit 1; }
mcopy -i "$FAT" "::$kernel" "$W/vmlinuz"
mcopy -i "$FAT" "::$initrd" "$W/initrd"
echo "boot-test: booting $IMG ($kernel) under qemu-system-aarch64 -M virt, timeout ${TIMEOUT}s" >&2

LOG="$W/console.log"
: > "$LOG"
qemu-system-aarch64 -M virt -cpu cortex-a53 -smp 2 -m 1024 -accel tcg,thread=multi \
  -kernel "$W/vmlinuz" -initrd "$W/initrd" \
  -append "console=ttyAMA0 root=PARTUUID=d10de000-02 ro rootfstype=ext4 fsck.repair=yes net.ifnames=0 rootwait systemd.journald.forward_to_console=1" \
  -drive if=none,id=hd,file="$W/disk.img",format=raw -device virtio-blk-pci,drive=hd \
  -netdev user,id=net0 -device virtio-net-pci,netdev=net0,romfile= -device virtio-rng-pci \
  -display none -monitor none -serial "file:$LOG" -no-reboot &
QPID=$!

unit="diode-$ROLE.service"
result=""
while :; do
  sleep 2
  now=$(( $(date +%s) - t0 ))
  # systemd's status lines carry colour codes; the journal (forwarded to the console) none
  plain=$(sed 's/\x1b\[[0-9;]*m//g' "$LOG" | tr -d '\r')
  if grep -q "Started $unit" <<<"$plain"; then result=PASS; break; fi
  if grep -qE "Failed to start $unit|$unit: Failed|Kernel panic|Gave up waiting|emergency mode|Dependency failed for .*diode" <<<"$plain"; then result=FAIL; break; fi
  if ! kill -0 "$QPID" 2>/dev/null; then result="FAIL (qemu exited)"; break; fi
  if [ "$now" -ge "$TIMEOUT" ]; then result="FAIL (timeout ${TIMEOUT}s)"; break; fi
done
# a few more seconds of console: the firewall and status lines after READY
[ "$result" = PASS ] && sleep 5
elapsed=$(( $(date +%s) - t0 ))
sed 's/\x1b\[[0-9;]*m//g' "$LOG" | tr -d '\r' | grep -aE "diode|nftables|firewall" | tail -20 >&2 || true
if [ "$result" = PASS ]; then
  echo "boot-test: PASS: $unit sent READY=1 (systemd: Started) ${elapsed}s after the start of the test" >&2
  [ -n "${CONSOLE_OUT:-}" ] && cp "$LOG" "$CONSOLE_OUT"
  exit 0
fi
echo "boot-test: $result after ${elapsed}s; last console lines:" >&2
sed 's/\x1b\[[0-9;]*m//g' "$LOG" | tr -d '\r' | tail -40 >&2
[ -n "${CONSOLE_OUT:-}" ] && cp "$LOG" "$CONSOLE_OUT"
exit 1
