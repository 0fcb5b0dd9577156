// PgError: everything a client is told, with severity and SQLSTATE; named constructors and SQLSTATE constants.

export const SqlState = {
  SUCCESSFUL: '00000',
  CONNECTION_EXCEPTION: '08000',
  CONNECTION_FAILURE: '08006',
  SQLCLIENT_UNABLE_TO_ESTABLISH: '08001',
  PROTOCOL_VIOLATION: '08P01',
  FEATURE_NOT_SUPPORTED: '0A000',
  INVALID_AUTHORIZATION: '28000',
  INVALID_PASSWORD: '28P01',
  INVALID_CATALOG_NAME: '3D000',
  TOO_MANY_CONNECTIONS: '53300',
  QUERY_CANCELED: '57014',
  ADMIN_SHUTDOWN: '57P01',
  CANNOT_CONNECT_NOW: '57P03',
  INTERNAL_ERROR: 'XX000',
} as const;
export type SqlStateCode = (typeof SqlState)[keyof typeof SqlState];

export type Severity = 'ERROR' | 'FATAL' | 'PANIC' | 'WARNING' | 'NOTICE';

export interface PgErrorFields {
  detail?: string;
  hint?: string;
  /** Stable internal code for logs and tests (GPRXY_*). Never shown to clients. */
  code?: string;
}

/** An error meant for the client: encoded as ErrorResponse at the session boundary. */
export class PgError extends Error {
  readonly severity: Severity;
  readonly sqlState: string;
  readonly detail: string | undefined;
  readonly hint: string | undefined;
  readonly code: string | undefined;

  constructor(severity: Severity, sqlState: string, message: string, fields: PgErrorFields = {}) {
    super(message);
    this.name = 'PgError';
    this.severity = severity;
    this.sqlState = sqlState;
    this.detail = fields.detail;
    this.hint = fields.hint;
    this.code = fields.code;
  }

  get fatal(): boolean {
    return this.severity === 'FATAL' || this.severity === 'PANIC';
  }

  static protocolViolation(message: string, code = 'GPRXY_PROTOCOL'): PgError {
    return new PgError('FATAL', SqlState.PROTOCOL_VIOLATION, message, { code });
  }

  static passwordFailed(user: string, method: string): PgError {
    return new PgError(
      'FATAL',
      SqlState.INVALID_PASSWORD,
      `password authentication failed for user "${user}"`,
      {
        code: `GPRXY_AUTH_${method.toUpperCase().replace(/[^A-Z0-9]/g, '_')}`,
      },
    );
  }

  static notAllowed(message: string, code = 'GPRXY_NOT_ALLOWED'): PgError {
    return new PgError('FATAL', SqlState.INVALID_AUTHORIZATION, message, { code });
  }

  static tooManyConnections(message: string, code = 'GPRXY_TOO_MANY'): PgError {
    return new PgError('FATAL', SqlState.TOO_MANY_CONNECTIONS, message, { code });
  }

  static unknownDatabase(db: string): PgError {
    return new PgError('FATAL', SqlState.INVALID_CATALOG_NAME, `database "${db}" does not exist`, {
      code: 'GPRXY_NO_DATABASE',
    });
  }

  static serverGone(message = 'server connection lost'): PgError {
    return new PgError('FATAL', SqlState.CONNECTION_FAILURE, message, { code: 'GPRXY_SERVER_GONE' });
  }

  static shuttingDown(): PgError {
    return new PgError(
      'FATAL',
      SqlState.ADMIN_SHUTDOWN,
      'terminating connection due to administrator command',
      {
        code: 'GPRXY_SHUTDOWN',
      },
    );
  }

  static internal(code: string): PgError {
    return new PgError('FATAL', SqlState.INTERNAL_ERROR, 'internal proxy error', { code });
  }
}

/** Converts anything thrown inside the proxy into what a client may see: a PgError, never a stack trace. */
export function toPgError(err: unknown, fallbackCode = 'GPRXY_INTERNAL'): PgError {
  if (err instanceof PgError) return err;
  return PgError.internal(fallbackCode);
}
