#!/usr/bin/env python3
"""SD-card image build logic: everything build.sh does that is worth testing without a full build.

Standard library only (it runs on the build host with the system python3, and the firewall
part runs on the board at every boot with the board's python3).

    pyproject.toml ──► deps ──► pip download (aarch64 wheels, host) ──► wheels/
    rootfs tree ─────────────────────────────────► mkfs.ext4 -d + debugfs (clamp times) ─┐
    boot tree (firmware, kernel, config, keys) ──► mkfs.vfat --invariant + mcopy ────────┼► sfdisk + dd
    data tree (/var) ────────────────────────────► mkfs.ext4 -d + debugfs ───────────────┘  conv=notrunc
                                                                                          ► image, .sha256,
    dpkg status + venv dist-info ──► manifest ────────────────────────────────────────────► .manifest.json

Partition layout (MBR, the Raspberry Pi firmware reads only MBR and FAT):

    p1  FAT32  label DIODEBOOT   /boot/firmware   firmware, kernel, initrd, config.txt,
                                                  cmdline.txt, diode/{tx,rx}.toml, diode/link.key
    p2  ext4   label diode-root  /                read-only
    p3  ext4   label diode-data  /var             writable: spool (/var/lib/diode), timesync clock

Sub-commands (used by build.sh, boot-test.sh and the tests):

    deps PYPROJECT                 the runtime requirements, one a line (with the gpio extra)
    firewall ROLE CONFIG           the nftables ruleset for ROLE from its config (fail closed):
                                   TX opens only its syslog listeners, RX its IT services
    bootfiles ROLE BOOTDIR ...     write config.txt, cmdline.txt and diode/ into a boot tree
    assemble ...                   build the image from three trees
    manifest ROOTFS WHEELS OUT     the package manifest (Debian and Python versions)
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024
SECTOR = 512
# Fixed identifiers, so that builds are reproducible and the kernel command line can name the
# root partition without probing: root=PARTUUID=d10de000-02.
DISK_ID = 0xD10DE000
BOOT_VOLID = "D10DEB00"
ROOT_UUID = "d10de000-0000-4000-8000-000000000002"
DATA_UUID = "d10de000-0000-4000-8000-000000000003"
BOOT_LABEL = "DIODEBOOT"
ROOT_LABEL = "diode-root"
DATA_LABEL = "diode-data"
FIRST_SECTOR = 2048  # 1 MiB alignment, as SD cards like it
ROLES = ("tx", "rx")
SSH_KEYS_FILE = "authorized_keys"  # /boot/firmware/diode/authorized_keys turns SSH on


def partuuid(n: int) -> str:
    return f"{DISK_ID:08x}-{n:02d}"


# -- dependencies -------------------------------------------------------------------------------

def runtime_requirements(pyproject: Path, extras: tuple[str, ...] = ("gpio",)) -> list[str]:
    """The project's runtime requirements (plus the named extras), as pip requirement strings."""
    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = list(project.get("dependencies", []))
    for extra in extras:
        reqs += project.get("optional-dependencies", {}).get(extra, [])
    return reqs


# The platforms a wheel may target: bookworm arm64 has glibc 2.36; pip expands each
# manylinux_2_X tag to the older ones, the explicit legacy aliases keep old pips happy.
WHEEL_PLATFORMS = ("manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_28_aarch64",
                   "manylinux_2_36_aarch64")


def pip_download_command(python: str, dest: Path, requirements: list[str]) -> list[str]:
    cmd = [python, "-m", "pip", "download", "--disable-pip-version-check", "-d", str(dest),
           "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
           "--abi", "cp311", "--abi", "abi3", "--abi", "none"]
    for p in WHEEL_PLATFORMS:
        cmd += ["--platform", p]
    return cmd + requirements


def download_wheels(python: str, dest: Path, requirements: list[str]) -> None:
    """pip download the aarch64 wheels; a requirement without one is built on the host if pure.

    A package that only has an sdist but is pure Python gets `pip wheel --no-deps` on the host
    (the wheel is then py3-none-any and runs anywhere); one that needs compiling is an error
    naming it, since nothing is compiled under emulation.
    """
    dest.mkdir(parents=True, exist_ok=True)
    if subprocess.run(pip_download_command(python, dest, requirements)).returncode == 0:
        return
    for req in requirements:
        if subprocess.run(pip_download_command(python, dest, [req]),
                          capture_output=True).returncode == 0:
            continue
        print(f"imagelib: no aarch64 wheel for {req}: building a wheel on the host", file=sys.stderr)
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([python, "-m", "pip", "wheel", "-q", "--no-deps", "--no-binary", ":all:",
                            "-w", tmp, req], check=True)
            for built in Path(tmp).glob("*.whl"):
                if not parse_wheel(built.name).pure:
                    raise SystemExit(f"imagelib: {req} has no aarch64 wheel and is not pure "
                                     f"Python ({built.name}); it would need compiling for arm64")
                shutil.copy(built, dest)
    # all again, now with the host-built wheels as candidates
    subprocess.run(pip_download_command(python, dest, requirements) + ["--find-links", str(dest)],
                   check=True)


_WHEEL = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-(?P<py>[^-]+)-(?P<abi>[^-]+)"
                    r"-(?P<plat>[^-]+)\.whl$")


@dataclass(frozen=True)
class Wheel:
    name: str
    version: str
    py: str
    abi: str
    platform: str
    file: str

    @property
    def pure(self) -> bool:
        return self.abi == "none" and self.platform == "any"


def parse_wheel(filename: str) -> Wheel:
    m = _WHEEL.match(filename)
    if not m:
        raise ValueError(f"not a wheel file name: {filename}")
    return Wheel(m["name"].replace("_", "-").lower(), m["version"], m["py"], m["abi"], m["plat"],
                 filename)


def check_wheels(wheel_dir: Path) -> list[Wheel]:
    """Every wheel must run on bookworm arm64 CPython 3.11; raise naming the first that cannot."""
    wheels = [parse_wheel(p.name) for p in sorted(wheel_dir.glob("*.whl"))]
    for w in wheels:
        if w.pure:
            continue
        ok_abi = w.abi in ("cp311", "abi3", "none")
        ok_plat = all("aarch64" in p for p in w.platform.split("."))
        if not (ok_abi and ok_plat):
            raise ValueError(f"{w.file}: not for cp311 aarch64 (abi {w.abi}, platform {w.platform})")
    return wheels


# -- firewall -----------------------------------------------------------------------------------

def _port_of(value: object) -> int | None:
    """A port from 4840, "0.0.0.0:4840" or "opc.tcp://0.0.0.0:4840/path"."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if 0 < value < 65536 else None
    if isinstance(value, str):
        m = re.search(r":(\d{1,5})(?:/.*)?$", value)
        if m and 0 < int(m.group(1)) < 65536:
            return int(m.group(1))
    return None


def rx_open_ports(cfg: dict) -> tuple[list[tuple[str, int, str | None]], list[str]]:
    """(proto, port, interface) RX must accept, from its config, and notes on what was opened."""
    link = cfg.get("link", {})
    opened: list[tuple[str, int, str | None]] = []
    notes = []
    if link.get("transport", "udp") == "udp":
        port = _port_of(link.get("port", 5600)) or 5600
        opened.append(("udp", port, link.get("interface")))
        notes.append(f"one-way link: udp {port}")
    metrics = cfg.get("metrics", {}).get("listen")
    if _port_of(metrics):
        opened.append(("tcp", _port_of(metrics), None))  # type: ignore[arg-type]
        notes.append(f"metrics: tcp {_port_of(metrics)}")
    # The read-only OPC UA mirrors (IT clients browse and subscribe): [[opcua]] endpoint =
    # "opc.tcp://HOST:PORT/path", default port 4840 (agent/opcua/mirror.py).
    tables = cfg.get("opcua", [])
    for t in tables if isinstance(tables, list) else [tables]:
        if isinstance(t, dict):
            port = _port_of(t.get("endpoint")) or 4840
            opened.append(("tcp", port, None))
            notes.append(f"OPC UA mirror: tcp {port}")
    return opened, notes


_LISTENER = re.compile(r"^(udp|tcp|tls)://(\[[0-9A-Fa-f:.]+\]|[0-9.]+):(\d{1,5})$")


def tx_open_ports(cfg: dict) -> tuple[list[tuple[str, str, int]], list[str]]:
    """(proto, address, port) TX must accept, from its config: the syslog listeners only
    (`[[syslog]] listen = ["udp://10.0.0.5:514", ...]`, agent/syslog/config.py), each on
    the address it binds. An entry the agent would refuse (a wildcard or a name) opens
    nothing."""
    opened: list[tuple[str, str, int]] = []
    notes = []
    tables = cfg.get("syslog", [])
    for t in tables if isinstance(tables, list) else [tables]:
        listen = t.get("listen", []) if isinstance(t, dict) else []
        for entry in listen if isinstance(listen, list) else []:
            m = _LISTENER.match(entry) if isinstance(entry, str) else None
            try:
                addr = ipaddress.ip_address(m.group(2).strip("[]")) if m else None
            except ValueError:
                addr = None
            port = int(m.group(3)) if m else 0
            if m is None or addr is None or addr.is_unspecified or not 0 < port < 65536:
                notes.append(f"syslog listener {entry!r}: not a listener the agent opens; "
                             "nothing opened for it")
                continue
            proto = "udp" if m.group(1) == "udp" else "tcp"
            if (proto, str(addr), port) not in opened:
                opened.append((proto, str(addr), port))
                notes.append(f"syslog listener (OT side): {proto} {addr} {port}")
    return opened, notes


def firewall_rules(role: str, config_text: str | None, ssh: bool = False) -> str:
    """The nftables ruleset: TX accepts no inbound connection but its configured syslog
    listeners, each on its own OT-side address; RX only its IT-side services.

    Replies to the board's own connections (MQTT to brokers, DHCP, NTP, DNS) are accepted as
    established. A config that cannot be read gives the ruleset with nothing opened (fail
    closed); the agent then reports the config error itself.
    """
    if role not in ROLES:
        raise ValueError(f"role must be tx or rx, not {role!r}")
    lines = []
    accept = []
    if config_text is not None:
        try:
            cfg = tomllib.loads(config_text)
        except tomllib.TOMLDecodeError:
            lines.append("# config unreadable: nothing opened (fail closed)")
        else:
            if role == "rx":
                opened, notes = rx_open_ports(cfg)
                for proto, port, iface in opened:
                    where = f'iifname "{iface}" ' if iface else ""
                    accept.append(f"{where}{proto} dport {port} accept")
            else:
                tx_opened, notes = tx_open_ports(cfg)
                for proto, addr, port in tx_opened:
                    family = "ip6" if ":" in addr else "ip"
                    accept.append(f"{family} daddr {addr} {proto} dport {port} accept")
            lines += [f"# {n}" for n in notes]
    else:
        lines.append("# config missing: nothing opened (fail closed)")
    if ssh:
        lines.append(f"# SSH enabled: /boot/firmware/diode/{SSH_KEYS_FILE} exists")
        accept.append("tcp dport 22 accept")
    body = "\n".join(f"        {a}" for a in accept)
    header = "\n".join(lines)
    return f"""#!/usr/sbin/nft -f
# diode {role.upper()}: generated at boot by diode-firewall@{role}.service (images/imagelib.py)
{header}
flush ruleset

table inet diode {{
    chain input {{
        type filter hook input priority filter; policy drop;
        iif "lo" accept
        ct state established,related accept
        ct state invalid drop
        # IPv6 neighbour discovery on the LAN (no connection: address resolution only)
        icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert }} ip6 hoplimit 255 accept
{body}
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
    }}
}}
"""


def firewall_main(role: str, config: Path, out: Path | None) -> int:
    try:
        text: str | None = config.read_text()
    except OSError:
        text = None
    ssh = (config.parent / SSH_KEYS_FILE).is_file()
    rules = firewall_rules(role, text, ssh=ssh)
    if out:
        out.write_text(rules)
    else:
        sys.stdout.write(rules)
    return 0


# -- boot partition -----------------------------------------------------------------------------

# Modules the initramfs needs (MODULES=list): SD card on Pi 3 and 4, USB boot, and the
# qemu virt machine of boot-test.sh. A name the kernel does not have is skipped by mkinitramfs.
INITRAMFS_MODULES = """\
# images/: what the initramfs needs to find the root fs (MODULES=list)
# Raspberry Pi 3 and 4: SD card (sdhost, emmc2), regulators and GPIO expander for the SD supply
mmc_block
sdhci
sdhci_pltfm
sdhci_iproc
bcm2835
bcm2835_dma
gpio_regulator
gpio_raspberrypi_exp
reset_raspberrypi
raspberrypi_cpufreq
# USB boot (Pi 4: VL805 behind PCIe)
pcie_brcmstb
xhci_pci
xhci_plat_hcd
dwc2
usb_storage
uas
# qemu virt (boot-test.sh)
virtio_mmio
virtio_pci
virtio_blk
# file systems
ext4
crc32c_generic
vfat
nls_cp437
nls_ascii
"""


def config_txt(kernel: str, initrd: str) -> str:
    return f"""# Raspberry Pi firmware configuration for the diode image (images/build.sh).
# Pi 3 and Pi 4 in 64-bit mode with Debian's kernel; the Pi 5 is not supported (bookworm's
# kernel 6.1 has no Pi 5 device tree).
arm_64bit=1
enable_uart=1
upstream_kernel=1
kernel={kernel}
initramfs {initrd} followkernel
# A serial link (transport = "serial") on a Pi 3/4 needs the full UART freed from Bluetooth;
# see board/config/config.txt.serial.
"""


def cmdline_txt(console: str = "console=tty0 console=ttyS1,115200") -> str:
    # ro: the root fs stays read-only; /var is the writable data partition.
    return (f"{console} root=PARTUUID={partuuid(2)} ro rootfstype=ext4 fsck.repair=yes "
            "net.ifnames=0 rootwait\n")


KEY_PLACEHOLDER = """\
# No link key yet: the diode agent refuses to start until this file holds one.
# Make one on any computer with the project installed:
#     diode keygen -o link.key
# and copy that same link.key over this file on BOTH boards (TX and RX).
"""


def write_boot_files(role: str, boot: Path, sample_config: Path, kernel: str, initrd: str) -> None:
    """config.txt, cmdline.txt and the editable diode/ folder (config and key slots)."""
    if role not in ROLES:
        raise ValueError(f"role must be tx or rx, not {role!r}")
    (boot / "config.txt").write_text(config_txt(kernel, initrd))
    (boot / "cmdline.txt").write_text(cmdline_txt())
    d = boot / "diode"
    (d / "network").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sample_config, d / f"{role}.toml")
    (d / "link.key").write_text(KEY_PLACEHOLDER)
    (d / "README.txt").write_text(f"""diode {role.upper()} board: settings you edit (/boot/firmware/diode).

{role}.toml      the agent's configuration (README, Configuration). Paths in it are relative
                to this folder: put broker CA files and password files here too.
link.key        the link key: `diode keygen -o link.key` on any computer, the same file on
                both boards. The image ships a placeholder: the agent refuses to start
                (FAULT LED on) until a real key is here.
authorized_keys (absent) an OpenSSH public key file: when present, SSH is turned on
                (key login as root only, no passwords) and port 22 is opened.
network/*.network  (optional) systemd-networkd files replacing the default DHCP on eth0.
""")


# -- units --------------------------------------------------------------------------------------

def enabled_units(role: str) -> list[str]:
    """What customize.sh enables: the role's agent and firewall, networking, time; ssh.service is
    enabled but stays off unless /boot/firmware/diode/authorized_keys exists (its drop-in)."""
    if role not in ROLES:
        raise ValueError(f"role must be tx or rx, not {role!r}")
    return [f"diode-{role}.service", f"diode-firewall@{role}.service", "diode-netconf.service",
            "systemd-networkd.service", "systemd-resolved.service", "systemd-timesyncd.service",
            "ssh.service"]


# Timers and services a sealed gateway does not want (a missing one is skipped).
DISABLED_UNITS = ["apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer",
                  "e2scrub_reap.service", "dpkg-db-backup.timer", "nftables.service",
                  "ssh.socket", "rsync.service"]


# -- assembly -----------------------------------------------------------------------------------

def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, **kw.pop("env", {}))
    return subprocess.run(cmd, check=True, env=env, **kw)


def tree_bytes(tree: Path) -> int:
    total = 0
    for root, dirs, files in os.walk(tree):
        for name in files + dirs:
            st = os.lstat(os.path.join(root, name))
            total += (st.st_size + 4095) // 4096 * 4096 + 256  # blocks + inode
    return total


def ext4_size(tree: Path, spare: float = 0.25, extra: int = 32 * MiB) -> int:
    """A partition size for a tree: its content plus spare room, rounded up to 4 MiB."""
    size = int(tree_bytes(tree) * (1 + spare)) + extra
    return (size + 4 * MiB - 1) // (4 * MiB) * (4 * MiB)


def make_ext4(image: Path, tree: Path, size: int, label: str, uuid: str, epoch: int) -> None:
    """mkfs.ext4 -d with fixed UUID, hash seed and times; then every inode's times clamped.

    mkfs.ext4 -d copies atime and ctime from the build host (ctime cannot be set there), so a
    debugfs script sets atime/ctime/crtime to SOURCE_DATE_EPOCH and clamps mtime to it.
    """
    env = {"E2FSPROGS_FAKE_TIME": str(epoch)}
    if image.exists():
        image.unlink()
    _run(["mkfs.ext4", "-q", "-F", "-t", "ext4", "-b", "4096", "-L", label, "-U", uuid,
          "-E", f"hash_seed={uuid},root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0",
          "-d", str(tree), str(image), f"{size // 1024}k"], env=env)
    script = []
    paths = ["/"]
    for root, dirs, files in os.walk(tree):
        dirs.sort()
        rel = os.path.relpath(root, tree)
        for name in sorted(files + dirs):
            paths.append("/" + os.path.normpath(os.path.join(rel, name)).lstrip("/"))
    for path in paths:
        if '"' in path or "\n" in path:
            raise ValueError(f"cannot clamp times of {path!r}")
        mtime = min(int(os.lstat(os.path.join(tree, path.lstrip("/")) or tree).st_mtime), epoch)
        for field, value in (("mtime", mtime), ("atime", mtime), ("ctime", epoch),
                             ("crtime", epoch)):
            script.append(f'sif "{path}" {field} @{value}')
    for field in ("mtime", "atime", "ctime", "crtime"):
        script.append(f'sif "/lost+found" {field} @{epoch}')
    with tempfile.NamedTemporaryFile("w", suffix=".debugfs") as f:
        f.write("\n".join(script) + "\n")
        f.flush()
        r = subprocess.run(["debugfs", "-w", "-f", f.name, str(image)], env=dict(os.environ, **env),
                           capture_output=True, text=True)
        errors = [ln for ln in r.stderr.splitlines() if ln and not ln.startswith("debugfs ")]
        if r.returncode or errors:
            raise RuntimeError(f"debugfs on {image}: {r.returncode} {errors[:5]}")
    # debugfs stamps the superblock's write time with the real clock: set it back too.
    r = subprocess.run(["debugfs", "-w", "-R", f"ssv wtime @{epoch}", str(image)],
                       env=dict(os.environ, **env), capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"debugfs ssv wtime on {image}: {r.stderr}")


def make_vfat(image: Path, tree: Path, size: int, label: str, volid: str, epoch: int) -> None:
    """FAT32 with --invariant (fixed serial, no host times) and mcopy (no loop mount)."""
    if image.exists():
        image.unlink()
    _run(["mkfs.vfat", "--invariant", "-F", "32", "-S", "512", "-i", volid, "-n", label,
          "-C", str(image), str(size // 1024)], stdout=subprocess.DEVNULL)
    env = {"SOURCE_DATE_EPOCH": str(epoch), "MTOOLS_SKIP_CHECK": "1", "TZ": "UTC"}
    # mcopy -m keeps the files' mtimes: clamp them first (a copy of the tree, not the source).
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "t"
        shutil.copytree(tree, copy, symlinks=False)
        for root, dirs, files in os.walk(copy):
            for name in dirs + files:
                p = os.path.join(root, name)
                t = min(int(os.lstat(p).st_mtime), epoch)
                os.utime(p, (t, t))
        entries = sorted(copy.iterdir())
        if entries:
            _run(["mcopy", "-i", str(image), "-s", "-m", "-Q", *map(str, entries), "::"], env=env)


@dataclass(frozen=True)
class Layout:
    boot_size: int
    root_size: int
    data_size: int

    def partitions(self) -> list[tuple[int, int]]:
        """(start sector, sectors) of p1..p3."""
        out = []
        start = FIRST_SECTOR
        for size in (self.boot_size, self.root_size, self.data_size):
            out.append((start, size // SECTOR))
            start += size // SECTOR
        return out

    @property
    def image_size(self) -> int:
        start, n = self.partitions()[-1]
        return (start + n) * SECTOR


def sfdisk_script(layout: Layout) -> str:
    (b0, bn), (r0, rn), (d0, dn) = layout.partitions()
    return (f"label: dos\nlabel-id: 0x{DISK_ID:08x}\nunit: sectors\n\n"
            f"start={b0}, size={bn}, type=c, bootable\n"
            f"start={r0}, size={rn}, type=83\n"
            f"start={d0}, size={dn}, type=83\n")


def assemble(out: Path, boot: Path, root: Path, data: Path, *, epoch: int,
             boot_size: int = 256 * MiB, root_size: int | None = None,
             data_size: int = 256 * MiB, workdir: Path | None = None) -> Layout:
    """Three file system images, a partition table, and dd conv=notrunc: no loop devices."""
    layout = Layout(boot_size, root_size or ext4_size(root), data_size)
    work = Path(workdir or out.parent)
    parts = [work / f"{out.name}.p{i}" for i in (1, 2, 3)]
    make_vfat(parts[0], boot, layout.boot_size, BOOT_LABEL, BOOT_VOLID, epoch)
    make_ext4(parts[1], root, layout.root_size, ROOT_LABEL, ROOT_UUID, epoch)
    make_ext4(parts[2], data, layout.data_size, DATA_LABEL, DATA_UUID, epoch)
    if out.exists():
        out.unlink()
    with open(out, "wb") as f:
        f.truncate(layout.image_size)
    _run(["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(out)],
         input=sfdisk_script(layout).encode(), stdout=subprocess.DEVNULL)
    for part, (start, sectors) in zip(parts, layout.partitions(), strict=True):
        if part.stat().st_size != sectors * SECTOR:
            raise RuntimeError(f"{part}: {part.stat().st_size} bytes, partition is {sectors * SECTOR}")
        _run(["dd", f"if={part}", f"of={out}", "bs=1M", f"seek={start * SECTOR}", "oflag=seek_bytes",
              "conv=notrunc,sparse", "status=none"])
        part.unlink()
    return layout


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(4 * MiB), b""):
            h.update(chunk)
    return h.hexdigest()


# -- manifest -----------------------------------------------------------------------------------

def debian_packages(rootfs: Path) -> list[dict]:
    out = subprocess.run(["dpkg-query", f"--admindir={rootfs}/var/lib/dpkg", "-W",
                          "-f", "${Package}\t${Version}\t${Architecture}\n"],
                         check=True, capture_output=True, text=True).stdout
    pkgs = []
    for line in sorted(out.splitlines()):
        name, version, arch = line.split("\t")
        pkgs.append({"name": name, "version": version, "arch": arch})
    return pkgs


def python_packages(site_packages: Path) -> list[dict]:
    pkgs = []
    for meta in sorted(site_packages.glob("*.dist-info/METADATA")):
        fields = {}
        for line in meta.read_text(errors="replace").splitlines():
            if not line:
                break
            k, _, v = line.partition(": ")
            fields.setdefault(k, v)
        pkgs.append({"name": fields["Name"], "version": fields["Version"]})
    return sorted(pkgs, key=lambda p: p["name"].lower())


def make_manifest(role: str, *, debian: list[dict], python: list[dict], wheels: list[dict],
                  epoch: int, image: dict, suite: str = "bookworm", kernel: str = "") -> dict:
    return {
        "format": "diode-image-manifest/1",
        "role": role,
        "source_date_epoch": epoch,
        "debian": {"suite": suite, "architecture": "arm64", "kernel": kernel,
                   "packages": debian},
        "python": {"venv": "/opt/diode/venv", "packages": python, "wheels": wheels},
        "image": image,
    }


def validate_manifest(m: dict) -> None:
    """Raise ValueError naming what is missing or wrong (used by the tests and build.sh)."""
    def need(cond: bool, what: str) -> None:
        if not cond:
            raise ValueError(f"manifest: {what}")
    need(m.get("format") == "diode-image-manifest/1", "format is not diode-image-manifest/1")
    need(m.get("role") in ROLES, "role is not tx or rx")
    need(isinstance(m.get("source_date_epoch"), int), "source_date_epoch missing")
    for section in ("debian", "python"):
        pk = m.get(section, {}).get("packages")
        need(isinstance(pk, list) and pk, f"{section}.packages empty")
        for p in pk:
            need(bool(p.get("name")) and bool(p.get("version")), f"{section} entry {p} incomplete")
    names = {p["name"].lower() for p in m["python"]["packages"]}
    need("diode-agents" in names, "python packages lack diode-agents")
    for w in m["python"].get("wheels", []):
        need(re.fullmatch(r"[0-9a-f]{64}", w.get("sha256", "")) is not None, f"wheel {w} sha256")
    img = m.get("image", {})
    need(re.fullmatch(r"[0-9a-f]{64}", img.get("sha256", "")) is not None, "image.sha256")
    need(isinstance(img.get("size"), int) and img["size"] > 0, "image.size")


# -- command line -------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("deps")
    sp.add_argument("pyproject", type=Path)
    sp = sub.add_parser("pip-download")
    sp.add_argument("pyproject", type=Path)
    sp.add_argument("dest", type=Path)
    sp.add_argument("--python", default=sys.executable)
    sp = sub.add_parser("check-wheels")
    sp.add_argument("dir", type=Path)
    sp = sub.add_parser("firewall")
    sp.add_argument("role", choices=ROLES)
    sp.add_argument("config", type=Path)
    sp.add_argument("-o", "--out", type=Path)
    sp = sub.add_parser("initramfs-modules")
    sp = sub.add_parser("units")
    sp.add_argument("role", choices=ROLES)
    sp.add_argument("which", choices=("enable", "disable"))
    sp = sub.add_parser("bootfiles")
    sp.add_argument("role", choices=ROLES)
    sp.add_argument("boot", type=Path)
    sp.add_argument("sample_config", type=Path)
    sp.add_argument("kernel")
    sp.add_argument("initrd")
    sp = sub.add_parser("assemble")
    sp.add_argument("out", type=Path)
    sp.add_argument("boot", type=Path)
    sp.add_argument("root", type=Path)
    sp.add_argument("data", type=Path)
    sp.add_argument("--epoch", type=int, default=int(os.environ.get("SOURCE_DATE_EPOCH", "0")))
    sp.add_argument("--boot-mib", type=int, default=256)
    sp.add_argument("--data-mib", type=int, default=256)
    sp.add_argument("--root-mib", type=int, default=0)
    sp = sub.add_parser("manifest")
    sp.add_argument("role", choices=ROLES)
    sp.add_argument("rootfs", type=Path)
    sp.add_argument("wheels", type=Path)
    sp.add_argument("image", type=Path)
    sp.add_argument("out", type=Path)
    sp.add_argument("--epoch", type=int, default=int(os.environ.get("SOURCE_DATE_EPOCH", "0")))
    sp.add_argument("--kernel", default="")
    a = ap.parse_args(argv)

    if a.cmd == "deps":
        print("\n".join(runtime_requirements(a.pyproject)))
    elif a.cmd == "pip-download":
        download_wheels(a.python, a.dest, runtime_requirements(a.pyproject) + ["pip"])
        for w in check_wheels(a.dest):
            print(f"{w.name} {w.version} {w.abi} {w.platform}")
    elif a.cmd == "check-wheels":
        for w in check_wheels(a.dir):
            print(f"{w.name} {w.version} {w.abi} {w.platform}")
    elif a.cmd == "firewall":
        return firewall_main(a.role, a.config, a.out)
    elif a.cmd == "initramfs-modules":
        sys.stdout.write(INITRAMFS_MODULES)
    elif a.cmd == "units":
        print("\n".join(enabled_units(a.role) if a.which == "enable" else DISABLED_UNITS))
    elif a.cmd == "bootfiles":
        write_boot_files(a.role, a.boot, a.sample_config, a.kernel, a.initrd)
    elif a.cmd == "assemble":
        layout = assemble(a.out, a.boot, a.root, a.data, epoch=a.epoch,
                          boot_size=a.boot_mib * MiB, data_size=a.data_mib * MiB,
                          root_size=a.root_mib * MiB or None)
        print(json.dumps({"image": str(a.out), "size": layout.image_size,
                          "partitions": layout.partitions()}))
    elif a.cmd == "manifest":
        site = next(a.rootfs.glob("opt/diode/venv/lib/python3*/site-packages"))
        wheels = [{"file": p.name, "sha256": sha256_file(p)} for p in sorted(a.wheels.glob("*.whl"))]
        m = make_manifest(a.role, debian=debian_packages(a.rootfs), python=python_packages(site),
                          wheels=wheels, epoch=a.epoch, kernel=a.kernel,
                          image={"file": a.image.name, "size": a.image.stat().st_size,
                                 "sha256": sha256_file(a.image)})
        validate_manifest(m)
        a.out.write_text(json.dumps(m, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
