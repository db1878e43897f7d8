// A large node-opcua plant, for the plant-impact bench (diode bench plant):
//
//   node big_plant.mjs HOST PORT N RATE [MIN_SAMPLING_MS [TICK_MS]]
//                                        prints "READY opc.tcp://HOST:PORT/plant"
//
// Namespace urn:diode:node-bigplant: Objects/Plant/AreaNNN folders of 100 Double
// variables each, browse names V00000..V(N-1), node ids s=Plant.Vnnnnn. RATE values
// change per second in total (round robin, in ticks of TICK_MS, default 100, so a variable
// may change several times a tick), set from the source as a device driver would; each change
// writes the next number of one plant-wide count. Every variable declares
// MinimumSamplingInterval = MIN_SAMPLING_MS (default 0: it can be monitored on change).
// SIGUSR1 adds a variable Plant.AddedNNN to Area000 and prints "ADDED <node id>"; SIGUSR2
// deletes the last one added and prints "REMOVED <node id>"; SIGHUP appends a namespace
// urn:diode:node-bigplant:extraN with one variable Extra.Value under Objects and prints
// "NAMESPACE <node id>".
import { DataType, OPCUAServer, StatusCodes, Variant } from "node-opcua";

const [host, portText, nText, rateText, minText, tickText] = process.argv.slice(2);
const tick = Number(tickText ?? 100);
const n = Number(nText);
const rate = Number(rateText);
const minimumSamplingInterval = Number(minText ?? 0);
const server = new OPCUAServer({
  hostname: host, port: Number(portText), resourcePath: "/plant", alternateHostname: [host],
  buildInfo: { productName: "diode node-opcua big plant", buildNumber: "1" },
  allowAnonymous: true, maxAllowedSessionNumber: 50,
});
await server.initialize();
const space = server.engine.addressSpace;
const ns = space.registerNamespace("urn:diode:node-bigplant");
const plant = ns.addFolder(space.rootFolder.objects, { browseName: "Plant", nodeId: "s=Plant" });
const vars = [];
let area = null;
for (let i = 0; i < n; i += 1) {
  if (i % 100 === 0) {
    const a = String(i / 100).padStart(3, "0");
    area = ns.addFolder(plant, { browseName: `Area${a}`, nodeId: `s=Plant.Area${a}` });
  }
  const name = `V${String(i).padStart(5, "0")}`;
  vars.push(ns.addVariable({
    organizedBy: area, browseName: name, nodeId: `s=Plant.${name}`, dataType: "Double",
    value: new Variant({ dataType: DataType.Double, value: i }), minimumSamplingInterval,
  }));
}

let next = 0;
let count = 0;
const perTick = (rate * tick) / 1000;
let owed = 0;
setInterval(() => {
  owed += perTick;
  const now = new Date();
  for (; owed >= 1; owed -= 1) {
    const v = vars[next];
    next = (next + 1) % n;
    count += 1;
    v.setValueFromSource(new Variant({ dataType: DataType.Double, value: count }),
      StatusCodes.Good, now);
  }
}, tick);

const added = [];
process.on("SIGUSR1", () => {
  const name = `Added${String(added.length).padStart(3, "0")}`;
  const v = ns.addVariable({
    organizedBy: space.findNode("ns=2;s=Plant.Area000") ?? plant, browseName: name,
    nodeId: `s=Plant.${name}`, dataType: "Double",
    value: new Variant({ dataType: DataType.Double, value: added.length }),
  });
  added.push(v);
  console.log(`ADDED ${v.nodeId.toString()}`);
});
process.on("SIGUSR2", () => {
  const v = added.pop();
  if (v) {
    space.deleteNode(v);
    console.log(`REMOVED ${v.nodeId.toString()}`);
  }
});

let extras = 0;
process.on("SIGHUP", () => {
  extras += 1;
  const extra = space.registerNamespace(`urn:diode:node-bigplant:extra${extras}`);
  const v = extra.addVariable({
    organizedBy: space.rootFolder.objects, browseName: `Extra${extras}`,
    nodeId: "s=Extra.Value", dataType: "Double",
    value: new Variant({ dataType: DataType.Double, value: extras }),
  });
  console.log(`NAMESPACE ${v.nodeId.toString()}`);
});

await server.start();
console.log(`READY opc.tcp://${host}:${portText}/plant`);
for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, async () => {
    await server.shutdown(0);
    process.exit(0);
  });
}
