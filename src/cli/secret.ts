// `gprxy secret keygen` prints a fresh master key; `gprxy secret encrypt` turns a secret read on stdin into an
// `enc:` config value under GPRXY_MASTER_KEY (or GPRXY_MASTER_KEY_FILE).
import { randomBytes } from 'node:crypto';
import { createInterface } from 'node:readline';
import { encryptSecret, masterKey } from '../config/secrets.ts';

async function readLine(): Promise<string> {
  const rl = createInterface({ input: process.stdin, terminal: false });
  if (process.stdin.isTTY) process.stderr.write('Secret: ');
  for await (const line of rl) {
    rl.close();
    return line;
  }
  return '';
}

export async function secretCommand(args: string[]): Promise<number> {
  if (args[0] === 'keygen') {
    process.stdout.write(`${randomBytes(32).toString('base64')}\n`);
    return 0;
  }
  if (args[0] === 'encrypt') {
    const plain = await readLine();
    if (!plain) {
      process.stderr.write('gprxy secret encrypt: empty input\n');
      return 1;
    }
    process.stdout.write(`${encryptSecret(plain, masterKey(process.env))}\n`);
    return 0;
  }
  process.stderr.write('usage: gprxy secret keygen | gprxy secret encrypt  (secret on stdin)\n');
  return 2;
}
