// `gprxy passwd USER`: prompts for a password (or reads it from stdin) and prints a userlist.txt line with a fresh
// SCRAM-SHA-256 verifier, plus the ALTER ROLE statement that gives PostgreSQL the same verifier.
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { makeScramVerifier, md5Secret, userlistLine } from '../auth/verifiers.ts';

async function readPassword(): Promise<string> {
  const rl = createInterface({ input: process.stdin, terminal: false });
  if (process.stdin.isTTY) process.stderr.write('Password: ');
  for await (const line of rl) {
    rl.close();
    return line;
  }
  return '';
}

export async function passwdCommand(args: string[]): Promise<number> {
  const { positionals, values } = parseArgs({
    args,
    allowPositionals: true,
    options: { md5: { type: 'boolean', default: false }, iterations: { type: 'string', default: '4096' } },
  });
  const user = positionals[0];
  if (!user) {
    process.stderr.write('usage: gprxy passwd USER [--md5] [--iterations N]   (password read from stdin)\n');
    return 2;
  }
  const password = await readPassword();
  if (!password) {
    process.stderr.write('gprxy passwd: empty password\n');
    return 1;
  }
  const secret = values.md5
    ? md5Secret(user, password)
    : await makeScramVerifier(password, { iterations: Number(values.iterations) });
  process.stdout.write(`${userlistLine(user, secret)}\n`);
  if (process.stderr.isTTY) {
    process.stderr.write(
      `\nFor SCRAM pass-through, give PostgreSQL the same verifier:\n  ALTER ROLE "${user.replaceAll('"', '""')}" PASSWORD '${secret}';\n`,
    );
  }
  return 0;
}
