// An aedes MQTT broker (3.1.1) on HOST:PORT, for the integration tests: an
// implementation other than Mosquitto on either side of the diode.
// Usage: node broker.mjs HOST PORT   (prints "listening" once it accepts connections)
import { createServer } from 'node:net'
import { Aedes } from 'aedes'

const [host, port] = [process.argv[2] || '127.0.0.1', Number(process.argv[3] || 1883)]
const broker = await Aedes.createBroker({ concurrency: 1000, queueLimit: 1000000 })
broker.on('clientError', (client, err) => console.error(`client ${client.id}: ${err.message}`))
const server = createServer(broker.handle)
server.listen(port, host, () => console.error(`aedes ${host}:${port} listening`))
const stop = () => server.close(() => broker.close(() => process.exit(0)))
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
