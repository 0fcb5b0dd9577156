// Test certificates, generated per run with the openssl CLI into a temp dir: a CA, a server certificate for
// localhost / 127.0.0.1 / ::1 signed by it, a client certificate, and a second, unrelated CA with a client
// certificate of its own (for "wrong CA" tests).
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { hasCommand } from './harness.ts';

export interface TestCerts {
  dir: string;
  /** The test CA's certificate (PEM path). */
  ca: string;
  caKey: string;
  /** Server certificate: CN=localhost, SAN DNS:localhost, IP:127.0.0.1, IP:::1, serverAuth. */
  serverCert: string;
  serverKey: string;
  /** Client certificate: CN=gprxy-test-client, clientAuth. */
  clientCert: string;
  clientKey: string;
  /** An unrelated CA: verifying the server against it must fail. */
  otherCa: string;
  /** A client certificate signed by the unrelated CA (refused by a listener that trusts only the test CA). */
  otherClientCert: string;
  otherClientKey: string;
  read(path: string): Buffer;
  /** Removes the directory (the next testCerts() call generates afresh). */
  cleanup(): void;
}

function openssl(args: string[], cwd: string): void {
  try {
    execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (e) {
    const stderr = (e as { stderr?: Buffer }).stderr?.toString() ?? '';
    throw new Error(`openssl ${args[0]} failed: ${stderr || (e as Error).message}`);
  }
}

/** EC P-256 keys: fast to generate, accepted by OpenSSL, Node and PostgreSQL alike. */
const KEY = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

function makeCa(dir: string, name: string, cn: string): void {
  openssl(
    [
      'req',
      '-x509',
      ...KEY,
      '-keyout',
      `${name}.key`,
      '-out',
      `${name}.crt`,
      '-days',
      '2',
      '-subj',
      `/CN=${cn}`,
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
    ],
    dir,
  );
}

function makeLeaf(dir: string, name: string, cn: string, ext: string, ca = 'ca'): void {
  openssl(
    ['req', '-new', ...KEY, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`],
    dir,
  );
  writeFileSync(join(dir, `${name}.ext`), ext);
  openssl(
    [
      'x509',
      '-req',
      '-in',
      `${name}.csr`,
      '-CA',
      `${ca}.crt`,
      '-CAkey',
      `${ca}.key`,
      '-set_serial',
      `0x${randomBytes(8).toString('hex')}`,
      '-days',
      '2',
      '-sha256',
      '-extfile',
      `${name}.ext`,
      '-out',
      `${name}.crt`,
    ],
    dir,
  );
}

let cached: TestCerts | undefined;

/** Generates (once per process) the test PKI; throws a clear error when the openssl CLI is missing. */
export function testCerts(): TestCerts {
  if (cached) return cached;
  if (!hasCommand('openssl')) {
    throw new Error('TLS tests need the openssl CLI to generate certificates (apt-get install openssl)');
  }
  const dir = mkdtempSync(join(tmpdir(), 'gprxy-certs-'));
  // PostgreSQL (run as the `postgres` user when we are root) reads the certificate from here.
  chmodSync(dir, 0o755);
  makeCa(dir, 'ca', 'gprxy test CA');
  makeCa(dir, 'other-ca', 'gprxy unrelated CA');
  makeLeaf(
    dir,
    'server',
    'localhost',
    [
      'basicConstraints=CA:FALSE',
      'keyUsage=critical,digitalSignature,keyEncipherment',
      'extendedKeyUsage=serverAuth',
      'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1',
      '',
    ].join('\n'),
  );
  const clientExt = [
    'basicConstraints=CA:FALSE',
    'keyUsage=critical,digitalSignature,keyEncipherment',
    'extendedKeyUsage=clientAuth',
    '',
  ].join('\n');
  makeLeaf(dir, 'client', 'gprxy-test-client', clientExt);
  makeLeaf(dir, 'other-client', 'gprxy-stranger', clientExt, 'other-ca');
  for (const f of ['ca.crt', 'other-ca.crt', 'server.crt', 'client.crt', 'other-client.crt']) {
    chmodSync(join(dir, f), 0o644);
  }
  cached = {
    dir,
    ca: join(dir, 'ca.crt'),
    caKey: join(dir, 'ca.key'),
    serverCert: join(dir, 'server.crt'),
    serverKey: join(dir, 'server.key'),
    clientCert: join(dir, 'client.crt'),
    clientKey: join(dir, 'client.key'),
    otherCa: join(dir, 'other-ca.crt'),
    otherClientCert: join(dir, 'other-client.crt'),
    otherClientKey: join(dir, 'other-client.key'),
    read: (p) => readFileSync(p),
    cleanup() {
      rmSync(dir, { recursive: true, force: true });
      cached = undefined;
    },
  };
  return cached;
}
