// Start kinesalite bound to 127.0.0.1 (its own CLI listens on all interfaces).
// Usage: NODE_PATH=<dir holding node_modules/kinesalite> node kinesalite-loopback.js PORT
// Env: KINESALITE_DELAY_MS (CREATING/DELETING/UPDATING time, default 0),
//      KINESALITE_SHARD_LIMIT (default 500).
'use strict'
const kinesalite = require('kinesalite')

const port = Number(process.argv[2] || 4568)
const delay = Number(process.env.KINESALITE_DELAY_MS || 0)
const shardLimit = Number(process.env.KINESALITE_SHARD_LIMIT || 500)

const server = kinesalite({
  createStreamMs: delay,
  deleteStreamMs: delay,
  updateStreamMs: delay,
  shardLimit,
}).listen(port, '127.0.0.1', () => {
  const a = server.address()
  console.log('kinesalite listening at http://%s:%s', a.address, a.port)
})
process.on('SIGTERM', () => server.close(() => process.exit(0)))
process.on('SIGINT', () => server.close(() => process.exit(0)))
