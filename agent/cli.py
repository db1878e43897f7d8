"""`diode` command line: tx | rx | keygen | demo | bench | status."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from agent import __version__, logs
from agent.errors import EXIT_FATAL, EXIT_NOT_FOUND, EXIT_OK, ConfigError

DEFAULT_CONFIG_DIR = "/boot/firmware/diode"


def _agent(args: argparse.Namespace) -> int:
    from agent import config
    role = args.command
    try:
        cfg = config.load(args.config, role)
        if role == "tx":
            from agent.tx import TxAgent
            return asyncio.run(TxAgent(cfg).run())
        from agent.rx import RxAgent
        return asyncio.run(RxAgent(cfg).run())
    except ConfigError as exc:
        print(f"diode {role}: configuration error: {exc}", file=sys.stderr)
        if os.environ.get("INVOCATION_ID"):  # under systemd: tell the technician on the board
            from agent.board.leds import show_fatal
            show_fatal(role, 10.0)
        return EXIT_FATAL


def _keygen(args: argparse.Namespace) -> int:
    from agent.keys import write_key
    from agent.link.seal import key_fingerprint
    path = Path(args.output)
    try:
        key = write_key(path, force=args.force)
    except FileExistsError:
        print(f"diode keygen: {path} exists; refusing to overwrite a key. Use --force to "
              "replace it (then copy the new key to both boards)", file=sys.stderr)
        return EXIT_FATAL
    print(f"wrote {path} (mode 0600), fingerprint {key_fingerprint(key)}")
    return EXIT_OK


def _tools_missing(command: str) -> bool:
    """True (and told) when the development tools are not installed, as on a board."""
    try:
        import diode_tools  # noqa: F401
    except ImportError:
        pass
    else:
        return False
    print(f"diode {command}: the development tools are not installed here (a board runs the "
          "product only). Fix: on a development machine run ./scripts/setup.sh, which installs "
          "them from scripts/", file=sys.stderr)
    return True


def _demo(args: argparse.Namespace) -> int:
    if _tools_missing("demo"):
        return EXIT_FATAL
    from diode_tools.demo import run_demo
    return run_demo(duration=args.duration, loss=args.loss, as_json=args.json, rate=args.rate,
                    rx_outage=args.rx_outage)


def _bench(args: argparse.Namespace) -> int:
    if _tools_missing("bench"):
        return EXIT_FATAL
    if args.what == "link":
        from diode_tools.bench.link import run_link_bench
        result = run_link_bench(loss=args.loss, repeat=args.repeat, frames=args.frames,
                                interleave=args.interleave)
    elif args.what == "spool":
        from diode_tools.bench.mqtt import spool_e2e
        from diode_tools.bench.spool import run_spool_bench
        result = run_spool_bench(records=args.records)
        result.update(spool_e2e(args.messages))
    elif args.what == "opcua":
        from diode_tools.bench.opcua import run_opcua_bench
        result = run_opcua_bench(nodes=args.nodes or 10_000, peer=not args.no_peer,
                                 plant=args.plant)
    elif args.what == "syslog":
        from diode_tools.bench.syslog import run_syslog_bench
        result = run_syslog_bench(messages=args.messages, bitrate=args.bitrate or 100_000_000,
                                  rounds=args.rounds)
    elif args.what == "modbus":
        from diode_tools.bench.modbus import run_modbus_bench
        result = run_modbus_bench(cycles=args.cycles)
    elif args.what == "plant":
        from diode_tools.bench.plant import run_plant_bench
        result = run_plant_bench(nodes=args.nodes or 20_000, rounds=args.rounds,
                                 old=not args.no_old)
    elif args.what == "recovery":
        from diode_tools.bench.recovery import run_recovery_bench
        result = run_recovery_bench()
    elif args.what == "flood" and args.core:
        from diode_tools.bench.flood_core import run_core_bench
        result = run_core_bench(datagrams=args.datagrams, rounds=args.rounds)
    elif args.what == "flood":
        from diode_tools.bench.flood import run_flood_bench
        result = run_flood_bench(seconds=args.seconds, rounds=args.rounds, rate=args.rate)
    else:
        from diode_tools.bench.mqtt import run_mqtt_bench
        result = run_mqtt_bench(messages=args.messages, bitrate=args.bitrate or 400_000_000,
                                rounds=args.rounds)
    if not args.json:
        for k, v in result.items():
            print(f"{k:>24}: {v}")
    print(json.dumps(result))
    return EXIT_OK


def _wipe(args: argparse.Namespace) -> int:
    from agent import config
    from agent.spool import SpoolError, wipe
    try:
        cfg = config.load(args.config, args.role)
    except ConfigError as exc:
        print(f"diode wipe: configuration error: {exc}", file=sys.stderr)
        return EXIT_FATAL
    if cfg.spool is None:
        print(f"diode wipe: {args.config} has no [spool]; nothing to wipe", file=sys.stderr)
        return EXIT_FATAL
    if not args.yes:
        print(f"diode wipe: this destroys the spool key and every record in {cfg.spool.dir}; "
              "nothing can be recovered. Run again with --yes to do it", file=sys.stderr)
        return EXIT_FATAL
    # every channel spools into its own folder; folders of channels since removed too
    dirs = sorted({*(d for d in cfg.spool.dir.glob("*") if d.is_dir()),
                   *(cfg.spool.dir / ch.name for chs in cfg.channels.values() for ch in chs)})
    key = Path(cfg.spool.key) if "/" in cfg.spool.key else None
    try:
        files = sum(wipe(d, None) for d in dirs)
        if key is not None:
            files += wipe(dirs[0], key)
    except SpoolError as exc:
        print(f"diode wipe: {exc}", file=sys.stderr)
        return EXIT_FATAL
    print(f"wiped {files} file(s) in {', '.join(map(str, dirs))}"
          + (f" and destroyed the key {key}" if key else
             f"; the key is the systemd credential {cfg.spool.key!r}: remove it from the boot "
             "partition"))
    return EXIT_OK


def _opcua_cert(args: argparse.Namespace) -> int:
    from agent.opcua.certs import make_certificate
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    thumb = make_certificate(out / "cert.der", out / "key.pem", args.uri,
                             hostname=args.hostname, days=args.days, server=args.server)
    print(f"wrote {out / 'cert.der'} and {out / 'key.pem'} (mode 0600)\n"
          f"SHA-1 thumbprint {thumb}: add the certificate to the "
          f"{'clients' if args.server else 'OT server'}'s trust list")
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    from agent.status import show_status
    if args.file:
        return show_status(Path(args.file), as_json=args.json)
    # A board runs one agent; its unit writes /run/diode/<role>.json (board/config).
    found = [p for p in (Path("/run/diode/tx.json"), Path("/run/diode/rx.json")) if p.exists()]
    if not found:
        print("diode status: no agent status in /run/diode/ (tx.json, rx.json). Is the agent "
              "running? Or pass -f with its [status] file", file=sys.stderr)
        return EXIT_NOT_FOUND
    return max(show_status(p, as_json=args.json) for p in found)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="diode", description="One-way gateway agents for a data "
                                "diode: MQTT, OPC UA and syslog from OT to IT, with nothing "
                                "back.")
    p.add_argument("--version", action="version", version=f"diode {__version__}")
    p.add_argument("--log-level", default="INFO",
                   choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    sub = p.add_subparsers(dest="command", required=True)
    for role, where in (("tx", "OT side"), ("rx", "IT side")):
        sp = sub.add_parser(role, help=f"run the {role.upper()} agent ({where})")
        sp.add_argument("-c", "--config", default=f"{DEFAULT_CONFIG_DIR}/{role}.toml",
                        help="config file (default: %(default)s)")
        sp.set_defaults(func=_agent)
    sp = sub.add_parser("keygen", help="write a new 256-bit key (mode 0600): link or spool")
    sp.add_argument("-o", "--output", required=True, help="key file to write")
    sp.add_argument("--force", action="store_true", help="overwrite an existing key file")
    sp.set_defaults(func=_keygen)
    sp = sub.add_parser("demo", help="live local demo: brokers, plant, TX, link, RX")
    sp.add_argument("--duration", type=float, default=30.0, help="seconds (default %(default)s)")
    sp.add_argument("--loss", type=float, default=0.0, help="datagram loss 0..1 on the link")
    sp.add_argument("--rate", type=float, default=500.0, help="plant messages per second")
    sp.add_argument("--rx-outage", type=float, default=0.0, metavar="SECONDS",
                    help="kill RX a third into the run for this long, then start it again "
                    "(TX's recovery window brings what it missed)")
    sp.add_argument("--json", action="store_true", help="last line: one JSON summary")
    sp.set_defaults(func=_demo)
    sp = sub.add_parser("bench", help="measure throughput and loss")
    sp.add_argument("what", choices=("mqtt", "link", "spool", "opcua", "plant", "syslog",
                                     "modbus", "recovery", "flood"))
    sp.add_argument("--cycles", type=int, default=20, help="modbus: poll cycles measured")
    sp.add_argument("--nodes", type=int, default=None,
                    help="opcua, plant: plant variables (default 10000, plant 20000)")
    sp.add_argument("--no-peer", action="store_true",
                    help="opcua: skip the peer (opcua-data-diode), which takes minutes above "
                    "20000 variables")
    sp.add_argument("--plant", choices=("node-opcua", "asyncua"), default="node-opcua",
                    help="opcua: the plant server (asyncua: our own simulator, up to 20000 "
                    "variables, slower to publish than node-opcua)")
    sp.add_argument("--no-old", action="store_true",
                    help="plant: skip the phase with the settings before the plant budget")
    sp.add_argument("--records", type=int, default=200_000, help="spool: records to append")
    sp.add_argument("--loss", type=float, default=0.05)
    sp.add_argument("--repeat", type=int, default=3)
    sp.add_argument("--interleave", type=int, default=8)
    sp.add_argument("--frames", type=int, default=100_000)
    sp.add_argument("--messages", type=int, default=100_000)
    sp.add_argument("--bitrate", type=int, default=None,
                    help="mqtt, syslog: link bit rate TX paces to (default 400000000 for "
                    "mqtt, 100000000 for syslog)")
    sp.add_argument("--rounds", type=int, default=3,
                    help="mqtt, syslog: rounds of both paths; plant: probes per phase; "
                    "flood: rounds of every kind of flood; figures are their medians")
    sp.add_argument("--core", action="store_true",
                    help="flood: the link core alone, in memory, instead of a real RX process")
    sp.add_argument("--seconds", type=float, default=5.0, help="flood: seconds per flood")
    sp.add_argument("--rate", type=float, default=500.0,
                    help="flood: genuine QoS 1 messages per second alongside")
    sp.add_argument("--datagrams", type=int, default=100_000,
                    help="flood --core: flood datagrams per workload")
    sp.add_argument("--json", action="store_true", help="print only the JSON line")
    sp.set_defaults(func=_bench)
    sp = sub.add_parser("wipe", help="decommission: destroy the spool key and overwrite "
                        "the spool")
    sp.add_argument("role", choices=("tx", "rx"))
    sp.add_argument("-c", "--config", required=True, help="the agent's config file")
    sp.add_argument("--yes", action="store_true", help="really destroy it")
    sp.set_defaults(func=_wipe)
    sp = sub.add_parser("opcua-cert", help="make a self-signed OPC UA certificate "
                        "and print its thumbprint")
    sp.add_argument("-o", "--output", required=True, help="folder for cert.der and key.pem")
    sp.add_argument("--uri", required=True, help="application URI, e.g. urn:diode:tx:plant")
    sp.add_argument("--server", action="store_true", help="for the RX mirror (server use)")
    sp.add_argument("--hostname", default=None)
    sp.add_argument("--days", type=int, default=1825)
    sp.set_defaults(func=_opcua_cert)
    sp = sub.add_parser("status", help="one screen of an agent's state")
    sp.add_argument("-f", "--file", default=None,
                    help="the agent's [status] file (default: /run/diode/tx.json or rx.json)")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=_status)
    args = p.parse_args(argv)
    logs.setup(args.log_level)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
