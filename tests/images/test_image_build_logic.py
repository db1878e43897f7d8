"""The SD-card image build's own logic, without an emulated build (images/imagelib.py).

A tiny image is assembled with the real assembly code from small FAT and ext4 trees and
checked with sfdisk, fsck and mtools; the generated boot files, units and firewall rules, the
manifest format and the aarch64 wheel download (from PyPI) are checked on their own. The host
tools these need come from scripts/setup.sh; a missing one fails the test, naming it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images"
sys.path.insert(0, str(IMAGES))
import imagelib  # noqa: E402

EPOCH = 1_700_000_000
TOOLS = {"sfdisk": "fdisk", "mkfs.vfat": "dosfstools", "fsck.vfat": "dosfstools",
         "mcopy": "mtools", "mdir": "mtools", "mtype": "mtools", "mkfs.ext4": "e2fsprogs",
         "debugfs": "e2fsprogs", "e2fsck": "e2fsprogs", "nft": "nftables",
         "systemctl": "systemd", "dpkg-query": "dpkg"}


def need(*tools: str) -> None:
    """Fail (never skip) when a host tool is missing: CI must not pass without checking."""
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    missing = [t for t in tools if not shutil.which(t, path=path)]
    if missing:
        pytest.fail(f"host tools missing: {missing}; install the Debian packages "
                    f"{sorted({TOOLS.get(t, t) for t in missing})} (scripts/setup.sh does)")
    os.environ["PATH"] = path


def run(*cmd: str, **kw) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


# -- trees as build.sh makes them, in small ---------------------------------------------------

def boot_tree(tmp: Path, role: str) -> Path:
    boot = tmp / "boot"
    boot.mkdir()
    for name in ("bootcode.bin", "start4.elf", "fixup4.dat", "bcm2711-rpi-4-b.dtb",
                 "vmlinuz-6.1.0-99-arm64", "initrd.img-6.1.0-99-arm64"):
        (boot / name).write_bytes(name.encode() * 100)
    imagelib.write_boot_files(role, boot, REPO / "board" / "config" / f"{role}.toml",
                              "vmlinuz-6.1.0-99-arm64", "initrd.img-6.1.0-99-arm64")
    return boot


def root_tree(tmp: Path, role: str) -> Path:
    root = tmp / "root"
    shutil.copytree(IMAGES / "rootfs", root, symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "board/systemd" / f"diode-{role}.service", root / "etc/systemd/system")
    (root / "opt/diode/lib").mkdir(parents=True)
    shutil.copy(IMAGES / "imagelib.py", root / "opt/diode/lib")
    (root / "var").mkdir()
    (root / "boot/firmware").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    os.symlink("/opt/diode/venv/bin/diode", root / "usr/bin/diode")
    return root


def data_tree(tmp: Path) -> Path:
    data = tmp / "data"
    (data / "lib/dpkg").mkdir(parents=True)
    (data / "lib/dpkg/status").write_text("")
    (data / "log").mkdir()
    return data


def tiny_image(tmp: Path, role: str = "tx") -> tuple[Path, imagelib.Layout]:
    img = tmp / f"diode-{role}.img"
    layout = imagelib.assemble(img, boot_tree(tmp, role), root_tree(tmp, role), data_tree(tmp),
                               epoch=EPOCH, boot_size=40 * imagelib.MiB,
                               data_size=8 * imagelib.MiB)
    return img, layout


def extract(img: Path, start: int, sectors: int, out: Path) -> Path:
    with open(img, "rb") as src, open(out, "wb") as dst:
        src.seek(start * 512)
        dst.write(src.read(sectors * 512))
    return out


# -- partition layout -------------------------------------------------------------------------

def test_tiny_image_partition_table(tmp_path: Path) -> None:
    need("sfdisk", "mkfs.vfat", "mcopy", "mkfs.ext4", "debugfs", "e2fsck")
    img, layout = tiny_image(tmp_path)
    table = json.loads(run("sfdisk", "-J", str(img)))["partitiontable"]
    assert table["label"] == "dos"  # the Pi firmware reads MBR only
    assert table["id"] == "0xd10de000"
    parts = table["partitions"]
    assert [p["type"] for p in parts] == ["c", "83", "83"]
    assert parts[0].get("bootable") is True
    assert parts[0]["start"] == 2048  # 1 MiB aligned
    for p, (start, size) in zip(parts, layout.partitions(), strict=True):
        assert (p["start"], p["size"]) == (start, size)
        assert p["start"] % 2048 == 0
    assert img.stat().st_size == layout.image_size
    # partitions touch end to end and nothing sticks out
    assert parts[1]["start"] == parts[0]["start"] + parts[0]["size"]
    assert parts[2]["start"] + parts[2]["size"] == img.stat().st_size // 512


def test_tiny_image_file_systems_check_clean(tmp_path: Path) -> None:
    need("sfdisk", "mkfs.vfat", "fsck.vfat", "mcopy", "mdir", "mtype", "mkfs.ext4", "debugfs",
         "e2fsck")
    img, layout = tiny_image(tmp_path, "rx")
    (b0, bn), (r0, rn), (d0, dn) = layout.partitions()
    boot = extract(img, b0, bn, tmp_path / "p1")
    root = extract(img, r0, rn, tmp_path / "p2")
    data = extract(img, d0, dn, tmp_path / "p3")
    run("fsck.vfat", "-n", str(boot))
    run("e2fsck", "-fn", str(root))
    run("e2fsck", "-fn", str(data))
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    # the same through mtools' offset syntax on the whole image, as boot-test.sh uses it
    listing = run("mdir", "-b", "-i", f"{img}@@{b0 * 512}", "::/diode", env=env)
    names = sorted(n for n in (ln.rstrip("/").rsplit("/", 1)[-1] for ln in listing.split())
                   if n and n != "diode")
    assert names == ["README.txt", "link.key", "network", "rx.toml"]
    assert "DIODEBOOT" in run("mdir", "-i", str(boot), "::", env=env)
    cfg = run("mtype", "-i", str(boot), "::/diode/rx.toml", env=env)
    assert cfg.replace("\r", "") == (REPO / "board/config/rx.toml").read_text()
    top = run("mdir", "-b", "-i", str(boot), "::", env=env)
    for name in ("config.txt", "cmdline.txt", "vmlinuz-6.1.0-99-arm64", "start4.elf"):
        assert f"::/{name}" in top
    # ext4: labels, fixed UUIDs, the fstab and units inside, an empty /var mount point
    assert "diode-root" in run("debugfs", "-R", "stats", str(root))
    assert imagelib.ROOT_UUID in run("dumpe2fs", "-h", str(root))
    assert imagelib.DATA_UUID in run("dumpe2fs", "-h", str(data))
    fstab = run("debugfs", "-R", "cat /etc/fstab", str(root))
    assert fstab == (IMAGES / "rootfs/etc/fstab").read_text()
    assert "diode-rx.service" in run("debugfs", "-R", "ls -l /etc/systemd/system", str(root))
    assert "lib" in run("debugfs", "-R", "ls /", str(data))
    # symlinks survive and times are clamped to SOURCE_DATE_EPOCH
    assert "Fast link dest: \"/opt/diode/venv/bin/diode\"" in run(
        "debugfs", "-R", "stat /usr/bin/diode", str(root))
    stat = run("debugfs", "-R", "stat /etc/fstab", str(root))
    for field in ("ctime", "crtime"):
        line = next(ln for ln in stat.splitlines() if ln.strip().startswith(field + ":"))
        assert f"0x{EPOCH:08x}" in line, line


def test_assembly_is_bit_identical(tmp_path: Path) -> None:
    """Same trees, different host times (ctime, atime after reading): the same bytes."""
    need("sfdisk", "mkfs.vfat", "mcopy", "mkfs.ext4", "debugfs", "e2fsck")
    digests = []
    for i in range(2):
        d = tmp_path / str(i)
        d.mkdir()
        img, _ = tiny_image(d)
        digests.append(hashlib.sha256(img.read_bytes()).hexdigest())
        time.sleep(1.1)  # new ctimes on the second run's trees
    assert digests[0] == digests[1]


def test_fstab_read_only_root_writable_var() -> None:
    rows = [ln.split() for ln in (IMAGES / "rootfs/etc/fstab").read_text().splitlines()
            if ln.strip() and not ln.startswith("#")]
    by_mount = {r[1]: r for r in rows}
    assert by_mount["/"][0] == f"PARTUUID={imagelib.partuuid(2)}"
    assert "ro" in by_mount["/"][3].split(",")
    assert by_mount["/var"][0] == f"PARTUUID={imagelib.partuuid(3)}"
    assert "rw" in by_mount["/var"][3].split(",")
    assert by_mount["/boot/firmware"][2] == "vfat"
    assert "ro" in by_mount["/boot/firmware"][3].split(",")  # no FAT writes to cut


# -- boot partition: config and key slots ------------------------------------------------------

@pytest.mark.parametrize("role", ["tx", "rx"])
def test_boot_files(tmp_path: Path, role: str) -> None:
    boot = boot_tree(tmp_path, role)
    config = (boot / "config.txt").read_text()
    assert "arm_64bit=1" in config
    assert "kernel=vmlinuz-6.1.0-99-arm64" in config
    assert "initramfs initrd.img-6.1.0-99-arm64 followkernel" in config
    cmdline = (boot / "cmdline.txt").read_text()
    assert cmdline.count("\n") == 1 and cmdline.endswith("\n")  # the firmware reads one line
    assert f"root=PARTUUID={imagelib.partuuid(2)}" in cmdline.split()
    assert "ro" in cmdline.split()
    assert (boot / "diode" / f"{role}.toml").read_text() == \
        (REPO / "board/config" / f"{role}.toml").read_text()
    assert not (boot / "diode" / ("rx.toml" if role == "tx" else "tx.toml")).exists()
    assert not (boot / "diode" / imagelib.SSH_KEYS_FILE).exists()  # SSH off by default


def test_key_slot_is_a_placeholder_the_agent_refuses(tmp_path: Path) -> None:
    from agent.config import ConfigError
    from agent.keys import read_key
    boot = boot_tree(tmp_path, "tx")
    key = boot / "diode/link.key"
    assert "diode keygen" in key.read_text()
    os.chmod(key, 0o600)
    with pytest.raises(ConfigError, match="not a link key"):
        read_key(key)


def test_initramfs_module_list_covers_sd_cards_and_qemu() -> None:
    mods = {ln for ln in imagelib.INITRAMFS_MODULES.splitlines() if ln and not ln.startswith("#")}
    assert {"sdhci_iproc", "bcm2835", "mmc_block"} <= mods  # Pi 4 emmc2, Pi 3 sdhost
    assert {"virtio_blk", "virtio_pci", "ext4"} <= mods  # boot-test.sh
    conf = (IMAGES / "rootfs/etc/initramfs-tools/conf.d/diode.conf").read_text()
    assert "MODULES=list" in conf


# -- units --------------------------------------------------------------------------------------

@pytest.mark.parametrize("role", ["tx", "rx"])
def test_enabled_units_for_the_role(tmp_path: Path, role: str) -> None:
    """systemctl --root enables what customize.sh enables: the role's agent and firewall."""
    need("systemctl")
    root = root_tree(tmp_path, role)
    units = root / "etc/systemd/system"
    for other in ("diode-tx.service", "diode-rx.service"):
        shutil.copy(REPO / "board/systemd" / other, units)
    for stub in ("systemd-networkd.service", "systemd-resolved.service",
                 "systemd-timesyncd.service", "ssh.service"):
        (units / stub).write_text("[Service]\nExecStart=/bin/true\n[Install]\n"
                                  "WantedBy=multi-user.target\n")
    run("systemctl", f"--root={root}", "enable", *imagelib.enabled_units(role))
    wants = units / "multi-user.target.wants"
    assert (wants / f"diode-{role}.service").is_symlink()
    assert not (wants / f"diode-{'rx' if role == 'tx' else 'tx'}.service").exists()
    assert (units / "sysinit.target.wants" / f"diode-firewall@{role}.service").is_symlink()
    assert (units / "sysinit.target.wants" / "diode-netconf.service").is_symlink()


def test_ssh_needs_authorized_keys_and_allows_no_passwords() -> None:
    dropin = (IMAGES / "rootfs/etc/systemd/system/ssh.service.d/diode.conf").read_text()
    assert "ConditionPathExists=/boot/firmware/diode/authorized_keys" in dropin
    sshd = (IMAGES / "rootfs/etc/ssh/sshd_config.d/diode.conf").read_text().split("\n")
    assert "PasswordAuthentication no" in sshd
    assert "KbdInteractiveAuthentication no" in sshd
    assert "PermitRootLogin prohibit-password" in sshd
    custom = (IMAGES / "customize.sh").read_text()
    assert "rm -f \"$R\"/etc/ssh/ssh_host_*" in custom  # no host keys shipped
    assert "root:!*:" in custom  # root locked: no default password


def test_firewall_unit_fails_closed() -> None:
    unit = (IMAGES / "rootfs/etc/systemd/system/diode-firewall@.service").read_text()
    assert "Before=network-pre.target" in unit
    assert "|| /usr/sbin/nft -f /etc/nftables.conf" in unit


# -- nftables -----------------------------------------------------------------------------------

def _accepts(rules: str) -> list[str]:
    return [ln.strip() for ln in rules.splitlines() if "dport" in ln and "accept" in ln]


def nft_check(rules: str, tmp_path: Path) -> None:
    need("nft")
    f = tmp_path / "rules.nft"
    f.write_text(rules)
    cmd = ["nft", "-c", "-f", str(f)]
    if os.geteuid() != 0:
        cmd = ["unshare", "-rn", *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_tx_firewall_without_syslog_listeners_accepts_no_inbound_connection(tmp_path: Path) -> None:
    rules = imagelib.firewall_rules("tx", (REPO / "board/config/tx.toml").read_text())
    assert _accepts(rules) == []
    assert "policy drop" in rules.split("chain input")[1].split("}")[0]
    assert "ct state established,related accept" in rules
    # even a TX config naming ports opens nothing
    rules2 = imagelib.firewall_rules("tx", '[metrics]\nlisten = "0.0.0.0:9108"\n[link]\nport=1\n')
    assert _accepts(rules2) == []
    nft_check(rules, tmp_path)


def test_tx_firewall_opens_exactly_the_syslog_listeners_on_their_addresses(tmp_path: Path) -> None:
    cfg = (REPO / "board/config/tx.toml").read_text() + """
[[syslog]]
name = "ot"
listen = ["udp://10.0.0.5:514", "tcp://10.0.0.5:601", "tls://[fd00::5]:6514"]

[[syslog]]
name = "lab"
listen = ["udp://10.0.9.5:5514", "udp://0.0.0.0:515", "tcp://plc-gw:602", "udp://10.0.0.5:514"]
"""
    rules = imagelib.firewall_rules("tx", cfg)
    assert _accepts(rules) == ["ip daddr 10.0.0.5 udp dport 514 accept",
                               "ip daddr 10.0.0.5 tcp dport 601 accept",
                               "ip6 daddr fd00::5 tcp dport 6514 accept",
                               "ip daddr 10.0.9.5 udp dport 5514 accept"]
    # what the agent refuses to bind (a wildcard, a name) is not opened either
    assert "dport 515" not in rules and "dport 602" not in rules
    assert "policy drop" in rules.split("chain input")[1].split("}")[0]
    nft_check(rules, tmp_path)
    assert _accepts(imagelib.firewall_rules("tx", cfg.replace("[[syslog]]", "[[syslog"))) == []


def test_rx_firewall_opens_only_configured_it_services(tmp_path: Path) -> None:
    sample = (REPO / "board/config/rx.toml").read_text()
    assert _accepts(imagelib.firewall_rules("rx", sample)) == ["udp dport 5600 accept"]
    cfg = sample + '\n[metrics]\nlisten = "0.0.0.0:9108"\n\n[opcua]\nendpoint = "opc.tcp://0.0.0.0:4841/diode"\n'
    cfg = cfg.replace('host = "0.0.0.0"           # listen address',
                      'host = "0.0.0.0"\ninterface = "eth1"')
    rules = imagelib.firewall_rules("rx", cfg)
    assert _accepts(rules) == ['iifname "eth1" udp dport 5600 accept', "tcp dport 9108 accept",
                               "tcp dport 4841 accept"]
    assert "tcp dport 22" not in rules
    nft_check(rules, tmp_path)


def test_firewall_fails_closed_and_ssh_opt_in(tmp_path: Path) -> None:
    assert _accepts(imagelib.firewall_rules("rx", None)) == []
    assert _accepts(imagelib.firewall_rules("rx", "this is [not toml")) == []
    d = tmp_path / "diode"
    d.mkdir()
    (d / "rx.toml").write_text((REPO / "board/config/rx.toml").read_text())
    out = tmp_path / "rules.nft"
    imagelib.firewall_main("rx", d / "rx.toml", out)
    assert "tcp dport 22 accept" not in out.read_text()
    (d / imagelib.SSH_KEYS_FILE).write_text("ssh-ed25519 AAAA test\n")
    imagelib.firewall_main("rx", d / "rx.toml", out)
    assert "tcp dport 22 accept" in _accepts(out.read_text())
    nft_check(out.read_text(), tmp_path)
    # the CLI the unit runs, with the board's python3 flags
    r = subprocess.run([sys.executable, "-I", str(IMAGES / "imagelib.py"), "firewall", "tx",
                        str(tmp_path / "missing.toml")], capture_output=True, text=True)
    assert r.returncode == 0 and "policy drop" in r.stdout and _accepts(r.stdout) == []


# -- manifest -----------------------------------------------------------------------------------

def test_manifest_from_dpkg_status_and_venv(tmp_path: Path) -> None:
    need("dpkg-query")
    rootfs = tmp_path / "rootfs"
    (rootfs / "var/lib/dpkg").mkdir(parents=True)
    (rootfs / "var/lib/dpkg/status").write_text(
        "Package: python3\nStatus: install ok installed\nArchitecture: arm64\n"
        "Version: 3.11.2-1+b1\nMaintainer: x\nDescription: x\n\n"
        "Package: linux-image-arm64\nStatus: install ok installed\nArchitecture: arm64\n"
        "Version: 6.1.140-1\nMaintainer: x\nDescription: x\n\n")
    site = rootfs / "opt/diode/venv/lib/python3.11/site-packages"
    for name, version in (("diode_agents", "0.1.0"), ("paho_mqtt", "2.1.0")):
        (site / f"{name}-{version}.dist-info").mkdir(parents=True)
        (site / f"{name}-{version}.dist-info/METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n\nbody\n")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "paho_mqtt-2.1.0-py3-none-any.whl").write_bytes(b"w")
    img = tmp_path / "diode-tx.img"
    img.write_bytes(b"\0" * 4096)
    out = tmp_path / "m.json"
    subprocess.run([sys.executable, str(IMAGES / "imagelib.py"), "manifest", "tx", str(rootfs),
                    str(wheels), str(img), str(out), "--epoch", str(EPOCH), "--kernel",
                    "6.1.0-99-arm64"], check=True)
    m = json.loads(out.read_text())
    imagelib.validate_manifest(m)
    assert m["format"] == "diode-image-manifest/1" and m["role"] == "tx"
    assert m["source_date_epoch"] == EPOCH
    assert {"name": "python3", "version": "3.11.2-1+b1", "arch": "arm64"} in m["debian"]["packages"]
    assert m["debian"]["kernel"] == "6.1.0-99-arm64"
    assert {"name": "diode-agents", "version": "0.1.0"} in m["python"]["packages"]
    assert m["python"]["wheels"] == [{"file": "paho_mqtt-2.1.0-py3-none-any.whl",
                                      "sha256": hashlib.sha256(b"w").hexdigest()}]
    assert m["image"] == {"file": "diode-tx.img", "size": 4096,
                          "sha256": hashlib.sha256(b"\0" * 4096).hexdigest()}
    bad = json.loads(out.read_text())
    bad["python"]["packages"] = [{"name": "paho-mqtt", "version": "2.1.0"}]
    with pytest.raises(ValueError, match="diode-agents"):
        imagelib.validate_manifest(bad)


# -- wheels ---------------------------------------------------------------------------------------

def test_requirements_are_the_projects() -> None:
    reqs = imagelib.runtime_requirements(REPO / "pyproject.toml")
    names = {r.split(">")[0].split("<")[0].split("=")[0].strip() for r in reqs}
    assert {"paho-mqtt", "cbor2", "cryptography", "pyroute2", "asyncua", "gpiod"} <= names
    assert not names & {"pytest", "ruff", "mypy", "hypothesis"}  # dev extras stay off the board


def test_wheel_names_checked() -> None:
    w = imagelib.parse_wheel("cryptography-44.0.0-cp39-abi3-manylinux_2_28_aarch64.whl")
    assert (w.name, w.abi, w.pure) == ("cryptography", "abi3", False)
    assert imagelib.parse_wheel("paho_mqtt-2.1.0-py3-none-any.whl").pure


@pytest.mark.timeout(600)
def test_download_aarch64_wheels_for_every_dependency(tmp_path: Path) -> None:
    """Real PyPI: every dependency has a wheel that runs on bookworm arm64 CPython 3.11."""
    cmd = imagelib.pip_download_command(sys.executable, tmp_path, [])
    assert "--only-binary=:all:" in cmd and "manylinux2014_aarch64" in cmd
    imagelib.download_wheels(sys.executable, tmp_path,
                             imagelib.runtime_requirements(REPO / "pyproject.toml") + ["pip"])
    wheels = imagelib.check_wheels(tmp_path)
    by_name = {w.name: w for w in wheels}
    for req in imagelib.runtime_requirements(REPO / "pyproject.toml"):
        name = req.split(">")[0].split("<")[0].split("=")[0].strip()
        assert name in by_name, f"no wheel for {name}"
    for compiled in ("cryptography", "cbor2", "gpiod", "cffi"):
        w = by_name[compiled]
        assert "aarch64" in w.platform and w.abi in ("cp311", "abi3"), w.file
    assert not [w.file for w in wheels if "x86_64" in w.file]


def test_project_wheel_holds_the_product_and_not_the_tools(tmp_path: Path) -> None:
    """As build.sh makes it: from a clean copy of what the wheel holds. The demo, the
    benches and the simulators (scripts/diode_tools) never reach a board, and no
    top-level `board` module collides with Adafruit Blinka's."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src)
    shutil.copytree(REPO / "agent", src / "agent", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path),
                    str(src)], check=True, capture_output=True)
    (whl,) = tmp_path.glob("diode_agents-*-py3-none-any.whl")
    import zipfile
    names = zipfile.ZipFile(whl).namelist()
    assert "agent/cli.py" in names and "agent/board/watchdog.py" in names
    assert "agent/mqtt/source.py" in names and "agent/opcua/mirror.py" in names
    tops = {n.split("/")[0] for n in names if not n.startswith("diode_agents-")}
    assert tops == {"agent"}, tops
    assert not any("diode_tools" in n or "/sim/" in n or "bench" in n for n in names)
    ep = next(n for n in names if n.endswith("entry_points.txt"))
    assert "diode = agent.cli:main" in zipfile.ZipFile(whl).read(ep).decode()


# -- the scripts ----------------------------------------------------------------------------------

@pytest.mark.parametrize("script", ["build.sh", "boot-test.sh"])
def test_scripts_parse_and_refuse_a_bad_role(script: str) -> None:
    path = IMAGES / script
    subprocess.run(["bash", "-n", str(path)], check=True)
    r = subprocess.run([str(path), "bogus"], capture_output=True, text=True)
    assert r.returncode == 2 and "usage" in r.stderr
    subprocess.run(["sh", "-n", str(IMAGES / "customize.sh")], check=True)
