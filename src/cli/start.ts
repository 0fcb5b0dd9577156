// `gprxy start --config gprxy.yaml`: runs the proxy; SIGHUP reloads, SIGTERM drains, SIGINT stops fast.
import { parseArgs } from 'node:util';
import { type Config, loadConfigFile } from '../config/load.ts';
import { createLogger, type Logger } from '../log/logger.ts';
import { type ProxyHandle, startProxy } from '../main.ts';

export async function runUntilSignal(
  config: Config,
  log: Logger,
  configPath: string | undefined,
): Promise<ProxyHandle> {
  const proxy = await startProxy(config, log);
  // SHUTDOWN from the admin console ends the process too.
  void proxy.stopped.then(() => process.exit(0));
  let stopping = false;
  const stop = async (graceful: boolean) => {
    if (stopping) {
      if (!graceful) process.exit(1);
      return;
    }
    stopping = true;
    log.info({ event: 'shutdown', graceful }, graceful ? 'draining clients (SIGTERM)' : 'stopping (SIGINT)');
    await proxy.shutdown({ graceful });
    process.exit(0);
  };
  process.on('SIGTERM', () => void stop(true));
  process.on('SIGINT', () => void stop(false));
  process.on('SIGHUP', () => {
    if (!configPath) return;
    try {
      proxy.reload(loadConfigFile(configPath, process.env));
    } catch (e) {
      log.error(
        { event: 'reload_rejected', reason: (e as Error).message },
        'reload rejected; keeping the running config',
      );
    }
  });
  return proxy;
}

export async function startCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: { config: { type: 'string', short: 'c', default: 'gprxy.yaml' } },
  });
  const config = loadConfigFile(values.config, process.env);
  const log = createLogger({ level: config.log_level, pretty: Boolean(process.stdout.isTTY) });
  await runUntilSignal(config, log, values.config);
  return new Promise<number>(() => undefined);
}
