#!/usr/bin/env bash
# Build the SD-card image for one board:   sudo ./images/build.sh tx|rx
#
# arm64 Debian bookworm for the Raspberry Pi 4 (and 3), made on an x86-64 Debian 12 host
# without Docker: mmdebstrap with qemu-user (binfmt) for the root fs, Debian's kernel and
# raspi-firmware, the agent and its dependencies in a venv from aarch64 wheels downloaded on
# the host, then three file systems and an MBR assembled without loop devices.
#
# Out:  images/out/diode-<role>.img, .img.sha256, .manifest.json (every Debian and Python
#       package version). About 7 minutes on a 2-core host (measured; most of it dpkg under qemu-user).
#
# Environment:
#   SOURCE_DATE_EPOCH   timestamps in the image (default: the last commit's time)
#   DEBIAN_MIRROR       default http://deb.debian.org/debian; for a bit-identical rebuild use
#                       a snapshot, e.g. http://snapshot.debian.org/archive/debian/20250520T000000Z
#   DEBIAN_SECURITY     default http://deb.debian.org/debian-security
#   DIODE_IMAGE_WORK    work folder, default /var/tmp/diode-image (outside the checkout: a root
#                       fs with /proc mounted inside the repo would stall setuptools' file scan)
#   DIODE_IMAGE_OUT     output folder, default images/out
#   KEEP_WORK=1         keep $DIODE_IMAGE_WORK/<role> (the root fs tree) after the build
set -euo pipefail
ROLE="${1:-}"
case "$ROLE" in tx|rx) ;; *) echo "usage: $0 tx|rx" >&2; exit 2 ;; esac
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
if [ "$(id -u)" -ne 0 ]; then echo "build.sh: run as root (mmdebstrap, chroot, binfmt)" >&2; exit 2; fi
t0=$(date +%s)
say() { echo "build.sh [$(( $(date +%s) - t0 ))s] $*" >&2; }

# -- host tools ---------------------------------------------------------------------------------
need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v arch-test >/dev/null || need+=(arch-test)
[ -e /usr/libexec/qemu-binfmt/aarch64-binfmt-P ] || command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
command -v update-binfmts >/dev/null || need+=(binfmt-support)
command -v mkfs.vfat >/dev/null || need+=(dosfstools)
command -v mcopy >/dev/null || need+=(mtools)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v sfdisk >/dev/null || need+=(fdisk)
command -v dpkg-query >/dev/null || need+=(dpkg)
if [ ${#need[@]} -gt 0 ]; then
  say "installing host packages: ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount binfmt_misc -t binfmt_misc /proc/sys/fs/binfmt_misc
fi
update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
if ! arch-test arm64 >/dev/null 2>&1; then
  echo "build.sh: this host cannot run arm64 binaries (qemu-user binfmt): check /proc/sys/fs/binfmt_misc/qemu-aarch64" >&2
  exit 1
fi

export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || date +%s)}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY="${DEBIAN_SECURITY:-http://deb.debian.org/debian-security}"
WORK="${DIODE_IMAGE_WORK:-/var/tmp/diode-image}/$ROLE"
OUT="${DIODE_IMAGE_OUT:-$HERE/out}"
IMG="$OUT/diode-$ROLE.img"
rm -rf "$WORK"
mkdir -p "$WORK" "$OUT"
PY="$REPO/.venv/bin/python"
[ -x "$PY" ] || { python3 -m venv "$WORK/hostvenv"; PY="$WORK/hostvenv/bin/python"; }

# -- wheels (host) ------------------------------------------------------------------------------
say "wheels: the agent from this checkout, its dependencies for cp311 aarch64"
WHEELS="$WORK/wheels"
mkdir -p "$WHEELS"
# from a clean copy of what the wheel holds (not the whole checkout with its build folders)
SRC="$WORK/src"
mkdir -p "$SRC"
cp -a "$REPO/pyproject.toml" "$REPO/README.md" "$REPO/agent" "$SRC/"
find "$SRC" -name __pycache__ -prune -exec rm -rf {} +
"$PY" -m pip wheel -q --no-deps -w "$WHEELS" "$SRC" >&2
"$PY" "$HERE/imagelib.py" pip-download "$REPO/pyproject.toml" "$WHEELS" --python "$PY" >&2

# -- root file system ---------------------------------------------------------------------------
PKGS="systemd-sysv,udev,dbus,kmod,initramfs-tools,zstd,linux-image-arm64,raspi-firmware,\
python3,nftables,openssh-server,systemd-timesyncd,systemd-resolved,ca-certificates,iproute2,\
netbase,procps,less"
say "mmdebstrap bookworm arm64 ($MIRROR), SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH"
export ROLE REPO WHEELS
mmdebstrap --arch=arm64 --variant=minbase --mode=root --format=directory \
  --components="main non-free-firmware" \
  --aptopt='Apt::Install-Recommends "false"' \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  --include="$PKGS" \
  --essential-hook='mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/usr/share/initramfs-tools/modules.d"' \
  --essential-hook="cp '$HERE/rootfs/etc/initramfs-tools/conf.d/diode.conf' \"\$1/etc/initramfs-tools/conf.d/\"" \
  --essential-hook="python3 '$HERE/imagelib.py' initramfs-modules > \"\$1/usr/share/initramfs-tools/modules.d/diode\"" \
  --customize-hook="'$HERE/customize.sh' \"\$1\"" \
  bookworm "$WORK/rootfs" \
  "deb $MIRROR bookworm main non-free-firmware" \
  "deb $MIRROR bookworm-updates main non-free-firmware" \
  "deb $SECURITY bookworm-security main non-free-firmware" >&2

# -- split into the three partitions' trees -----------------------------------------------------
R="$WORK/rootfs"
KVER=$(cd "$R/boot" && ls vmlinuz-* | sed 's/^vmlinuz-//' | sort -V | tail -1)
say "kernel $KVER; boot, root and data trees"
BOOT="$WORK/boot"
mkdir -p "$BOOT"
cp -a "$R/boot/firmware/." "$BOOT/"
find "$R/boot/firmware" -mindepth 1 -delete
rm -f "$BOOT/config.txt" "$BOOT/cmdline.txt"
cp "$R/boot/vmlinuz-$KVER" "$R/boot/initrd.img-$KVER" "$BOOT/" 2>/dev/null || true
for f in bootcode.bin start4.elf fixup4.dat start.elf fixup.dat bcm2711-rpi-4-b.dtb \
         bcm2837-rpi-3-b.dtb "vmlinuz-$KVER" "initrd.img-$KVER"; do
  [ -e "$BOOT/$f" ] || { echo "build.sh: boot partition lacks $f" >&2; exit 1; }
done
"$PY" "$HERE/imagelib.py" bootfiles "$ROLE" "$BOOT" "$REPO/board/config/$ROLE.toml" \
  "vmlinuz-$KVER" "initrd.img-$KVER"
# /var becomes the writable data partition; the root keeps an empty mount point.
DATA="$WORK/data"
mv "$R/var" "$DATA"
mkdir -m 0755 "$R/var"
touch -d "@$SOURCE_DATE_EPOCH" "$R/var"

say "assemble $IMG"
"$PY" "$HERE/imagelib.py" assemble "$IMG" "$BOOT" "$R" "$DATA" --epoch "$SOURCE_DATE_EPOCH" \
  --boot-mib 256 --data-mib 256 >&2
(cd "$OUT" && sha256sum "$(basename "$IMG")" > "$(basename "$IMG").sha256")
# the manifest reads dpkg's database from the data tree (/var)
mv "$R/var" "$WORK/var.empty" && ln -s "$DATA" "$R/var"
"$PY" "$HERE/imagelib.py" manifest "$ROLE" "$R" "$WHEELS" "$IMG" "$OUT/diode-$ROLE.manifest.json" \
  --epoch "$SOURCE_DATE_EPOCH" --kernel "$KVER"
rm "$R/var" && mv "$WORK/var.empty" "$R/var"
[ "${KEEP_WORK:-0}" = 1 ] || rm -rf "$WORK"
say "done: $IMG ($(du -h --apparent-size "$IMG" | cut -f1), $(du -h "$IMG" | cut -f1) allocated)"
cat "$IMG.sha256"
