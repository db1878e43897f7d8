"""An OPC UA stack that is not asyncua: node-opcua (Node.js), as a plant and as an IT client,
for tests that must not pass only because every peer runs asyncua.

    with NodeOpcuaPlant() as plant:          # scripts/node-opcua/plant.mjs
        ...  # plant.endpoint; its nodes: plant.mjs's header (namespace index 2)
    NodeOpcuaPlant(script="events_plant.mjs", args=("500",))  # events and an alarm
    results = node_client(url, [{"op": "read", "nodeId": "ns=2;s=Plant.Counter"}])
    plant = BigPlant(20_000, 1000.0, workdir)  # scripts/node-opcua/big_plant.mjs; .close()

`node_client` runs `scripts/node-opcua/client.mjs` once per call: it connects,
runs the operations in order (read with IndexRange, history raw or processed,
write, call, subscribe), and its JSON results come back as Python lists and
dicts (timestamps as ticks, 100 ns since 1601, ints here).

`scripts/setup.sh` installs node-opcua from the npm registry into
`scripts/node-opcua/` (`npm ci`, the version its package-lock.json pins; Node.js
20 or later). Without it these raise NodeOpcuaError naming the fix: a test that
needs it fails, never skips.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from diode_tools.sim.mosquitto import free_port, terminate

NODE_OPCUA_DIR = Path(__file__).resolve().parents[2] / "node-opcua"


class NodeOpcuaError(RuntimeError):
    """node-opcua is missing, or a plant or client run failed."""


def find_node_opcua() -> str:
    """The node binary, or NodeOpcuaError naming the fix."""
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None or not (NODE_OPCUA_DIR / "node_modules" / "node-opcua").is_dir():
        raise NodeOpcuaError("node-opcua is not installed (Node.js and "
                             "scripts/node-opcua/node_modules): run ./scripts/setup.sh, which "
                             "installs both")
    return node


def _ticks(dv: Any) -> Any:
    if isinstance(dv, dict):
        return {k: (int(v) if k.endswith("Ticks") and v is not None else _ticks(v))
                for k, v in dv.items()}
    if isinstance(dv, list):
        return [_ticks(x) for x in dv]
    return dv


def node_client(endpoint: str, ops: list[dict[str, Any]], timeout: float = 60.0) -> list[Any]:
    """Run `ops` with node-opcua's client against `endpoint`; one result per op."""
    node = find_node_opcua()
    try:
        done = subprocess.run([node, str(NODE_OPCUA_DIR / "client.mjs"), endpoint,
                               json.dumps(ops)], cwd=NODE_OPCUA_DIR, capture_output=True,
                              text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise NodeOpcuaError(f"node-opcua client: no answer within {timeout} s") from exc
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("[")]
    if done.returncode != 0 or not lines:
        raise NodeOpcuaError(f"node-opcua client exited {done.returncode}:\n"
                             f"{done.stderr[-3000:]}\n{done.stdout[-2000:]}")
    out = _ticks(json.loads(lines[-1]))
    assert isinstance(out, list)
    return out


class NodeOpcuaPlant:
    """scripts/node-opcua/plant.mjs (or `script`, with `args` after HOST PORT) on a free
    loopback port (or `port`); its log in `workdir` (default: a folder of its own,
    removed on close)."""

    def __init__(self, host: str = "127.0.0.1", start_timeout: float = 60.0,
                 script: str = "plant.mjs", args: tuple[str, ...] = (),
                 port: int | None = None, workdir: Path | None = None) -> None:
        self.host = host
        self.script, self.args = script, args
        self.port = port or free_port(host)
        self.endpoint = f"opc.tcp://{host}:{self.port}/plant"
        self.start_timeout = start_timeout
        self._own_dir = workdir is None
        self._dir = workdir or Path(tempfile.mkdtemp(prefix="node-opcua-plant-"))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self._dir / "plant.log"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self) -> Self:
        node = find_node_opcua()
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen([node, str(NODE_OPCUA_DIR / self.script), self.host,
                                           str(self.port), *self.args], cwd=NODE_OPCUA_DIR,
                                          stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + self.start_timeout
        while "READY" not in self.log_text():
            if self._proc.poll() is not None:
                raise NodeOpcuaError(f"node-opcua plant exited {self._proc.returncode}:\n"
                                     f"{self.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                self.close()
                raise NodeOpcuaError(f"node-opcua plant not ready within {self.start_timeout} s")
            time.sleep(0.05)
        return self

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            terminate(proc, 5.0)
        if self._own_dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


BIG_NAMESPACE = "urn:diode:node-bigplant"  # big_plant.mjs's variables: s=Plant.Vnnnnn


class BigPlant(NodeOpcuaPlant):
    """scripts/node-opcua/big_plant.mjs on a free loopback port, its log in `work`:
    `nodes` variables, `rate` changes a second in ticks of `tick_ms`, each declaring a
    MinimumSamplingInterval of `min_sampling_ms`."""

    def __init__(self, nodes: int, rate: float, work: Path, min_sampling_ms: float = 0,
                 tick_ms: float = 100, port: int | None = None) -> None:
        super().__init__(start_timeout=120.0, script="big_plant.mjs", port=port, workdir=work,
                         args=(str(nodes), str(rate), str(min_sampling_ms), str(tick_ms)))
        self.start()

    def _signal(self, sig: int, word: str) -> str:
        """Send `sig`; the node id the plant printed after `word`."""
        assert self._proc is not None, "the plant is not running"
        before = self.log_text().count(word)
        self._proc.send_signal(sig)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            lines = [ln for ln in self.log_text().splitlines() if ln.startswith(word + " ")]
            if len(lines) > before:
                return lines[-1].split()[1]
            time.sleep(0.05)
        raise NodeOpcuaError(f"node-opcua big plant: no {word} line within 10 s")

    def add_variable(self) -> str:
        """A new variable in Area000 while running: its node id."""
        return self._signal(signal.SIGUSR1, "ADDED")

    def remove_last_added(self) -> str:
        return self._signal(signal.SIGUSR2, "REMOVED")

    def append_namespace(self) -> str:
        """A namespace appended to the server's array, with one variable: its node id."""
        return self._signal(signal.SIGHUP, "NAMESPACE")
