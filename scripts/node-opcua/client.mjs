// An OPC UA client that is not asyncua (node-opcua), for tests: runs a list of operations
// against one server and prints their results as one JSON array on stdout.
//
//   node client.mjs ENDPOINT 'OPS-JSON'
//
// OPS-JSON is a list of operations, each one object:
//   {"op": "read", "nodeId": "ns=2;s=X", "attribute": "Value", "indexRange": "2:4"}
//        -> a DataValue (both timestamps asked for)
//   {"op": "history", "nodeId": ..., "start": ISO|null, "end": ISO|null, "numValues": 0,
//    "indexRange": null, "follow": true,
//    "aggregate": null | "Average" | "Count" | ..., "interval": ms}
//        -> {status, values: [DataValue...], calls} (follow: continuation points followed)
//   {"op": "write", "items": [{"nodeId", "dataType": "Double", "value": 2.5}, ...]}
//        -> [status name per item]
//   {"op": "call", "items": [{"objectId", "methodId"}, ...]} -> [status name per item]
//   {"op": "subscribe", "nodeId", "indexRange", "seconds": 2} -> {status, values: [...]}
//   {"op": "subscribe", "nodeIds": [...], "seconds": 2} -> [{nodeId, status, values}, ...]
//        (one subscription, a monitored item per node, held for the whole time)
//   {"op": "events", "nodeId", "fields": ["EventType", "ActiveState.Id", "ConditionId", ...],
//    "seconds": 2, "refresh": false}
//        -> {status, events: [{field: value, ...}]} (an event item on nodeId, no where
//           clause; "refresh": ConditionRefresh once the item is created, and its status
//           in refreshStatus; node ids as strings)
//
// A DataValue is {status, value, sourceTicks, serverTicks} with values as JSON (typed
// arrays as lists) and the timestamps as OPC UA ticks (100 ns since 1601, decimal strings;
// null when absent), from the Date and its picoseconds, so no digit is lost.
import {
  AttributeIds, ClientMonitoredItem, ClientSubscription, DataType, HistoryReadRequest,
  constructEventFilter,
  MessageSecurityMode,
  OPCUAClient, ReadProcessedDetails, ReadRawModifiedDetails, SecurityPolicy, StatusCodes,
  TimestampsToReturn, resolveNodeId,
} from "node-opcua";

const AGGREGATES = { Count: 2352, Minimum: 2346, Maximum: 2347, Average: 2342, Start: 2357, End: 2358 };
const EPOCH_MS = 11644473600000n; // 1601-01-01 to 1970-01-01

function ticks(date, picoseconds) {
  if (!date) return null;
  const ms = BigInt(date.getTime());
  if (ms + EPOCH_MS <= 0n) return "0";
  return ((ms + EPOCH_MS) * 10000n + BigInt(Math.floor((picoseconds || 0) / 100000))).toString();
}

function plain(v) {
  if (v === null || v === undefined) return null;
  if (typeof v === "bigint") return v.toString();
  if (ArrayBuffer.isView(v) && !(v instanceof DataView)) return Array.from(v, plain);
  if (Array.isArray(v)) return v.map(plain);
  if (v instanceof Date) return v.toISOString();
  if (Buffer.isBuffer(v)) return v.toString("base64");
  if (typeof v === "object" && "text" in v) return v.text;
  if (typeof v === "object" && "identifierType" in v && typeof v.toString === "function") {
    return v.toString();  // a NodeId
  }
  if (typeof v === "object") return JSON.parse(JSON.stringify(v));
  return v;
}

function dataValue(dv) {
  return {
    status: dv.statusCode.name,
    value: dv.value ? plain(dv.value.value) : null,
    sourceTicks: ticks(dv.sourceTimestamp, dv.sourcePicoseconds),
    serverTicks: ticks(dv.serverTimestamp, dv.serverPicoseconds),
  };
}

const when = (iso) => (iso ? new Date(iso) : null);

async function history(session, op) {
  let details;
  if (op.aggregate) {
    details = new ReadProcessedDetails({
      startTime: when(op.start), endTime: when(op.end), processingInterval: op.interval || 0,
      aggregateType: [resolveNodeId(`i=${AGGREGATES[op.aggregate] ?? op.aggregate}`)],
    });
  } else {
    details = new ReadRawModifiedDetails({
      isReadModified: false, startTime: when(op.start), endTime: when(op.end),
      numValuesPerNode: op.numValues || 0, returnBounds: false,
    });
  }
  const values = [];
  let continuationPoint = null;
  let calls = 0;
  let status = null;
  do {
    const response = await session.historyRead(new HistoryReadRequest({
      nodesToRead: [{ nodeId: resolveNodeId(op.nodeId), indexRange: op.indexRange || null,
        continuationPoint }],
      historyReadDetails: details, timestampsToReturn: TimestampsToReturn.Both,
      releaseContinuationPoints: false,
    }));
    calls += 1;
    const result = response.results[0];
    status = result.statusCode.name;
    for (const dv of result.historyData?.dataValues ?? []) values.push(dataValue(dv));
    continuationPoint = result.continuationPoint && result.continuationPoint.length
      ? result.continuationPoint : null;
  } while (op.follow && continuationPoint && calls < 1000);
  return { status, values, calls, more: continuationPoint !== null };
}

async function subscribe(session, op) {
  const sub = ClientSubscription.create(session, {
    requestedPublishingInterval: 100, requestedLifetimeCount: 1000,
    requestedMaxKeepAliveCount: 10, maxNotificationsPerPublish: 0, publishingEnabled: true,
    priority: 1,
  });
  const items = (op.nodeIds || [op.nodeId]).map((nodeId) => {
    const seen = { nodeId, status: "Good", values: [] };
    const item = ClientMonitoredItem.create(sub,
      { nodeId: resolveNodeId(nodeId), attributeId: AttributeIds.Value,
        indexRange: op.indexRange || null },
      { samplingInterval: 100, queueSize: 100, discardOldest: true }, TimestampsToReturn.Both);
    item.on("changed", (dv) => seen.values.push(dataValue(dv)));
    item.on("err", (message) => { seen.status = String(message); });
    return seen;
  });
  await new Promise((resolve) => setTimeout(resolve, (op.seconds || 2) * 1000));
  await sub.terminate();
  if (op.nodeIds) return items;
  return { status: items[0].status, values: items[0].values };
}

async function events(session, op) {
  const sub = ClientSubscription.create(session, {
    requestedPublishingInterval: 100, requestedLifetimeCount: 1000,
    requestedMaxKeepAliveCount: 10, maxNotificationsPerPublish: 0, publishingEnabled: true,
    priority: 1,
  });
  await new Promise((resolve) => sub.on("started", resolve));
  const got = [];
  const item = ClientMonitoredItem.create(sub,
    { nodeId: resolveNodeId(op.nodeId), attributeId: AttributeIds.EventNotifier },
    { samplingInterval: 0, queueSize: 1000, discardOldest: true,
      filter: constructEventFilter(op.fields) }, TimestampsToReturn.Neither);
  let status = "Good";
  item.on("changed", (fields) => {
    const ev = {};
    op.fields.forEach((name, i) => { ev[name] = fields[i] ? plain(fields[i].value) : null; });
    got.push(ev);
  });
  item.on("err", (message) => { status = String(message); });
  await new Promise((resolve) => { item.on("initialized", resolve); item.on("err", resolve); });
  let refreshStatus = null;
  if (op.refresh && status === "Good") {
    const result = await session.call({
      objectId: resolveNodeId("i=2782"), methodId: resolveNodeId("i=3875"),
      inputArguments: [{ dataType: DataType.UInt32, value: sub.subscriptionId }],
    });
    refreshStatus = result.statusCode.name;
  }
  await new Promise((resolve) => setTimeout(resolve, (op.seconds || 2) * 1000));
  await sub.terminate();
  return { status, refreshStatus, events: got };
}

async function run(session, op) {
  switch (op.op) {
    case "read": {
      const [dv] = await session.read([{
        nodeId: resolveNodeId(op.nodeId), attributeId: AttributeIds[op.attribute || "Value"],
        indexRange: op.indexRange || null,
      }]);  // node-opcua asks for both timestamps
      return dataValue(dv);
    }
    case "history":
      return history(session, op);
    case "write": {
      const codes = await session.write(op.items.map((w) => ({
        nodeId: resolveNodeId(w.nodeId), attributeId: AttributeIds.Value,
        value: { value: { dataType: DataType[w.dataType], value: w.value } },
      })));
      return codes.map((c) => c.name);
    }
    case "call": {
      const results = await session.call(op.items.map((c) => ({
        objectId: resolveNodeId(c.objectId), methodId: resolveNodeId(c.methodId),
        inputArguments: [],
      })));
      return results.map((r) => r.statusCode.name);
    }
    case "subscribe":
      return subscribe(session, op);
    case "events":
      return events(session, op);
    default:
      throw new Error(`unknown op ${op.op}`);
  }
}

const [endpoint, opsText] = process.argv.slice(2);
const client = OPCUAClient.create({
  endpointMustExist: false, securityMode: MessageSecurityMode.None,
  securityPolicy: SecurityPolicy.None, connectionStrategy: { maxRetry: 2, initialDelay: 200 },
  requestedSessionTimeout: 60000,
});
const out = [];
let code = 0;
try {
  await client.connect(endpoint);
  const session = await client.createSession();
  for (const op of JSON.parse(opsText)) {
    try {
      out.push(await run(session, op));
    } catch (err) {  // a service-level refusal: what the client saw, as a result
      out.push({ error: err.message, status: err.response?.responseHeader?.serviceResult?.name
        ?? StatusCodes.Bad.name });
    }
  }
  await session.close();
} catch (err) {
  console.error(`client: ${err.stack || err}`);
  code = 2;
} finally {
  await client.disconnect();
}
// Exit only once stdout is written: to a pipe it is asynchronous, and an exit right
// after a large write would cut it (at 64 KiB).
process.stdout.write(`${JSON.stringify(out)}\n`, () => process.exit(code));
