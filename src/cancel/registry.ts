// Proxy-issued BackendKeyData: maps the (pid, secret) a client holds to the session that issued it.
import { randomBytes, timingSafeEqual } from 'node:crypto';

/** What a session exposes to cancel routing: it forwards the cancel to whatever server it uses right now. */
export interface Cancellable {
  cancel(): void;
}

export interface IssuedKey {
  pid: number;
  secret: Buffer;
}

export class CancelRegistry {
  private readonly byPid = new Map<number, { secret: Buffer; target: Cancellable }[]>();
  private nextPid = 1;

  /**
   * Issues a key. Session mode passes the attached server's real pid so PQbackendPID() agrees with
   * pg_backend_pid(); the secret is always ours and random.
   */
  issue(target: Cancellable, pid?: number): IssuedKey {
    const key = { pid: pid ?? this.ownPid(), secret: randomBytes(4) };
    const list = this.byPid.get(key.pid);
    const entry = { secret: key.secret, target };
    if (list) list.push(entry);
    else this.byPid.set(key.pid, [entry]);
    return key;
  }

  revoke(key: IssuedKey): void {
    const list = this.byPid.get(key.pid);
    if (!list) return;
    const i = list.findIndex((e) => e.secret === key.secret);
    if (i >= 0) list.splice(i, 1);
    if (list.length === 0) this.byPid.delete(key.pid);
  }

  /** Routes a CancelRequest; unknown keys are ignored, as PostgreSQL does. Returns whether it matched. */
  cancel(pid: number, secret: Buffer): boolean {
    const list = this.byPid.get(pid);
    if (!list) return false;
    for (const e of list) {
      if (e.secret.length === secret.length && timingSafeEqual(e.secret, secret)) {
        e.target.cancel();
        return true;
      }
    }
    return false;
  }

  get size(): number {
    let n = 0;
    for (const l of this.byPid.values()) n += l.length;
    return n;
  }

  private ownPid(): number {
    // Positive int32 range; wraps. Collisions are harmless: keys are matched on pid and secret.
    const pid = this.nextPid;
    this.nextPid = this.nextPid >= 0x7ffffffe ? 1 : this.nextPid + 1;
    return pid;
  }
}
