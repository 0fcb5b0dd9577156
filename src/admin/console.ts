// The SQL admin console: the virtual database `gprxy` (alias `pgbouncer`), reachable through the normal listener
// once a client has authenticated like any other. Simple query protocol only; admin_users run every command,
// stats_users SHOW only; anyone else gets 28000.
import type { Config } from '../config/load.ts';
import {
  encodeBackendKeyData,
  encodeError,
  encodeNotice,
  encodeParameterStatus,
  encodeReadyForQuery,
} from '../protocol/backend.ts';
import { PgError, toPgError } from '../protocol/errors.ts';
import type { Frame } from '../protocol/framer.ts';
import { F } from '../protocol/frontend.ts';
import { BodyReader } from '../protocol/wire.ts';
import { type CommandResult, GPRXY_VERSION, runCommand } from './commands.ts';
import type { AdminControl, AdminView } from './view.ts';
import { encodeCommandComplete, encodeDataRow, encodeRowDescription } from './wire.ts';

export const ADMIN_DATABASES: readonly string[] = ['gprxy', 'pgbouncer'];

/** The client side of a console connection; the session owns the socket. */
export interface ConsoleClient {
  readonly id: number;
  readonly user: string;
  send(bytes: Buffer): void;
  /** The client's next message; rejects when it goes away. */
  next(): Promise<Frame>;
  end(reason: string): void;
}

const EMPTY_QUERY = Buffer.from([0x49, 0, 0, 0, 4]);

export class AdminConsole {
  constructor(
    private readonly config: () => Config,
    private readonly view: AdminView,
    private readonly control: AdminControl,
  ) {}

  isConsole(database: string): boolean {
    return ADMIN_DATABASES.includes(database);
  }

  /** Throws 28000 unless the user is an admin or stats user (checked after authentication). */
  authorize(user: string): void {
    const a = this.config().admin;
    if (!a.users.includes(user) && !a.stats_users.includes(user)) {
      throw PgError.notAllowed(`not allowed to use the admin console: ${user}`, 'GPRXY_ADMIN_NOT_ALLOWED');
    }
  }

  /** Serves one authenticated console client until it leaves. */
  async serve(client: ConsoleClient): Promise<void> {
    this.authorize(client.user);
    const out: Buffer[] = [];
    for (const [k, v] of [
      ['server_version', `16.0 (gprxy ${GPRXY_VERSION})`],
      ['server_encoding', 'UTF8'],
      ['client_encoding', 'UTF8'],
      ['DateStyle', 'ISO, MDY'],
      ['TimeZone', 'UTC'],
      ['integer_datetimes', 'on'],
      ['standard_conforming_strings', 'on'],
      ['application_name', ''],
    ] as const) {
      out.push(encodeParameterStatus(k, v));
    }
    out.push(encodeBackendKeyData(0, Buffer.alloc(4)), encodeReadyForQuery('I'));
    client.send(Buffer.concat(out));

    const abort = new AbortController();
    let inError = false; // extended protocol: refused once, then skipped to its Sync
    try {
      for (;;) {
        const f = await client.next();
        if (f.type === F.Terminate) return client.end('client sent Terminate');
        if (f.type === F.Query) {
          client.send(await this.query(new BodyReader(f.body).cstring(), client.user, abort.signal));
          continue;
        }
        if (f.type === F.Sync) {
          inError = false;
          client.send(encodeReadyForQuery('I'));
          continue;
        }
        if (!inError) {
          inError = true;
          client.send(
            encodeError(
              new PgError('ERROR', '08P01', 'the admin console supports only the simple query protocol', {
                code: 'GPRXY_ADMIN_EXTENDED',
              }),
            ),
          );
        }
      }
    } catch (e) {
      // The client went away (or sent garbage): the session has already ended or fails with this error.
      const err = toPgError(e);
      if (err.code !== 'GPRXY_CLIENT_GONE') throw err;
    } finally {
      abort.abort();
    }
  }

  private async query(sql: string, user: string, signal: AbortSignal): Promise<Buffer> {
    if (sql.trim() === '' || sql.trim() === ';')
      return Buffer.concat([EMPTY_QUERY, encodeReadyForQuery('I')]);
    const isAdmin = this.config().admin.users.includes(user);
    let r: CommandResult;
    try {
      r = await runCommand({ view: this.view, control: this.control, signal }, sql, isAdmin);
    } catch (e) {
      const err = toPgError(e, 'GPRXY_ADMIN');
      const asError = err.severity === 'FATAL' ? new PgError('ERROR', err.sqlState, err.message) : err;
      return Buffer.concat([encodeError(asError), encodeReadyForQuery('I')]);
    }
    const out: Buffer[] = [];
    if (r.notice) out.push(encodeNotice(r.notice));
    if (r.result) {
      out.push(encodeRowDescription(r.result.columns));
      for (const row of r.result.rows) out.push(encodeDataRow(row));
    }
    out.push(encodeCommandComplete(r.tag), encodeReadyForQuery('I'));
    return Buffer.concat(out);
  }
}
