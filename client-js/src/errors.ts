// Every error the client throws is an IcbtError with a stable `code`, so an app can tell
// "this message was tampered with" from "the gateway is down" without parsing text.

/** Base of every error this package throws. */
export class IcbtError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = new.target.name;
    this.code = code;
  }
}

/**
 * An envelope was refused: it is malformed, not for this device, does not decrypt, is not
 * signed by the device it names, or its two headers disagree. The same refusals as the Rust
 * SDK's `EnvelopeError`, by code:
 * `too-large`, `too-many-recipients`, `malformed`, `unsupported`, `invalid-point`,
 * `duplicate-recipient`, `not-a-recipient`, `decrypt`, `bad-signature`, `unknown-signer`,
 * `binding-mismatch`, `crypto`.
 */
export class EnvelopeError extends IcbtError {}

/**
 * What the gateway said about keys did not check out: the gateway (or someone who can write
 * its database) may be lying about whom a message is sealed to. Codes:
 * `malformed`, `untrusted-checkpoint`, `wrong-log`, `not-in-log`, `differs-from-log`,
 * `log-shrank`, `log-forked`, `revoke-unproven`.
 */
export class DirectoryError extends IcbtError {}

/** The gateway answered with an RFC 9457 problem document. */
export class GatewayError extends IcbtError {
  readonly status: number;
  /** The problem's stable `type`. */
  readonly problemType: string;
  readonly body: unknown;
  /** Seconds the gateway asked to wait (`Retry-After`), when it did. */
  readonly retryAfter: number | undefined;
  constructor(status: number, problemType: string, detail: string, body: unknown, retryAfter?: number) {
    super('gateway', `the gateway answered ${status} ${problemType}: ${detail}`);
    this.status = status;
    this.problemType = problemType;
    this.body = body;
    this.retryAfter = retryAfter;
  }
  /** The gateway may not have acted on the request: retry it (with the same bytes). */
  get mayRetry(): boolean {
    return this.status === 408 || this.status === 429 || this.status >= 500;
  }
}

/**
 * The gateway ended the event stream or long poll because the authorization it rested on
 * ended, and the caller must re-authenticate before resuming (with `after` set to the last
 * position seen: nothing is missed). `code` is the gateway's reason: `expired` (the token
 * or session), `logged-out`, `device-revoked`.
 */
export class StreamEndedError extends IcbtError {
  constructor(reason: string) {
    super(reason, `the gateway ended the stream: ${reason}`);
  }
  get mayRetry(): boolean {
    return false;
  }
}

/** Reasons of an `end` event after which the same credentials will not do. */
export const REAUTHENTICATE = ['expired', 'logged-out', 'device-revoked'];

/** The request did not get an answer at all (network, TLS, aborted). */
export class NetworkError extends IcbtError {
  constructor(message: string) {
    super('network', message);
  }
  get mayRetry(): boolean {
    return true;
  }
}

/** Content that is not in the format the journal export reads (docs/export.md). */
export class ContentError extends IcbtError {}

/** Whether a failed request may be retried with the same bytes. */
export function mayRetry(error: unknown): boolean {
  return (error instanceof GatewayError || error instanceof NetworkError) && error.mayRetry;
}
