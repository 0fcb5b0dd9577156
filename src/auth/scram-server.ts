// Server side of SCRAM-SHA-256(-PLUS) as PostgreSQL speaks it: a step machine over SASL message bytes (no I/O).
import { PgError, SqlState } from '../protocol/errors.ts';
import { defaultRandom, hmacSha256, type Random, safeEqual, sha256, xor } from './crypto.ts';
import {
  areExtensions,
  attr,
  CHANNEL_BINDING_TYPE,
  fromBase64,
  isPrintable,
  makeNonce,
  messageText,
  SCRAM_KEY_LENGTH,
  SCRAM_SHA_256,
  SCRAM_SHA_256_PLUS,
} from './scram-common.ts';
import type { ScramSecret } from './verifiers.ts';

export interface ScramServerOptions {
  random?: Random;
  /** tls-server-end-point data of this TLS connection: SCRAM-SHA-256-PLUS is offered when given. */
  channelBinding?: { tlsServerEndPoint: Buffer } | undefined;
  /** Fixed server nonce part, for test vectors only. */
  nonce?: string;
}

export type ScramServerResult = { ok: true; serverFinal: Buffer; clientKey: Buffer } | { ok: false };

type State =
  | { step: 'start' }
  | {
      step: 'sent-first';
      nonce: string;
      cbindInput: Buffer;
      clientFirstBare: string;
      serverFirst: string;
    }
  | { step: 'done' };

function malformed(what: string): PgError {
  return PgError.protocolViolation(`malformed SCRAM message: ${what}`, 'GPRXY_SCRAM_MALFORMED');
}

function unsupported(message: string): PgError {
  return new PgError('FATAL', SqlState.FEATURE_NOT_SUPPORTED, message, { code: 'GPRXY_SCRAM_UNSUPPORTED' });
}

/**
 * One SCRAM exchange with a client. PostgreSQL ignores the SCRAM username (the startup user is the identity), so
 * does this. Every method throws PgError on malformed input; a wrong proof is `{ ok: false }` (the caller answers
 * 28P01). After any error or a completed exchange the machine is finished and refuses further input.
 */
export class ScramServer {
  readonly #secret: ScramSecret;
  readonly #random: Random;
  readonly #cbind: Buffer | undefined;
  readonly #nonce: string | undefined;
  #state: State = { step: 'start' };

  constructor(secret: ScramSecret, opts: ScramServerOptions = {}) {
    this.#secret = secret;
    this.#random = opts.random ?? defaultRandom;
    this.#cbind = opts.channelBinding?.tlsServerEndPoint;
    this.#nonce = opts.nonce;
  }

  /** Mechanisms for AuthenticationSASL, in PostgreSQL's order. */
  mechanisms(): string[] {
    return this.#cbind ? [SCRAM_SHA_256_PLUS, SCRAM_SHA_256] : [SCRAM_SHA_256];
  }

  /** SASLInitialResponse (mechanism + client-first-message) -> server-first-message. */
  clientFirst(mechanism: string, data: Buffer): Buffer {
    if (this.#state.step !== 'start') throw malformed('unexpected client-first-message');
    this.#state = { step: 'done' };
    const plus = mechanism === SCRAM_SHA_256_PLUS && this.#cbind !== undefined;
    if (mechanism !== SCRAM_SHA_256 && !plus) {
      throw PgError.protocolViolation(
        'client selected an invalid SASL authentication mechanism',
        'GPRXY_SCRAM_MECH',
      );
    }
    const msg = messageText(data);
    if (msg === undefined) throw malformed('client-first-message is empty, too long or not UTF-8');
    const c1 = msg.indexOf(',');
    const c2 = c1 < 0 ? -1 : msg.indexOf(',', c1 + 1);
    if (c2 < 0) throw malformed('missing GS2 header');
    const flag = msg.slice(0, c1);
    const authzid = msg.slice(c1 + 1, c2);
    const gs2Header = Buffer.from(msg.slice(0, c2 + 1));
    let cbindInput = gs2Header;

    if (flag === 'n' || flag === 'y') {
      if (plus) {
        throw PgError.protocolViolation(
          'client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include channel binding data',
          'GPRXY_SCRAM_CHANNEL_BINDING',
        );
      }
      if (flag === 'y' && this.#cbind) {
        throw PgError.protocolViolation(
          'SCRAM channel binding negotiation error: the client supports channel binding and thinks the server does not, but this server does',
          'GPRXY_SCRAM_CHANNEL_BINDING',
        );
      }
    } else if (flag.startsWith('p=')) {
      if (!plus) {
        throw PgError.protocolViolation(
          'client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data',
          'GPRXY_SCRAM_CHANNEL_BINDING',
        );
      }
      if (flag.slice(2) !== CHANNEL_BINDING_TYPE) {
        throw PgError.protocolViolation(
          'unsupported SCRAM channel-binding type',
          'GPRXY_SCRAM_CHANNEL_BINDING',
        );
      }
      cbindInput = Buffer.concat([gs2Header, this.#cbind!]);
    } else {
      throw malformed('unexpected channel-binding flag');
    }
    if (authzid !== '' && authzid !== 'a=') {
      if (authzid.startsWith('a='))
        throw unsupported('client uses authorization identity, but it is not supported');
      throw malformed('unexpected attribute in GS2 header');
    }

    const clientFirstBare = msg.slice(c2 + 1);
    const fields = clientFirstBare.split(',');
    if (attr(fields[0], 'm') !== undefined)
      throw unsupported('client requires an unsupported SCRAM extension');
    if (attr(fields[0], 'n') === undefined) throw malformed('missing username attribute');
    const clientNonce = attr(fields[1], 'r');
    if (clientNonce === undefined || !isPrintable(clientNonce)) throw malformed('missing or invalid nonce');
    if (!areExtensions(fields.slice(2))) throw malformed('garbage at end of client-first-message');

    const { salt, iterations } = this.#secret;
    const nonce = clientNonce + (this.#nonce ?? makeNonce(this.#random));
    const serverFirst = `r=${nonce},s=${salt.toString('base64')},i=${iterations}`;
    this.#state = { step: 'sent-first', nonce, cbindInput, clientFirstBare, serverFirst };
    return Buffer.from(serverFirst);
  }

  /**
   * SASLResponse (client-final-message) -> server-final-message and the client's ClientKey when the proof is right,
   * `{ ok: false }` when it is wrong (always for mock secrets). The ClientKey satisfies H(ClientKey) = StoredKey and
   * lets ScramClient log in to a server holding the same verifier (SCRAM pass-through).
   */
  clientFinal(data: Buffer): ScramServerResult {
    const st = this.#state;
    if (st.step !== 'sent-first') throw malformed('unexpected client-final-message');
    this.#state = { step: 'done' };
    const msg = messageText(data);
    if (msg === undefined) throw malformed('client-final-message is empty, too long or not UTF-8');
    const p = msg.lastIndexOf(',p=');
    if (p < 0) throw malformed('missing proof');
    const withoutProof = msg.slice(0, p);
    const fields = withoutProof.split(',');
    const cbind = attr(fields[0], 'c');
    if (cbind === undefined) throw malformed('missing channel binding attribute');
    if (cbind !== st.cbindInput.toString('base64')) {
      throw PgError.protocolViolation('SCRAM channel binding check failed', 'GPRXY_SCRAM_CHANNEL_BINDING');
    }
    if (attr(fields[1], 'r') !== st.nonce)
      throw PgError.protocolViolation('SCRAM nonce mismatch', 'GPRXY_SCRAM_NONCE');
    if (!areExtensions(fields.slice(2))) throw malformed('unexpected attribute in client-final-message');
    const proof = fromBase64(msg.slice(p + 3));
    if (proof?.length !== SCRAM_KEY_LENGTH) throw malformed('invalid proof');

    const { storedKey, serverKey, mock } = this.#secret;
    const authMessage = `${st.clientFirstBare},${st.serverFirst},${withoutProof}`;
    const clientKey = xor(proof, hmacSha256(storedKey, authMessage));
    if (!safeEqual(sha256(clientKey), storedKey) || mock) return { ok: false };
    const serverFinal = Buffer.from(`v=${hmacSha256(serverKey, authMessage).toString('base64')}`);
    return { ok: true, serverFinal, clientKey };
  }
}
