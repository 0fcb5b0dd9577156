// ProxyContext: what a client session needs from the running proxy (config, credentials, pools, cancel keys),
// built by main.ts; sessions never reach for globals.
import type { HbaRule } from '../auth/hba.ts';
import type { LoginLimiter } from '../auth/limits.ts';
import type { Secret } from '../auth/verifiers.ts';
import type { CancelRegistry } from '../cancel/registry.ts';
import type { Config } from '../config/load.ts';
import type { ProxyEvents } from '../events.ts';
import type { Logger } from '../log/logger.ts';
import type { KeyResolvers } from '../net/oidc-keys.ts';
import type { PoolRegistry } from '../pool/pool.ts';
import type { Frame } from '../protocol/framer.ts';
import type { BackendCredential, ServerConnection, ServerTarget } from '../server/connection.ts';
import type { PerUserRoles } from './per-user.ts';

export interface ProxyContext {
  /** The current config (replaced on reload; a session reads it once at startup). */
  config(): Config;
  log: Logger;
  /** Client-facing secrets known without I/O: the auth file, then users.<name>.password. */
  secretFor(user: string): Secret | undefined;
  /** secretFor, then auth_query (cached) for the client's database when configured. */
  lookupSecret(user: string, database: string): Promise<Secret | undefined>;
  /** HBA rules when auth.hba is set. */
  hba(): readonly HbaRule[] | undefined;
  limiter(): LoginLimiter;
  /** Signing keys of SSO providers (discovery + JWKS, cached; fresh after a reload). */
  keys(): KeyResolvers;
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
  /** The audit trail when configured: with on_overflow block, a full queue holds client reads. */
  audit?: { readonly blocking: boolean; full(): boolean; room(): Promise<void> };
  /** SSO per_user backend: the provisioned per-person logins and their passwords. */
  perUser: PerUserRoles;
  /** set_role routes: checks once per database that the service login cannot do more than the mapped roles. */
  checkServiceLogin(database: string): void;
  /** Pins by reason since start (transaction mode). */
  pins: Map<string, number>;
  /** True while draining for shutdown: new logins are refused. */
  draining(): boolean;
  /** Channels the session publishes to (only when subscribed). */
  events: ProxyEvents;
  /** The admin console (src/admin/), serving the virtual database gprxy/pgbouncer. */
  admin: AdminConsoleHook;
}

/** What the session needs from the admin console (implemented by admin/console.ts, wired in main.ts). */
export interface AdminConsoleHook {
  isConsole(database: string): boolean;
  /** Throws 28000 unless the user may use the console. */
  authorize(user: string): void;
  serve(client: {
    readonly id: number;
    readonly user: string;
    send(bytes: Buffer): void;
    next(): Promise<Frame>;
    end(reason: string): void;
  }): Promise<void>;
}
