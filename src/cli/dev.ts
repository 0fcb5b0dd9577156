// `gprxy dev`: the embedded default. Starts PostgreSQL from npm, a demo database and role, and gprxy on
// 127.0.0.1:6432 (or the next free port); prints how to connect; Ctrl-C stops both.
import { createServer } from 'node:net';
import { parseArgs } from 'node:util';
import { loadConfigFile } from '../config/load.ts';
import { defaultStateDir, prepareDev, writeDevConfig } from '../dev/setup.ts';
import { createLogger } from '../log/logger.ts';
import { startProxy } from '../main.ts';

/** The first port from `from` that is free on 127.0.0.1, else whatever the kernel gives. */
async function pickPort(from: number, tries = 20): Promise<number> {
  for (let p = from; p < from + tries; p++) {
    if (await canListen(p)) return p;
  }
  return 0;
}

function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', () => resolve(false));
    s.listen({ host: '127.0.0.1', port }, () => s.close(() => resolve(true)));
  });
}

export async function devCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      'state-dir': { type: 'string', default: defaultStateDir() },
      port: { type: 'string', default: '6432' },
      'log-level': { type: 'string', default: 'info' },
    },
  });
  const stateDir = values['state-dir'];
  process.stderr.write(`gprxy dev: starting PostgreSQL (state in ${stateDir}) ...\n`);
  const state = await prepareDev(stateDir, () => undefined);
  const port = await pickPort(Number(values.port));
  writeDevConfig(state, port);
  const config = loadConfigFile(state.configPath, {});
  const log = createLogger({ level: values['log-level'], pretty: Boolean(process.stdout.isTTY) });
  let proxy: Awaited<ReturnType<typeof startProxy>>;
  try {
    proxy = await startProxy(config, log);
  } catch (e) {
    await state.pg.stop().catch(() => undefined);
    throw e;
  }
  const { user, password, database } = state.demo;
  const url = `postgresql://${user}:${password}@127.0.0.1:${proxy.port}/${database}`;
  process.stdout.write(
    [
      '',
      `gprxy dev is ready: gprxy on 127.0.0.1:${proxy.port}, PostgreSQL ${state.pg.host}:${state.pg.port} (embedded)`,
      '',
      `  psql "${url}"`,
      '',
      `  connection URL: ${url}`,
      `  config: ${state.configPath}`,
      '',
      'Press Ctrl-C to stop.',
      '',
    ].join('\n'),
  );

  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = async () => {
      if (stopping) return;
      stopping = true;
      process.stderr.write('\ngprxy dev: stopping ...\n');
      await proxy.shutdown({ graceful: false });
      await state.pg.stop().catch(() => undefined);
      resolve(0);
    };
    process.on('SIGINT', () => void stop());
    process.on('SIGTERM', () => void stop());
  });
}
