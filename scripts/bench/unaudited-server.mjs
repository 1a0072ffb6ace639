#!/usr/bin/env node
// The benchmark's "audit off" server: hsmintd's own classes, wired as daemon/main.ts wires
// them, minus the audit log. hsmintd itself has no way to run without its log; this exists
// only so `npm run bench` can show what the log costs, side by side in one run.
import { join } from 'node:path';

const dist = (path) => import(join(import.meta.dirname, '../../dist', path));
const { loadConfig } = await dist('core/config.js');
const { openKeyStore } = await dist('core/open.js');
const { Authority, stateFiles } = await dist('daemon/authority.js');
const { createRoutes } = await dist('daemon/handlers.js');
const { ApiServer } = await dist('daemon/server.js');
const { identifyPeer, currentCaller } = await dist('daemon/peer.js');
const { listenOnPath } = await dist('daemon/socket.js');
const { createLogger } = await dist('daemon/logger.js');

const config = loadConfig(process.argv[2]);
const logger = createLogger(config.log.level);
const { store, token } = await openKeyStore(config);
const authority = await Authority.create({
  config,
  store,
  token,
  logger,
  state: stateFiles(config),
});
const server = new ApiServer(
  createRoutes(authority, { reload: () => Promise.reject(new Error('no reload in the bench')) }),
  logger,
  {
    identify: identifyPeer,
    currentCaller,
    config: () => authority.settings,
    perUid: () => authority.limits,
  },
);
await listenOnPath(server.http, config.socket.path, config.socket.mode, config.socket.group);
process.on('SIGTERM', async () => {
  await server.drain(5000);
  await authority.close();
  process.exit(0);
});
