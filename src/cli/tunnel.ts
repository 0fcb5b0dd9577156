// `gprxy tunnel --port 15432`: a 127.0.0.1 listener for GUI clients (DBeaver, DataGrip, pgAdmin) that cannot
// fetch a token themselves. Each client connection gets its own connection to gprxy, logged in as the token's
// identity with a fresh access token (cleartext password or OAUTHBEARER, whichever gprxy offers); the client
// sees AuthenticationOk only once gprxy has sent it, then bytes flow unchanged both ways. CancelRequests are
// forwarded. The GUI's own user name and password are ignored: the person is whoever ran `gprxy login`.
import { parseArgs } from 'node:util';
import type { ServerTlsConfig } from '../config/schema.ts';
import { type DialTarget, dialServer, type ServerSocket, sendCancelRequest } from '../net/dial.ts';
import { type AcceptedClient, type Listener, listen } from '../net/listener.ts';
import {
  AuthCode,
  B,
  decodeAuthentication,
  encodeError,
  encodeNegotiateProtocolVersion,
} from '../protocol/backend.ts';
import { PgError, SqlState } from '../protocol/errors.ts';
import { MessageFramer } from '../protocol/framer.ts';
import {
  encodePassword,
  encodeSaslInitialResponse,
  encodeSaslResponse,
  encodeStartupMessage,
} from '../protocol/frontend.ts';
import { type ProxyTarget, proxyTarget } from './psql.ts';
import { freshCredential, LoginRequired } from './sso/oidc.ts';
import { Store } from './sso/store.ts';

export interface TunnelOptions {
  host?: string;
  port: number;
  target: ProxyTarget;
  /** A valid token and the identity it names, fetched (refreshed when needed) per client connection. */
  token(): Promise<{ token: string; identity: string }>;
  log(line: string): void;
}

export interface Tunnel {
  port: number;
  close(): Promise<void>;
}

function dialTarget(t: ProxyTarget): DialTarget {
  const tls: ServerTlsConfig = { sslmode: t.sslmode, ...(t.sslrootcert ? { ca: t.sslrootcert } : {}) };
  return { host: t.host, port: t.port, tls, connectTimeoutMs: 15_000 };
}

function frame(type: number, body: Buffer): Buffer {
  const head = Buffer.allocUnsafe(5);
  head[0] = type;
  head.writeInt32BE(body.length + 4, 1);
  return Buffer.concat([head, body]);
}

function tunnelError(message: string, sqlState: string = SqlState.INVALID_AUTHORIZATION): Buffer {
  return encodeError(new PgError('FATAL', sqlState, `gprxy tunnel: ${message}`));
}

function handleClient(c: AcceptedClient, opts: TunnelOptions, dial: DialTarget): void {
  const client = c.socket;
  let server: ServerSocket | undefined;
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    client.destroy();
    server?.destroy();
  };
  client.on('error', close);
  client.on('close', close);
  const refuse = (msg: Buffer) => {
    if (closed) return;
    client.end(msg);
    server?.destroy();
    closed = true;
  };
  const params = c.startup.params;
  const database = params.get('database') || params.get('user') || '';
  const pqOptions = [...params.keys()].filter((k) => k.startsWith('_pq_.'));

  void (async () => {
    let token: string;
    let identity: string;
    try {
      ({ token, identity } = await opts.token());
    } catch (e) {
      opts.log(`refused a client: ${(e as Error).message}`);
      return refuse(tunnelError((e as Error).message));
    }
    try {
      server = (await dialServer(dial)).socket;
    } catch (e) {
      return refuse(tunnelError((e as Error).message, SqlState.CONNECTION_FAILURE));
    }
    if (closed) return server.destroy();
    server.on('error', close);
    server.on('close', close);
    const startup: [string, string][] = [['user', identity]];
    for (const [k, v] of params) {
      if (k !== 'user' && !k.startsWith('_pq_.')) startup.push([k, v]);
    }
    if (!params.has('database')) startup.push(['database', database]);
    server.write(encodeStartupMessage(startup));
    opts.log(
      `${c.remoteAddress}:${c.remotePort} -> ${dial.host}:${dial.port} as ${identity}, database ${database}`,
    );

    const framer = new MessageFramer();
    let mechanism: 'OAUTHBEARER' | undefined;
    const onData = (chunk: Buffer) => {
      framer.push(chunk);
      try {
        for (;;) {
          const f = framer.next();
          if (!f) return;
          if (f.type === B.ErrorResponse) return refuse(frame(f.type, f.body));
          if (f.type === B.NoticeResponse || f.type === B.NegotiateProtocolVersion) {
            client.write(frame(f.type, f.body));
            continue;
          }
          if (f.type !== B.Authentication) {
            return refuse(
              tunnelError('gprxy sent an unexpected message during login', SqlState.PROTOCOL_VIOLATION),
            );
          }
          const auth = decodeAuthentication(f.body);
          if (auth.code === AuthCode.CleartextPassword) {
            server!.write(encodePassword(token));
          } else if (
            auth.code === AuthCode.SASL &&
            'mechanisms' in auth &&
            auth.mechanisms.includes('OAUTHBEARER')
          ) {
            mechanism = 'OAUTHBEARER';
            const msg = Buffer.from(`n,,\x01auth=Bearer ${token}\x01\x01`, 'utf8');
            server!.write(encodeSaslInitialResponse('OAUTHBEARER', msg));
          } else if (auth.code === AuthCode.SASLContinue && mechanism === 'OAUTHBEARER') {
            // RFC 7628 3.2.3: the server sent an error status; answer with the dummy 0x01 and get its FATAL.
            server!.write(encodeSaslResponse(Buffer.from([1])));
          } else if (auth.code === AuthCode.Ok) {
            server!.off('data', onData);
            // The client hears NegotiateProtocolVersion from us: gprxy was asked for 3.0 with no options.
            if (c.startup.minor > 0 || pqOptions.length) {
              client.write(encodeNegotiateProtocolVersion(0, pqOptions));
            }
            client.write(frame(f.type, f.body));
            const rest = framer.drain();
            if (rest.length) client.write(rest);
            if (c.leftover.length) server!.write(c.leftover);
            client.pipe(server!);
            server!.pipe(client);
            client.resume();
            return;
          } else {
            return refuse(
              tunnelError(
                'gprxy asked for a password, not a token: its HBA rules must use method oidc for this database and user',
              ),
            );
          }
        }
      } catch (e) {
        refuse(tunnelError((e as Error).message, SqlState.PROTOCOL_VIOLATION));
      }
    };
    server.on('data', onData);
  })();
}

export async function startTunnel(opts: TunnelOptions): Promise<Tunnel> {
  const dial = dialTarget(opts.target);
  const listener: Listener = await listen(opts.host ?? '127.0.0.1', opts.port, {
    tlsContext: () => undefined,
    onStartup: (c) => handleClient(c, opts, dial),
    onCancel: (pid, secret) => {
      sendCancelRequest(dial, pid, secret).catch((e: Error) =>
        opts.log(`cancel not forwarded: ${e.message}`),
      );
    },
    onRejected: (info) => opts.log(`${info.remoteAddress}: ${info.reason}`),
    loginTimeoutMs: () => 60_000,
    keepalive: true,
  });
  return { port: listener.port, close: () => listener.close() };
}

export async function tunnelCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      port: { type: 'string', default: '15432' },
      profile: { type: 'string' },
      'proxy-host': { type: 'string' },
      'proxy-port': { type: 'string' },
    },
  });
  const store = Store.fromEnv(process.env);
  const name = store.profileName(values.profile);
  const profile = store.profile(name);
  if (!profile) {
    process.stderr.write(`gprxy tunnel: no profile "${name}": run \`gprxy login\` first\n`);
    return 1;
  }
  const token = async () => {
    const cred = await freshCredential(store, name);
    if (!cred.identity) throw new LoginRequired('the token names no identity (email claim): log in again');
    return { token: cred.access_token, identity: cred.identity };
  };
  // Fail now rather than at the first GUI connection.
  const first = await token().catch((e: Error) => e);
  if (first instanceof Error) {
    process.stderr.write(`gprxy tunnel: ${first.message}\n`);
    return 1;
  }
  const target = proxyTarget(profile, values['proxy-host'], values['proxy-port']);
  const tunnel = await startTunnel({
    port: Number(values.port),
    target,
    token,
    log: (line) => process.stderr.write(`gprxy tunnel: ${line}\n`),
  });
  process.stdout.write(
    [
      `gprxy tunnel on 127.0.0.1:${tunnel.port} -> gprxy ${target.host}:${target.port} (sslmode ${target.sslmode}) as ${first.identity}`,
      '',
      `  In DBeaver (or any client): host 127.0.0.1, port ${tunnel.port}, any user name, no password.`,
      `  postgresql://127.0.0.1:${tunnel.port}/${profile.database ?? 'DATABASE'}`,
      '',
      'Press Ctrl-C to stop.',
      '',
    ].join('\n'),
  );
  return new Promise<number>((resolve) => {
    const stop = () => void tunnel.close().then(() => resolve(0));
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
}
