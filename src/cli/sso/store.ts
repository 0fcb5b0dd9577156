// The CLI's files under ~/.gprxy (or $GPRXY_HOME): `config` holds profiles (JSON or YAML: issuer, client id,
// audience, where the proxy is), `credentials` holds tokens per profile, mode 0600, written atomically.
// A lock file keeps two processes from spending the same (rotating) refresh token.
import { randomBytes } from 'node:crypto';
import {
  chmodSync,
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  statSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { parse, stringify } from 'yaml';

export interface Profile {
  issuer: string;
  client_id: string;
  /** The API the token is for: `aud` (Auth0 `audience`, RFC 8707 `resource` when it is a URI, Azure `<api>/.default`). */
  audience?: string;
  /** Scopes added to `openid email offline_access`. */
  scope?: string;
  /** The claim naming the person (default: email, then preferred_username, upn, sub). */
  identity_claim?: string;
  /** Where gprxy listens (psql, connect, tunnel). */
  host?: string;
  port?: number;
  /** libpq sslmode toward gprxy; default verify-full, `prefer` for a loopback gprxy. */
  sslmode?: 'disable' | 'prefer' | 'require' | 'verify-ca' | 'verify-full';
  sslrootcert?: string;
  database?: string;
}

export interface ProfilesFile {
  default_profile?: string;
  profiles: Record<string, Profile>;
}

export interface Credential {
  issuer: string;
  client_id: string;
  access_token: string;
  /** Seconds since the epoch. */
  expires_at: number;
  obtained_at: number;
  refresh_token?: string;
  id_token?: string;
  scope?: string;
  /** The person, read from the tokens' claims at login. */
  identity?: string;
}

interface CredentialsFile {
  version: 1;
  profiles: Record<string, Credential>;
}

export class Store {
  readonly home: string;

  constructor(home: string) {
    this.home = home;
  }

  static fromEnv(env: NodeJS.ProcessEnv): Store {
    return new Store(env.GPRXY_HOME || join(homedir(), '.gprxy'));
  }

  get configPath(): string {
    return join(this.home, 'config');
  }

  get credentialsPath(): string {
    return join(this.home, 'credentials');
  }

  private ensureHome(): void {
    mkdirSync(this.home, { recursive: true, mode: 0o700 });
  }

  readProfiles(): ProfilesFile {
    if (!existsSync(this.configPath)) return { profiles: {} };
    const raw = parse(readFileSync(this.configPath, 'utf8')) as Partial<ProfilesFile> | null;
    return { ...raw, profiles: raw?.profiles ?? {} };
  }

  profileName(requested: string | undefined): string {
    return requested || this.readProfiles().default_profile || 'default';
  }

  profile(name: string): Profile | undefined {
    return this.readProfiles().profiles[name];
  }

  saveProfile(name: string, profile: Profile): void {
    const file = this.readProfiles();
    file.profiles[name] = { ...file.profiles[name], ...profile };
    file.default_profile ??= name;
    this.ensureHome();
    // YAML is a superset of JSON: a hand-written JSON config stays readable, and is rewritten as YAML.
    atomicWrite(this.configPath, stringify(file));
  }

  private readCredentials(): CredentialsFile {
    if (!existsSync(this.credentialsPath)) return { version: 1, profiles: {} };
    // A file others can read is tightened before anything is taken from it.
    if ((statSync(this.credentialsPath).mode & 0o077) !== 0) chmodSync(this.credentialsPath, 0o600);
    const raw = JSON.parse(readFileSync(this.credentialsPath, 'utf8')) as Partial<CredentialsFile>;
    return { version: 1, profiles: raw.profiles ?? {} };
  }

  credential(profile: string): Credential | undefined {
    return this.readCredentials().profiles[profile];
  }

  saveCredential(profile: string, cred: Credential | undefined): void {
    const file = this.readCredentials();
    if (cred) file.profiles[profile] = cred;
    else delete file.profiles[profile];
    this.ensureHome();
    atomicWrite(this.credentialsPath, `${JSON.stringify(file, null, 2)}\n`);
  }

  /** Runs `fn` holding the credentials lock (another gprxy process refreshing waits; a stale lock is taken over). */
  async withLock<T>(fn: () => Promise<T>, timeoutMs = 30_000): Promise<T> {
    this.ensureHome();
    const lock = `${this.credentialsPath}.lock`;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        closeSync(openSync(lock, 'wx', 0o600));
        break;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
        let age = 0;
        try {
          age = Date.now() - statSync(lock).mtimeMs;
        } catch {
          continue;
        }
        if (age > timeoutMs || Date.now() > deadline) {
          try {
            unlinkSync(lock);
          } catch {
            // another waiter took it over first
          }
          continue;
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    try {
      return await fn();
    } finally {
      try {
        unlinkSync(lock);
      } catch {
        // already gone
      }
    }
  }
}

/** Writes a file with mode 0600 via a temporary file and rename, so a reader never sees half a file. */
function atomicWrite(path: string, content: string): void {
  const tmp = `${path}.${randomBytes(4).toString('hex')}.tmp`;
  writeFileSync(tmp, content, { mode: 0o600 });
  chmodSync(tmp, 0o600);
  renameSync(tmp, path);
}
