// Logger factory (pino): JSON lines by default, pretty on a TTY; secrets are redacted by key name as a last line of defence.
import pino, { type Logger } from 'pino';

export type { Logger };

export interface LoggerOptions {
  level: string;
  pretty?: boolean;
  /** Destination stream (tests capture logs); defaults to stdout. */
  destination?: pino.DestinationStream;
}

const REDACT = [
  'password',
  'secret',
  'token',
  'clientKey',
  '*.password',
  '*.secret',
  '*.token',
  '*.clientKey',
  '*.verifier',
];

export function createLogger(opts: LoggerOptions): Logger {
  const base = {
    level: opts.level,
    redact: { paths: REDACT, censor: '[redacted]' },
    base: { pid: process.pid },
  };
  if (opts.destination) return pino(base, opts.destination);
  if (opts.pretty) {
    return pino({
      ...base,
      transport: { target: 'pino-pretty', options: { colorize: true, ignore: 'pid,hostname' } },
    });
  }
  return pino(base);
}
