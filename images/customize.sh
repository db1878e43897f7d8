#!/bin/sh
# mmdebstrap --customize-hook for the diode image: runs on the build host with the new root
# file system in $1 (binaries inside run under qemu-user). Called by build.sh, which exports
# ROLE, REPO (the checkout), WHEELS (the aarch64 wheels folder) and SOURCE_DATE_EPOCH.
set -eu
R="$1"
: "${ROLE:?}" "${REPO:?}" "${WHEELS:?}"
HERE="$REPO/images"
inroot() { chroot "$R" "$@"; }

echo "customize: overlay files, units, venv for $ROLE" >&2
cp -a "$HERE/rootfs/." "$R/"
python3 "$HERE/imagelib.py" initramfs-modules > "$R/usr/share/initramfs-tools/modules.d/diode"

# The agent: a venv on the Debian python3, filled from wheels only (none compiled here).
mkdir -p "$R/opt/diode/lib" "$R/tmp/wheels"
cp "$REPO/board/systemd/diode-$ROLE.service" "$R/etc/systemd/system/"
cp "$REPO/README.md" "$R/opt/diode/README.md"
cp "$HERE/imagelib.py" "$R/opt/diode/lib/imagelib.py"
cp "$WHEELS"/*.whl "$R/tmp/wheels/"
inroot python3 -m venv --without-pip /opt/diode/venv
pipwhl=$(cd "$R/tmp/wheels" && ls pip-*.whl | head -1)
inroot env SOURCE_DATE_EPOCH="$SOURCE_DATE_EPOCH" PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
  PIP_CONFIG_FILE=/dev/null \
  /opt/diode/venv/bin/python "/tmp/wheels/$pipwhl/pip" install -q --no-index \
  --find-links /tmp/wheels 'diode-agents[gpio]'
rm -rf "$R/tmp/wheels"
inroot /opt/diode/venv/bin/diode --help >/dev/null
# RX's mirror reads OPC UA's standard address space from a store, not memory (50 MB less);
# built here so the first boot need not (agent/opcua/standard_space.py).
if [ "$ROLE" = rx ]; then
  # PYTHONHASHSEED: a pickled set is in hash order, and the image is reproducible
  inroot env PYTHONHASHSEED=0 /opt/diode/venv/bin/python -m agent.opcua.standard_space >&2
fi
ln -sf /opt/diode/venv/bin/diode "$R/usr/local/bin/diode"

# The fail-closed ruleset (nothing opened) that loads if the generated one cannot.
python3 "$HERE/imagelib.py" firewall "$ROLE" /nonexistent -o "$R/etc/nftables.conf"

# Identity, accounts: no passwords anywhere (root locked), the gpio group for the LEDs.
echo "diode-$ROLE" > "$R/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tdiode-%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' "$ROLE" > "$R/etc/hosts"
inroot getent group gpio >/dev/null || inroot groupadd -r gpio
sed -i 's/^root:[^:]*:/root:!*:/' "$R/etc/shadow"
# A read-only root: systemd mounts a transient machine id over an empty /etc/machine-id.
: > "$R/etc/machine-id"
rm -f "$R/var/lib/dbus/machine-id"
ln -sf ../run/systemd/resolve/stub-resolv.conf "$R/etc/resolv.conf"

# Units: the role's agent and firewall on; what a gateway does not need off.
# shellcheck disable=SC2046
systemctl --root="$R" enable $(python3 "$HERE/imagelib.py" units "$ROLE" enable) >&2
for u in $(python3 "$HERE/imagelib.py" units "$ROLE" disable); do
  systemctl --root="$R" disable "$u" >/dev/null 2>&1 || true
done

# Never ship secrets or build-host state: host keys, logs, caches.
rm -f "$R"/etc/ssh/ssh_host_*
rm -rf "$R"/var/cache/apt/* "$R"/var/lib/apt/lists/* "$R"/var/cache/ldconfig/aux-cache \
       "$R"/var/log/apt "$R"/var/cache/debconf/*-old "$R"/var/lib/dpkg/*-old
find "$R/var/log" -type f -exec truncate -s 0 {} +
find "$R/tmp" -mindepth 1 -delete
echo "customize: done" >&2
