// A node-opcua plant that accepts only Basic256Sha256 SignAndEncrypt, and only client
// certificates in its PKI's trusted folder: the commissioning tests' independent server.
//
//   node secure_plant.mjs HOST PORT PKI_DIR    prints "READY opc.tcp://HOST:PORT/plant"
//
// An unknown client certificate is refused (BadCertificateUntrusted) and lands in
// PKI_DIR/rejected; copying it to PKI_DIR/trusted/certs trusts it, with no restart.
// Namespace urn:diode:node-secure-plant: Plant/Value, a Double counting up every 100 ms.
import {
  DataType, MessageSecurityMode, OPCUACertificateManager, OPCUAServer, SecurityPolicy, Variant,
} from "node-opcua";

const [host, portText, pki] = process.argv.slice(2);
const serverCertificateManager = new OPCUACertificateManager({
  rootFolder: pki, automaticallyAcceptUnknownCertificate: false,
});
await serverCertificateManager.initialize();
const server = new OPCUAServer({
  hostname: host, port: Number(portText), resourcePath: "/plant", alternateHostname: [host],
  buildInfo: { productName: "diode node-opcua secure plant", buildNumber: "1" },
  serverCertificateManager, allowAnonymous: true,
  securityPolicies: [SecurityPolicy.Basic256Sha256],
  securityModes: [MessageSecurityMode.SignAndEncrypt],
});
await server.initialize();
const space = server.engine.addressSpace;
const ns = space.registerNamespace("urn:diode:node-secure-plant");
const plant = ns.addFolder(space.rootFolder.objects, { browseName: "Plant", nodeId: "s=Plant" });
let n = 0;
const value = ns.addVariable({
  organizedBy: plant, browseName: "Value", nodeId: "s=Plant.Value", dataType: "Double",
  value: { get: () => new Variant({ dataType: DataType.Double, value: n }) },
});
setInterval(() => { n += 1; value.touchValue(); }, 100);

await server.start();
console.log(`READY opc.tcp://${host}:${portText}/plant`);
for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, async () => {
    await server.shutdown(0);
    process.exit(0);
  });
}
