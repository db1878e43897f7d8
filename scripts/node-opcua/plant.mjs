// A small OPC UA plant that is not asyncua: node-opcua, for tests that must not pass
// only because both sides of the diode run the same OPC UA stack.
//
//   node plant.mjs HOST PORT      prints "READY opc.tcp://HOST:PORT/plant" when listening
//
// Namespace urn:diode:node-plant (index 2; 1 is the server's own), string node ids:
//   Plant                 folder
//   Plant.Counter         Int32, +1 every 100 ms; SourceTimestamp with 100 ns digits
//   Plant.DoubleArray     Double[10], every element changes every 100 ms
//   Plant.Int32Array      Int32[5] = 10 20 30 40 50, never changes
//   Plant.StringArray     String[3] = alpha beta gamma, never changes
//   Plant.Constant        Double 1.5, never changes, writable (a mirror must refuse)
//   Plant.Reset()         a method (a mirror must refuse calls)
import {
  DataType, DataValue, OPCUAServer, StatusCodes, Variant, VariantArrayType,
} from "node-opcua";

const [host, portText] = process.argv.slice(2);
const port = Number(portText);
const server = new OPCUAServer({
  hostname: host, port, resourcePath: "/plant", alternateHostname: [host],
  buildInfo: { productName: "diode node-opcua plant", buildNumber: "1" },
  serverCertificateManager: undefined, allowAnonymous: true,
});
await server.initialize();
const space = server.engine.addressSpace;
const ns = space.registerNamespace("urn:diode:node-plant");
const plant = ns.addFolder(space.rootFolder.objects, { browseName: "Plant", nodeId: "s=Plant" });

function variable(name, dataType, value, array = false, extra = {}) {
  return ns.addVariable({
    organizedBy: plant, browseName: name, nodeId: `s=Plant.${name}`, dataType,
    valueRank: array ? 1 : -1, arrayDimensions: array ? [value.length] : undefined,
    value: new Variant({
      dataType: DataType[dataType], value,
      arrayType: array ? VariantArrayType.Array : VariantArrayType.Scalar,
    }),
    ...extra,
  });
}

const counter = variable("Counter", "Int32", 0);
const doubles = variable("DoubleArray", "Double", Array.from({ length: 10 }, (_, i) => i), true);
variable("Int32Array", "Int32", [10, 20, 30, 40, 50], true);
variable("StringArray", "String", ["alpha", "beta", "gamma"], true);
variable("Constant", "Double", 1.5, false,
  { accessLevel: "CurrentRead | CurrentWrite", userAccessLevel: "CurrentRead | CurrentWrite" });
const reset = ns.addMethod(plant, {
  browseName: "Reset", nodeId: "s=Plant.Reset", inputArguments: [], outputArguments: [],
});
reset.bindMethod((_inputs, _context, callback) => callback(null, { statusCode: StatusCodes.Good }));

// Values carry a SourceTimestamp with digits below the microsecond (100 ns ticks): the
// picoseconds past the millisecond, a multiple of 100,000 (one tick), never a whole µs.
let n = 0;
function tick() {
  n += 1;
  const sourceTimestamp = new Date();
  const sourcePicoseconds = (n % 997) * 1_000_000 + ((n % 9) + 1) * 100_000;
  counter._internal_set_dataValue(new DataValue({
    value: new Variant({ dataType: DataType.Int32, value: n }),
    statusCode: StatusCodes.Good, sourceTimestamp, sourcePicoseconds,
    serverTimestamp: sourceTimestamp, serverPicoseconds: sourcePicoseconds,
  }));
  doubles.setValueFromSource(new Variant({
    dataType: DataType.Double, arrayType: VariantArrayType.Array,
    value: Float64Array.from({ length: 10 }, (_, i) => i + n / 10),
  }), StatusCodes.Good, sourceTimestamp);
}
setInterval(tick, 100);

await server.start();
const url = `opc.tcp://${host}:${port}/plant`;
console.log(`READY ${url}`);
for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, async () => {
    await server.shutdown(0);
    process.exit(0);
  });
}
