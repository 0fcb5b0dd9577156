// SSO per_user backend: a LOGIN role per person, created, granted and disabled through the provisioner login; its
// random password kept encrypted (AES-256-GCM, master key) in the state file; grants reconciled on login and reload.
import { randomBytes } from 'node:crypto';
import { readFile, rename, rm, writeFile } from 'node:fs/promises';
import { z } from 'zod';
import { hmacSha256 } from '../auth/crypto.ts';
import { mapIdentity, perUserRoleName } from '../auth/mapping.ts';
import type { Identity } from '../auth/oidc/verify.ts';
import { makeScramVerifier } from '../auth/verifiers.ts';
import { type Config, findDatabase, perUserStateKey } from '../config/load.ts';
import { decryptSecret, encryptSecret } from '../config/secrets.ts';
import type { Logger } from '../log/logger.ts';
import { PgError } from '../protocol/errors.ts';
import {
  type BackendCredential,
  type ServerConnection,
  type ServerTarget,
  serverTarget,
} from '../server/connection.ts';
import { literal } from '../server/sql.ts';

/** What gprxy remembers of the person, to re-map them when the rules change (never the token). */
const claimsSchema = z.object({
  name: z.string(),
  provider: z.string(),
  issuer: z.string(),
  subject: z.string(),
  email: z.string().optional(),
  groups: z.array(z.string()),
  roles: z.array(z.string()),
});
type Claims = z.infer<typeof claimsSchema>;

const recordSchema = z.object({
  identity: z.string(),
  /** `enc:` value (AES-256-GCM under the master key); the plaintext is never written. */
  password: z.string().startsWith('enc:'),
  /** Mapped roles gprxy granted to this login (what it revokes when the mapping changes). */
  granted: z.array(z.string()),
  login: z.boolean(),
  claims: claimsSchema,
  created_at: z.string(),
  updated_at: z.string(),
});
type RoleRecord = z.infer<typeof recordSchema>;

const stateSchema = z.object({ version: z.literal(1), roles: z.record(z.string(), recordSchema) });

interface State {
  path: string;
  roles: Map<string, RoleRecord>;
}

export interface PerUserDeps {
  config(): Config;
  log: Logger;
  /** Dials and logs in (the provisioner login). */
  connect(target: ServerTarget): Promise<ServerConnection>;
}

/** A quoted identifier: any role name is one token of SQL, never spliced as text. */
export function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

const MARKER_PREFIX = 'gprxy sso per_user login; mac=';

/**
 * The COMMENT ON ROLE gprxy puts on the roles it creates: a MAC of the role name under a key derived from the master
 * key, so a role someone else made (even with a look-alike comment) is never taken for one of gprxy's.
 */
export function roleMarker(role: string, masterKey: Buffer): string {
  const k = hmacSha256(masterKey, 'gprxy per_user role marker');
  return MARKER_PREFIX + hmacSha256(k, role).subarray(0, 18).toString('base64url');
}

/** Events and SQLSTATEs whose server message names only roles (safe to log and to show). */
const SAFE_MESSAGES = new Set(['42501', '42704', '42710', '42939', '0LP01']);

function refused(message: string, code: string, hint?: string): PgError {
  return new PgError('FATAL', '28000', message, hint ? { code, hint } : { code });
}

function sameList(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

function claimsOf(id: Identity): Claims {
  const c: Claims = {
    name: id.name,
    provider: id.provider,
    issuer: id.issuer,
    subject: id.subject,
    groups: [...id.groups],
    roles: [...id.roles],
  };
  if (id.email !== undefined) c.email = id.email;
  return c;
}

function identityOf(c: Claims): Identity {
  return {
    name: c.name,
    provider: c.provider,
    issuer: c.issuer,
    subject: c.subject,
    email: c.email,
    groups: [...c.groups],
    roles: [...c.roles],
    expiresAt: 0,
  };
}

function sameClaims(a: Claims, b: Claims): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

function newPassword(): string {
  return randomBytes(24).toString('base64url');
}

async function readState(path: string): Promise<State> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { path, roles: new Map() };
    throw new Error(`cannot read sso.state_file ${path}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new Error(`sso.state_file ${path} is not valid JSON`);
  }
  const parsed = stateSchema.safeParse(raw);
  if (!parsed.success) throw new Error(`sso.state_file ${path} is not a gprxy per_user state file`);
  return { path, roles: new Map(Object.entries(parsed.data.roles)) };
}

/** Written whole to a fresh 0600 file, then renamed over the old one: never half a file, never world-readable. */
async function writeState(st: State): Promise<void> {
  const roles = Object.fromEntries([...st.roles].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
  const text = `${JSON.stringify({ version: 1, roles }, null, 2)}\n`;
  const tmp = `${st.path}.${randomBytes(6).toString('hex')}.tmp`;
  try {
    await writeFile(tmp, text, { mode: 0o600, flag: 'wx' });
    await rename(tmp, st.path);
  } catch (e) {
    await rm(tmp, { force: true }).catch(() => undefined);
    throw e;
  }
}

/**
 * The per_user roles: provisions on login (one operation in flight per identity), reconciles grants with the
 * current mapping, disables logins whose person no longer maps, and answers the password a pool dials with.
 */
export class PerUserRoles {
  private state: Promise<State> | undefined;
  private statePath = '';
  private loaded: State | undefined;
  private readonly locks = new Map<string, Promise<void>>();
  /** Roles checked against PostgreSQL since this process started (a login then needs no provisioner round trip). */
  private readonly verified = new Set<string>();
  /** Roles whose password PostgreSQL refused: the next login sets a new one. */
  private readonly stale = new Set<string>();
  private writes: Promise<void> = Promise.resolve();
  private checkedFor: Config | undefined;

  constructor(private readonly deps: PerUserDeps) {}

  /**
   * The person's own login for this (mapped) role: created on first use, re-enabled, its grant moved to `mapped`
   * when the mapping changed. Refuses (FATAL) a role of that name gprxy did not create.
   */
  async login(identity: Identity, mapped: string, database: string): Promise<string> {
    const cfg = this.deps.config();
    const role = perUserRoleName(identity.name);
    if (role === undefined) {
      throw refused(`identity "${identity.name}" cannot name a database login`, 'GPRXY_SSO_ROLE_NAME');
    }
    this.checkServer(cfg, database);
    return this.serial(role, async () => {
      const st = await this.loadState(cfg);
      const rec = st.roles.get(role);
      if (rec && rec.identity !== identity.name) {
        throw refused(
          `the database login "${role}" belongs to another identity than "${identity.name}"`,
          'GPRXY_SSO_ROLE_TAKEN',
        );
      }
      // The same name from another provider, or another subject of the same provider, is another person: the
      // login stays with whoever it was made for.
      if (rec && (rec.claims.provider !== identity.provider || rec.claims.subject !== identity.subject)) {
        throw refused(
          `the database login "${role}" was made for "${identity.name}" of another identity provider or subject`,
          'GPRXY_SSO_ROLE_TAKEN',
        );
      }
      const claims = claimsOf(identity);
      const key = this.key(cfg);
      if (
        rec?.login &&
        this.verified.has(role) &&
        !this.stale.has(role) &&
        sameList(rec.granted, [mapped]) &&
        this.decrypt(rec, key) !== undefined
      ) {
        if (!sameClaims(rec.claims, claims)) {
          rec.claims = claims;
          rec.updated_at = new Date().toISOString();
          await this.persist(st);
        }
        return role;
      }
      await this.withProvisioner(cfg, identity.name, (conn) =>
        this.ensure(cfg, conn, st, role, identity.name, claims, mapped),
      );
      return role;
    });
  }

  /** A person who maps to no rule: gprxy revokes what it granted their login and makes it NOLOGIN (once). */
  async unmapped(identity: Identity): Promise<void> {
    const cfg = this.deps.config();
    const role = perUserRoleName(identity.name);
    if (role === undefined) return;
    await this.serial(role, async () => {
      const st = await this.loadState(cfg);
      const rec = st.roles.get(role);
      if (!rec || rec.identity !== identity.name || (!rec.login && rec.granted.length === 0)) return;
      rec.claims = claimsOf(identity);
      await this.withProvisioner(cfg, identity.name, (conn) =>
        this.disable(cfg, conn, st, role, rec, 'no_mapping'),
      );
    }).catch((e: unknown) => {
      this.deps.log.warn(
        { event: 'sso_per_user_disable_failed', identity: identity.name, role, reason: (e as Error).message },
        'could not disable the per_user login of a person who no longer maps',
      );
    });
  }

  /**
   * At start and after a reload: re-maps every enabled login from its last-known claims; a changed mapping moves
   * the grant, no mapping disables the login. Also checks the provisioner once per config (warnings). Never throws.
   */
  async reconcile(reason: 'start' | 'reload'): Promise<void> {
    const cfg = this.deps.config();
    if (cfg.sso.backend !== 'per_user') return;
    const log = this.deps.log;
    try {
      const st = await this.loadState(cfg);
      const work = [...st.roles].filter(([, rec]) => {
        if (!rec.login && rec.granted.length === 0) return false;
        const m = mapIdentity(cfg.sso.mapping, identityOf(rec.claims));
        return m === undefined || !sameList(rec.granted, [m.role]);
      });
      await this.withProvisioner(cfg, undefined, async (conn) => {
        for (const [role] of work) {
          await this.serial(role, async () => {
            // The config of now, not of the reconcile's start: a later reload's reconcile may have run already.
            const current = this.deps.config();
            const rec = st.roles.get(role);
            if (current.sso.backend !== 'per_user' || !rec || (!rec.login && rec.granted.length === 0))
              return;
            const m = mapIdentity(current.sso.mapping, identityOf(rec.claims));
            if (m === undefined) await this.disable(current, conn, st, role, rec, reason);
            else if (!sameList(rec.granted, [m.role]))
              await this.ensure(current, conn, st, role, rec.identity, rec.claims, m.role);
          }).catch((e: unknown) =>
            log.warn(
              {
                event: 'sso_per_user_reconcile_failed',
                identity: st.roles.get(role)?.identity,
                role,
                reason: (e as Error).message,
              },
              'could not reconcile a per_user login with the mapping',
            ),
          );
        }
      });
    } catch (e) {
      log.warn(
        { event: 'sso_per_user_reconcile_failed', reason: (e as Error).message },
        'could not reconcile per_user logins with the mapping',
      );
    }
  }

  /** The password a pool of this per_user login dials with (decrypted on demand), if gprxy knows it. */
  credential(role: string): BackendCredential | undefined {
    const rec = this.loaded?.roles.get(role);
    if (!rec) return undefined;
    const password = this.decrypt(rec, perUserStateKey(this.deps.config()));
    return password === undefined ? undefined : { kind: 'password', password };
  }

  /** PostgreSQL refused this login's password: the next login of the person checks the role and sets a new one. */
  forget(role: string): void {
    this.verified.delete(role);
    this.stale.add(role);
  }

  // ---- provisioning ------------------------------------------------------------------------------------------

  /** Creates or adopts the role, sets LOGIN, a password when gprxy has none, and moves the grant to `mapped`. */
  private async ensure(
    cfg: Config,
    conn: ServerConnection,
    st: State,
    role: string,
    identity: string,
    claims: Claims,
    mapped: string,
  ): Promise<void> {
    const key = this.key(cfg);
    const marker = roleMarker(role, key);
    const existing = await this.roleRow(conn, role, identity);
    const rec = st.roles.get(role);
    const r = quoteIdent(role);
    const stmts: string[] = [];
    let password: string | undefined;
    if (!existing) {
      password = newPassword();
      stmts.push(
        `CREATE ROLE ${r} LOGIN PASSWORD ${literal(await makeScramVerifier(password))}`,
        `COMMENT ON ROLE ${r} IS ${literal(marker)}`,
      );
    } else {
      if (existing.comment !== marker) {
        throw refused(
          `the database role "${role}" exists and was not created by gprxy: it is not used for identity "${identity}"`,
          'GPRXY_SSO_ROLE_NOT_OURS',
          'an administrator can rename or drop that role; gprxy then creates its own on the next login',
        );
      }
      if (!rec || this.stale.has(role) || this.decrypt(rec, key) === undefined) {
        password = newPassword();
        stmts.push(`ALTER ROLE ${r} PASSWORD ${literal(await makeScramVerifier(password))}`);
      }
      if (!existing.canLogin) stmts.push(`ALTER ROLE ${r} LOGIN`);
      const members = await this.memberships(conn, role, identity);
      for (const g of rec?.granted ?? []) {
        if (g !== mapped && members.has(g)) stmts.push(`REVOKE ${quoteIdent(g)} FROM ${r}`);
      }
    }
    stmts.push(`GRANT ${quoteIdent(mapped)} TO ${r}`);
    // One simple Query: one implicit transaction, so the role never exists without its marker or its grant.
    const err = await conn.query(stmts.join(';\n'));
    if (err) throw this.provisionError(err, identity, role);

    const now = new Date().toISOString();
    const previous = rec?.granted ?? [];
    st.roles.set(role, {
      identity,
      password: password !== undefined ? encryptSecret(password, key) : rec!.password,
      granted: [mapped],
      login: true,
      claims,
      created_at: rec?.created_at ?? now,
      updated_at: now,
    });
    this.verified.add(role);
    this.stale.delete(role);
    const log = this.deps.log;
    if (!existing) {
      log.info({ event: 'sso_per_user_created', identity, role, granted: mapped }, 'per_user login created');
    } else {
      if (!rec) {
        log.warn(
          { event: 'sso_per_user_adopted', identity, role, granted: mapped },
          'per_user login created by gprxy but missing from the state file: new password set',
        );
      } else if (previous.length > 0 && !sameList(previous, [mapped])) {
        log.info(
          { event: 'sso_per_user_grant_moved', identity, role, from: previous, to: mapped },
          'per_user login: grant moved to the newly mapped role',
        );
      }
      if (!existing.canLogin) {
        log.info({ event: 'sso_per_user_enabled', identity, role }, 'per_user login enabled again');
      }
    }
    await this.persist(st);
  }

  /** Revokes the grants gprxy made and sets NOLOGIN; sessions already running are left alone. */
  private async disable(
    cfg: Config,
    conn: ServerConnection,
    st: State,
    role: string,
    rec: RoleRecord,
    reason: string,
  ): Promise<void> {
    const existing = await this.roleRow(conn, role, rec.identity);
    const r = quoteIdent(role);
    if (existing) {
      if (existing.comment !== roleMarker(role, this.key(cfg))) {
        this.deps.log.warn(
          { event: 'sso_per_user_not_ours', identity: rec.identity, role },
          'a role of that name exists but was not created by gprxy: left untouched',
        );
        return;
      }
      const members = await this.memberships(conn, role, rec.identity);
      const stmts = rec.granted.filter((g) => members.has(g)).map((g) => `REVOKE ${quoteIdent(g)} FROM ${r}`);
      stmts.push(`ALTER ROLE ${r} NOLOGIN`);
      const err = await conn.query(stmts.join(';\n'));
      if (err) throw this.provisionError(err, rec.identity, role);
    }
    rec.login = false;
    rec.granted = [];
    rec.updated_at = new Date().toISOString();
    this.verified.delete(role);
    this.deps.log.info(
      { event: 'sso_per_user_disabled', identity: rec.identity, role, reason },
      'per_user login disabled: the person no longer maps to a role',
    );
    await this.persist(st);
  }

  private async roleRow(
    conn: ServerConnection,
    role: string,
    identity: string,
  ): Promise<{ canLogin: boolean; comment: string } | undefined> {
    const r = await conn.queryRows(
      "SELECT rolcanlogin::text, coalesce(shobj_description(oid, 'pg_authid'), '') FROM pg_roles WHERE rolname = $1",
      [role],
    );
    if (r instanceof PgError) throw this.provisionError(r, identity, role);
    const row = r.rows[0];
    return row ? { canLogin: row[0] === 'true', comment: row[1] ?? '' } : undefined;
  }

  /** The roles this login is a member of right now (whoever granted them). */
  private async memberships(conn: ServerConnection, role: string, identity: string): Promise<Set<string>> {
    const r = await conn.queryRows(
      'SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = $1',
      [role],
    );
    if (r instanceof PgError) throw this.provisionError(r, identity, role);
    return new Set(r.rows.map((row) => row[0] ?? ''));
  }

  /** A server error while provisioning, as the client's FATAL (the server's wording only where it names roles). */
  private provisionError(err: PgError, identity: string, role: string): PgError {
    const safe = SAFE_MESSAGES.has(err.sqlState);
    this.deps.log.warn(
      {
        event: 'sso_per_user_provision_failed',
        identity,
        role,
        sqlstate: err.sqlState,
        ...(safe ? { reason: err.message } : {}),
      },
      'per_user provisioning failed',
    );
    const what = `cannot set up the database login for identity "${identity}"`;
    if (err.sqlState === '42501') {
      return new PgError('FATAL', '28000', `${what}: the provisioner login may not create or grant roles`, {
        code: 'GPRXY_SSO_PROVISIONER_PRIVILEGE',
        detail: err.message,
        hint: 'give sso.provisioner.user CREATEROLE, and ADMIN OPTION on the mapped roles (PostgreSQL 16 and later)',
      });
    }
    return new PgError('FATAL', '28000', safe ? `${what}: ${err.message}` : what, {
      code: 'GPRXY_SSO_PROVISION',
    });
  }

  /** Runs fn on a fresh connection of the provisioner login (closed afterwards); 08006 when it cannot log in. */
  private async withProvisioner<T>(
    cfg: Config,
    identity: string | undefined,
    fn: (conn: ServerConnection) => Promise<T>,
  ): Promise<T> {
    const p = cfg.sso.provisioner!;
    const db = findDatabase(cfg, p.database)!;
    const password = cfg.users[p.user]?.password;
    let conn: ServerConnection;
    try {
      conn = await this.deps.connect(
        serverTarget(
          cfg,
          p.database,
          db,
          p.user,
          password === undefined ? undefined : { kind: 'password', password },
        ),
      );
    } catch (e) {
      this.deps.log.warn(
        {
          event: 'sso_provisioner_unavailable',
          user: p.user,
          db: p.database,
          sqlstate: e instanceof PgError ? e.sqlState : undefined,
          reason: (e as Error).message,
        },
        'the per_user provisioner login could not connect',
      );
      throw new PgError(
        'FATAL',
        '08006',
        identity === undefined
          ? 'the per_user provisioner login could not connect'
          : `cannot set up the database login for identity "${identity}": gprxy's provisioner login could not connect`,
        {
          code: 'GPRXY_SSO_PROVISIONER_DOWN',
          hint: 'try again later (gprxy logs sso_provisioner_unavailable)',
        },
      );
    }
    try {
      if (this.checkedFor !== cfg) {
        this.checkedFor = cfg;
        await this.checkProvisioner(conn, p.user);
      }
      return await fn(conn);
    } finally {
      conn.close('per_user provisioning done');
    }
  }

  /** Once per config: warn when the provisioner is a superuser, or cannot create roles at all. */
  private async checkProvisioner(conn: ServerConnection, user: string): Promise<void> {
    const r = await conn.queryRows(
      'SELECT rolsuper::text, rolcreaterole::text FROM pg_roles WHERE rolname = current_user',
      [],
    );
    const row = r instanceof PgError ? undefined : r.rows[0];
    if (!row) return;
    if (row[0] === 'true') {
      this.deps.log.warn(
        { event: 'sso_provisioner_too_strong', user },
        'sso.provisioner.user is a superuser: give it CREATEROLE (and ADMIN OPTION on the mapped roles) instead',
      );
    } else if (row[1] !== 'true') {
      this.deps.log.warn(
        { event: 'sso_provisioner_cannot_create_roles', user },
        'sso.provisioner.user lacks CREATEROLE: per_user logins cannot be created',
      );
    }
  }

  /** per_user logins exist on the provisioner's server only: a database entry elsewhere is refused clearly. */
  private checkServer(cfg: Config, database: string): void {
    const d = findDatabase(cfg, database);
    const pd = findDatabase(cfg, cfg.sso.provisioner!.database);
    if (d && pd && (d.host !== pd.host || d.port !== pd.port)) {
      throw refused(
        `database "${database}" is on another server than sso.provisioner.database: per_user logins exist only there`,
        'GPRXY_SSO_PER_USER_SERVER',
      );
    }
  }

  // ---- state -------------------------------------------------------------------------------------------------

  private key(cfg: Config): Buffer {
    const key = perUserStateKey(cfg);
    if (!key) throw PgError.internal('GPRXY_SSO_NO_MASTER_KEY');
    return key;
  }

  private decrypt(rec: RoleRecord, key: Buffer | undefined): string | undefined {
    if (!key) return undefined;
    try {
      return decryptSecret(rec.password, key);
    } catch {
      return undefined;
    }
  }

  private loadState(cfg: Config): Promise<State> {
    const path = cfg.sso.state_file!;
    if (this.statePath !== path) {
      // A reload that moves the state file: read the new one.
      this.statePath = path;
      this.state = undefined;
      this.loaded = undefined;
    }
    if (!this.state) {
      const p = readState(path).then((st) => {
        if (this.statePath === path) this.loaded = st;
        return st;
      });
      this.state = p;
      p.catch((e: unknown) => {
        if (this.state === p) this.state = undefined;
        this.deps.log.error(
          { event: 'sso_state_unreadable', reason: (e as Error).message },
          'per_user state',
        );
      });
    }
    return this.state.catch(() => {
      throw new PgError('FATAL', '08006', 'gprxy cannot read its per_user state file', {
        code: 'GPRXY_SSO_STATE',
      });
    });
  }

  /** Saves the state (writes in order); a failed write is logged, the in-memory state still serves. */
  private async persist(st: State): Promise<void> {
    const run = this.writes.then(() => writeState(st));
    this.writes = run.catch(() => undefined);
    await run.catch((e: unknown) =>
      this.deps.log.error(
        {
          event: 'sso_state_write_failed',
          reason: (e as NodeJS.ErrnoException).code ?? (e as Error).message,
        },
        'could not write sso.state_file',
      ),
    );
  }

  /** One operation at a time per role (so per identity): concurrent first logins provision once. */
  private serial<T>(role: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.locks.get(role) ?? Promise.resolve();
    const run = prev.then(fn);
    const tail = run.then(
      () => undefined,
      () => undefined,
    );
    this.locks.set(role, tail);
    void tail.then(() => {
      if (this.locks.get(role) === tail) this.locks.delete(role);
    });
    return run;
  }
}
