// Client side of SCRAM-SHA-256 for gprxy's logins to PostgreSQL, with a password or a recovered ClientKey (pass-through).
import {
  AuthError,
  defaultKeyCache,
  defaultRandom,
  hmacSha256,
  type KeyCache,
  type Random,
  safeEqual,
  saltedPassword,
  scramKeys,
  sha256,
  xor,
} from './crypto.ts';
import { saslprep } from './saslprep.ts';
import {
  attr,
  fromBase64,
  isPrintable,
  makeNonce,
  messageText,
  SCRAM_KEY_LENGTH,
  SCRAM_SHA_256,
} from './scram-common.ts';

/**
 * What gprxy knows about the user: the password, or (pass-through) the ClientKey recovered by ScramServer plus,
 * from the stored verifier, the ServerKey (to check the server's signature) and salt/iterations (to fail early and
 * clearly when the backend's verifier is a different one).
 */
export type ScramCredential =
  | { password: string }
  | {
      clientKey: Buffer;
      serverKey?: Buffer | undefined;
      salt?: Buffer | undefined;
      iterations?: number | undefined;
    };

export interface ScramClientOptions {
  random?: Random;
  /** Fixed client nonce, for test vectors only. */
  nonce?: string;
  /** SCRAM username; PostgreSQL ignores it and libpq sends it empty, as we do by default. */
  username?: string;
  /** SaltedPassword cache (null: none). */
  cache?: KeyCache | null;
  /** Largest iteration count accepted from the server (PBKDF2 cost cap); default 10,000,000. */
  maxIterations?: number;
}

type State =
  | { step: 'start' }
  | { step: 'sent-first'; clientNonce: string; clientFirstBare: string }
  | { step: 'sent-final'; serverSignature: Buffer | undefined }
  | { step: 'done'; verified: boolean }
  | { step: 'failed' };

function protocolError(what: string): AuthError {
  return new AuthError('GPRXY_SCRAM_PROTOCOL', `malformed SCRAM message from server: ${what}`);
}

function stateError(what: string): AuthError {
  return new AuthError('GPRXY_SCRAM_STATE', `unexpected SCRAM step: ${what}`);
}

/** RFC 5802 saslname: ',' and '=' escaped. */
function saslname(s: string): string {
  return s.replaceAll('=', '=3D').replaceAll(',', '=2C');
}

/**
 * One SCRAM-SHA-256 login as a client: clientFirst() -> serverFirst() -> serverFinal(). Sends gs2 header `n,,`
 * (no channel binding). Errors are AuthError with GPRXY_SCRAM_* codes; after an error the machine is finished.
 * Only trust the login when `done` is true (a server sending AuthenticationOk before SASLFinal must be refused).
 */
export class ScramClient {
  readonly mechanism = SCRAM_SHA_256;
  readonly #cred: ScramCredential;
  readonly #random: Random;
  readonly #nonce: string | undefined;
  readonly #username: string;
  readonly #cache: KeyCache | null;
  readonly #maxIterations: number;
  #state: State = { step: 'start' };

  constructor(cred: ScramCredential, opts: ScramClientOptions = {}) {
    if ('clientKey' in cred) {
      if (cred.clientKey.length !== SCRAM_KEY_LENGTH)
        throw new AuthError('GPRXY_SCRAM_KEY', 'invalid ClientKey length');
      if (cred.serverKey && cred.serverKey.length !== SCRAM_KEY_LENGTH) {
        throw new AuthError('GPRXY_SCRAM_KEY', 'invalid ServerKey length');
      }
    }
    if (opts.nonce !== undefined && !isPrintable(opts.nonce))
      throw new TypeError('SCRAM nonce must be printable');
    this.#cred = cred;
    this.#random = opts.random ?? defaultRandom;
    this.#nonce = opts.nonce;
    this.#username = opts.username ?? '';
    this.#cache = opts.cache === undefined ? defaultKeyCache : opts.cache;
    this.#maxIterations = opts.maxIterations ?? 10_000_000;
  }

  /** True once the server-final-message was accepted. */
  get done(): boolean {
    return this.#state.step === 'done';
  }

  /** True once the server proved it knows the verifier (false when no ServerKey was available to check). */
  get serverVerified(): boolean {
    return this.#state.step === 'done' && this.#state.verified;
  }

  /** The client-first-message for SASLInitialResponse: `n,,n=,r=<nonce>`. */
  clientFirst(): Buffer {
    if (this.#state.step !== 'start') throw stateError('client-first-message already sent');
    const clientNonce = this.#nonce ?? makeNonce(this.#random);
    const clientFirstBare = `n=${saslname(this.#username)},r=${clientNonce}`;
    this.#state = { step: 'sent-first', clientNonce, clientFirstBare };
    return Buffer.from(`n,,${clientFirstBare}`);
  }

  /** AuthenticationSASLContinue data -> client-final-message. PBKDF2 runs off the event loop (and is cached). */
  async serverFirst(data: Buffer): Promise<Buffer> {
    const st = this.#state;
    if (st.step !== 'sent-first') throw stateError('server-first-message');
    this.#state = { step: 'failed' };
    const msg = messageText(data);
    if (msg === undefined) throw protocolError('server-first-message is empty, too long or not UTF-8');
    if (attr(msg, 'm') !== undefined) throw protocolError('server requires an unsupported SCRAM extension');
    const fields = msg.split(',');
    if (fields.length !== 3) throw protocolError('server-first-message must have exactly r, s and i');
    const nonce = attr(fields[0], 'r');
    if (nonce === undefined || !isPrintable(nonce)) throw protocolError('missing or invalid nonce');
    if (nonce.length <= st.clientNonce.length || !nonce.startsWith(st.clientNonce)) {
      throw new AuthError('GPRXY_SCRAM_NONCE', 'SCRAM nonce mismatch');
    }
    const salt = fromBase64(attr(fields[1], 's'));
    if (!salt || salt.length === 0) throw protocolError('missing or invalid salt');
    const iterText = attr(fields[2], 'i') ?? '';
    const iterations = /^[1-9][0-9]{0,9}$/.test(iterText) ? Number(iterText) : 0;
    if (iterations < 1) throw protocolError('missing or invalid iteration count');
    if (iterations > this.#maxIterations) {
      throw new AuthError(
        'GPRXY_SCRAM_ITERATIONS',
        `server asks for too many SCRAM iterations (${iterations})`,
      );
    }

    let clientKey: Buffer;
    let storedKey: Buffer;
    let serverKey: Buffer | undefined;
    if ('password' in this.#cred) {
      const salted = await saltedPassword(saslprep(this.#cred.password), salt, iterations, this.#cache);
      ({ clientKey, storedKey, serverKey } = scramKeys(salted));
    } else {
      const cred = this.#cred;
      if (
        (cred.salt && !cred.salt.equals(salt)) ||
        (cred.iterations !== undefined && cred.iterations !== iterations)
      ) {
        throw new AuthError(
          'GPRXY_SCRAM_PASSTHROUGH_MISMATCH',
          "server's SCRAM salt or iteration count differs from gprxy's verifier; use the verifier stored in pg_authid",
        );
      }
      clientKey = cred.clientKey;
      storedKey = sha256(clientKey);
      serverKey = cred.serverKey;
    }

    const withoutProof = `c=biws,r=${nonce}`;
    const authMessage = `${st.clientFirstBare},${msg},${withoutProof}`;
    const proof = xor(clientKey, hmacSha256(storedKey, authMessage));
    this.#state = { step: 'sent-final', serverSignature: serverKey && hmacSha256(serverKey, authMessage) };
    return Buffer.from(`${withoutProof},p=${proof.toString('base64')}`);
  }

  /**
   * AuthenticationSASLFinal data: checks the server signature in constant time when the ServerKey is known.
   * Returns whether the signature was checked; throws on `e=` or a bad signature.
   */
  serverFinal(data: Buffer): boolean {
    const st = this.#state;
    if (st.step !== 'sent-final') throw stateError('server-final-message');
    this.#state = { step: 'failed' };
    const msg = messageText(data);
    if (msg === undefined) throw protocolError('server-final-message is empty, too long or not UTF-8');
    const error = attr(msg, 'e');
    if (error !== undefined) {
      const reason = error.replace(/[^\x20-\x7E]/g, '?').slice(0, 100);
      throw new AuthError('GPRXY_SCRAM_SERVER_ERROR', `server rejected SCRAM authentication: ${reason}`);
    }
    const signature = fromBase64(attr(msg, 'v'));
    if (signature?.length !== SCRAM_KEY_LENGTH) throw protocolError('missing or invalid server signature');
    if (st.serverSignature && !safeEqual(signature, st.serverSignature)) {
      throw new AuthError('GPRXY_SCRAM_SERVER_SIGNATURE', 'invalid SCRAM server signature');
    }
    const verified = st.serverSignature !== undefined;
    this.#state = { step: 'done', verified };
    return verified;
  }
}
