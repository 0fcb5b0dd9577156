// ProxyContext: what a client session needs from the running proxy (config, credentials, pools, cancel keys),
// built by main.ts; sessions never reach for globals.
import type { Secret } from '../auth/verifiers.ts';
import type { CancelRegistry } from '../cancel/registry.ts';
import type { Config } from '../config/load.ts';
import type { Logger } from '../log/logger.ts';
import type { PoolRegistry } from '../pool/pool.ts';
import type { BackendCredential, ServerConnection, ServerTarget } from '../server/connection.ts';

export interface ProxyContext {
  /** The current config (replaced on reload; a session reads it once at startup). */
  config(): Config;
  log: Logger;
  /** Client-facing secrets: the auth file, then users.<name>.password. */
  secretFor(user: string): Secret | undefined;
  pools: PoolRegistry<ServerConnection>;
  cancels: CancelRegistry;
  connectServer(target: ServerTarget): Promise<ServerConnection>;
  /** Sends a CancelRequest for whatever the server is running now. */
  cancelServer(server: ServerConnection): void;
  /** Credentials learned at login (a verified cleartext password, a recovered SCRAM ClientKey), in memory only. */
  learned: Map<string, BackendCredential>;
  /** Key for deterministic mock SCRAM salts of unknown users. */
  mockKey: Buffer;
  /** Live client sessions, for max_client_conn and shutdown. */
  clientCount(): number;
  /** Pins by reason since start (transaction mode). */
  pins: Map<string, number>;
  /** True while draining for shutdown: new logins are refused. */
  draining(): boolean;
}
