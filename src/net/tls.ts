// TLS contexts for both legs: the listener's server context (certificate, key, ciphers, minimum version) and
// the client options gprxy uses toward PostgreSQL for each sslmode.
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import tls from 'node:tls';
import type { Config } from '../config/load.ts';
import type { ListenTlsConfig, ServerTlsConfig } from '../config/schema.ts';

/** The listener's TLS setup, built once per config (re-read on reload). */
export interface ListenTls {
  context: tls.SecureContext;
  /**
   * A CA is configured: ask clients for a certificate and refuse one that does not verify against it (clients
   * without a certificate are still let in, as PostgreSQL does with ssl_ca_file).
   */
  requestCert: boolean;
}

export function loadListenContext(cfg: ListenTlsConfig): ListenTls {
  const context = tls.createSecureContext({
    cert: readFileSync(cfg.cert),
    key: readFileSync(cfg.key),
    ...(cfg.ca ? { ca: readFileSync(cfg.ca) } : {}),
    ...(cfg.ciphers ? { ciphers: cfg.ciphers } : {}),
    minVersion: cfg.min_version,
  });
  return { context, requestCert: cfg.ca !== undefined };
}

/** Options for tls.connect toward a server, per libpq's sslmode semantics. */
export function serverLegOptions(cfg: ServerTlsConfig, host: string): tls.ConnectionOptions {
  const ca = cfg.ca ? readFileSync(cfg.ca) : undefined;
  const opts: tls.ConnectionOptions = {
    ...(isIP(host) ? {} : { servername: host }),
    ...(cfg.cert && cfg.key ? { cert: readFileSync(cfg.cert), key: readFileSync(cfg.key) } : {}),
    minVersion: 'TLSv1.2',
  };
  // libpq: "require" with a root certificate behaves like verify-ca.
  const mode = cfg.sslmode === 'require' && ca ? 'verify-ca' : cfg.sslmode;
  if (mode === 'verify-ca' || mode === 'verify-full') {
    opts.rejectUnauthorized = true;
    if (ca) opts.ca = ca;
    if (mode === 'verify-ca') opts.checkServerIdentity = () => undefined;
    else opts.checkServerIdentity = (name, cert) => tls.checkServerIdentity(host || name, cert);
  } else {
    opts.rejectUnauthorized = false;
  }
  return opts;
}

/**
 * `gprxy config check`: opens every TLS file the config names and builds the contexts (a missing file, a key that
 * does not match its certificate, bad PEM), so a broken certificate is found before a start or a reload. Throws an
 * Error naming the config key; never prints file contents.
 */
export function checkTlsFiles(cfg: Config): void {
  const attempt = (where: string, build: () => void) => {
    try {
      build();
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      const why = err.code === 'ENOENT' ? `file not found: ${err.path ?? ''}` : (err.message ?? String(e));
      throw new Error(`${where}: ${why}`);
    }
  };
  if (cfg.listen.tls) {
    const t = cfg.listen.tls;
    attempt('listen.tls', () => loadListenContext(t));
  }
  const serverLeg = (where: string, t: ServerTlsConfig) =>
    attempt(where, () => {
      tls.createSecureContext(serverLegOptions(t, 'localhost'));
    });
  serverLeg('server_tls', cfg.server_tls);
  for (const [name, d] of Object.entries(cfg.databases)) {
    if (d.server_tls) serverLeg(`databases.${name}.server_tls`, d.server_tls);
  }
}
