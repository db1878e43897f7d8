// A node-opcua plant with events and an alarm, for tests that must not pass only because
// both sides of the diode run the same OPC UA stack.
//
//   node events_plant.mjs HOST PORT [PERIOD_MS]
//        prints "READY opc.tcp://HOST:PORT/plant" when listening
//
// Namespace urn:diode:node-events-plant (index 2; 1 is the server's own), string node ids:
//   Plant                  folder
//   Plant.Tank             object, an event notifier (and an event source of the Server object)
//   Plant.Tank.Level       Double, the alarm's input
//   Plant.Tank.HighLevel   AlarmConditionType instance (its ConditionId), source Plant.Tank
//   Plant.Quiet            object, emits nothing (EventNotifier 0)
//   TankEventType          custom event type (BaseEventType's subtype), property Level (Double)
//
// Every PERIOD_MS (default 1000) the Tank raises a TankEventType event (Severity 300,
// Message "tank event K", Level K) and the HighLevel alarm changes state in turn: active
// (Severity 800, Message "level high K", retained), then inactive (Severity 100, Message
// "level normal K", not retained). Each step prints "EVENT K".
import {
  DataType, OPCUAServer, Variant,
} from "node-opcua";

const [host, portText, periodText] = process.argv.slice(2);
const port = Number(portText);
const period = Number(periodText || 1000);
const server = new OPCUAServer({
  hostname: host, port, resourcePath: "/plant", alternateHostname: [host],
  buildInfo: { productName: "diode node-opcua events plant", buildNumber: "1" },
  serverCertificateManager: undefined, allowAnonymous: true,
});
await server.initialize();
const space = server.engine.addressSpace;
const ns = space.registerNamespace("urn:diode:node-events-plant");
const plant = ns.addFolder(space.rootFolder.objects, { browseName: "Plant", nodeId: "s=Plant" });
const tank = ns.addObject({
  organizedBy: plant, browseName: "Tank", nodeId: "s=Plant.Tank", eventNotifier: 1,
  eventSourceOf: space.rootFolder.objects.server,
});
ns.addObject({ organizedBy: plant, browseName: "Quiet", nodeId: "s=Plant.Quiet", eventNotifier: 0 });
const level = ns.addVariable({
  componentOf: tank, browseName: "Level", nodeId: "s=Plant.Tank.Level", dataType: "Double",
  value: new Variant({ dataType: DataType.Double, value: 0 }),
});
const tankEventType = ns.addEventType({ browseName: "TankEventType", subtypeOf: "BaseEventType" });
ns.addVariable({
  propertyOf: tankEventType, browseName: "Level", dataType: "Double", modellingRule: "Mandatory",
});
const alarm = ns.instantiateAlarmCondition("AlarmConditionType", {
  componentOf: tank, conditionSource: tank, browseName: "HighLevel",
  nodeId: "s=Plant.Tank.HighLevel", inputNode: level, conditionName: "HighLevel",
  optionals: ["ConfirmedState", "Confirm"],
});
alarm.setEnabledState(true);

let k = 0;
function step() {
  k += 1;
  level.setValueFromSource(new Variant({ dataType: DataType.Double, value: k }));
  tank.raiseEvent(tankEventType, {
    message: { dataType: DataType.LocalizedText, value: { text: `tank event ${k}` } },
    severity: { dataType: DataType.UInt16, value: 300 },
    level: { dataType: DataType.Double, value: k },
  });
  if (k % 2 === 1) {
    alarm.activeState.setValue(true);
    alarm.raiseNewCondition({ severity: 800, message: `level high ${k}`, retain: true });
  } else {
    alarm.activeState.setValue(false);
    alarm.raiseNewCondition({ severity: 100, message: `level normal ${k}`, retain: false });
  }
  console.log(`EVENT ${k}`);
}
setInterval(step, period);

await server.start();
console.log(`READY opc.tcp://${host}:${port}/plant`);
for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, async () => {
    await server.shutdown(0);
    process.exit(0);
  });
}
