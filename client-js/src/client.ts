// A connection to one gateway as one principal: the API calls an iCBT platform's web app
// needs, with every key checked against the signed key log before anything is sealed to
// it, and every message opened and its signature checked before it is shown.

import { checkConsistency, Directory, proofHashes, verifyDirectory, type TreeHead } from './directory.js';
import type { DpopKey } from './dpop.js';
import { b64url, buf, concat, hex, randomBytes, sha256, unb64, unb64url, utf8 } from './encoding.js';
import { Envelope, type Opened, seal, type Kind } from './envelope.js';
import { EnvelopeError, GatewayError, IcbtError, mayRetry, NetworkError, REAUTHENTICATE, StreamEndedError } from './errors.js';
import { deviceBody, type DeviceKeys } from './keys.js';
import { safetyNumber } from './safety.js';
import { MemoryStore, type Store } from './store.js';

/** How requests are authorised. */
export type Auth =
  /** The gateway's login session cookie (a web app served from the gateway's origin). */
  | { type: 'session' }
  /** An access token (ID-porten). */
  | { type: 'bearer'; token: string }
  /** A DPoP-bound access token (HelseID) and the key it is bound to. */
  | { type: 'dpop'; token: string; key: DpopKey };

export interface ClientOptions {
  /** The gateway's base URL, say `https://localhost:8443/`. */
  gateway: string | URL;
  auth: Auth;
  /** Base64 Ed25519 public keys that sign the key log (`icbt-gateway audit public-key`). */
  logKeys: readonly (string | Uint8Array)[];
  /** Where the newest checked key-log head and unacknowledged sends are kept. */
  store?: Store;
  fetch?: typeof fetch;
}

/** A message as the gateway lists it (history, stream, inbox). */
export interface MessageView {
  id: string;
  seq: number;
  kind: string;
  sender: { kind: string; reference?: string; device: string };
  recipients: string[];
  content_type: string;
  envelope: string;
  attachments: string[];
  created_at_ms: number;
  audience: string;
}

/** One entry of the event stream or the inbox. */
export interface StreamEntry {
  position: string;
  episode: string;
  message: MessageView;
}

/** What the event stream yields: a message entry, or another event the gateway sent. */
export type StreamEvent = { type: 'message'; id: string; entry: StreamEntry } | { type: string; id?: string; data: string };

/** A message sealed and not yet acknowledged: resend exactly this after a lost answer. */
export interface SealedSend {
  episode: string;
  messageId: string;
  kind: string;
  /** The envelope, base64url. */
  envelope: string;
  attachments: string[];
  /** SHA-256 over device, kind and payload: the same send asked for again. */
  fingerprint: string;
}

/** A message from the history or the stream, opened, or why it was not. */
export interface Received {
  seq: number;
  id: string;
  episode: string;
  kind: string;
  audience: string;
  createdAtMs: number;
  /** The sending device, from the envelope's header. */
  senderDevice: string;
  /** Its owner per the verified directory, when the device is known. */
  senderOwner?: string;
  attachments: string[];
  opened?: Opened;
  /** Set instead of `opened` when the message did not open: never show it as valid. */
  error?: IcbtError;
}

/** An encrypted attachment: upload the blob, put this in the sealed message. */
export interface AttachmentRef {
  sha256: string;
  size: number;
  /** AES-256-GCM key, base64url; the blob is IV (12 bytes) then ciphertext and tag. */
  key: string;
  name: string;
  content_type: string;
}

/** The stream position before the first entry: `events({ after: STREAM_START })` replays everything. */
export const STREAM_START = '0.0';

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => (clearTimeout(t), resolve()), { once: true });
  });

function base64Key(key: string | Uint8Array): Uint8Array {
  if (typeof key !== 'string') return key;
  const bytes = unb64(key.trim());
  if (!bytes || bytes.length !== 32) throw new IcbtError('config', 'a log key is not a base64 Ed25519 public key');
  return bytes;
}

export class Client {
  readonly base: URL;
  private readonly auth: Auth;
  private readonly trusted: Uint8Array[];
  private readonly store: Store;
  private readonly fetch: typeof fetch;
  private nonce: string | undefined;
  private headLock: Promise<unknown> = Promise.resolve();

  constructor(options: ClientOptions) {
    this.base = new URL(options.gateway);
    if (!this.base.pathname.endsWith('/')) this.base.pathname += '/';
    this.auth = options.auth;
    this.trusted = options.logKeys.map(base64Key);
    if (this.trusted.length === 0) throw new IcbtError('config', 'logKeys is empty: the key log public key is needed');
    this.store = options.store ?? new MemoryStore();
    this.fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  url(path: string): URL {
    return new URL(path.replace(/^\//, ''), this.base);
  }

  /** Sends one request with the credentials; a problem answer throws GatewayError. */
  async request(method: string, path: string, init: { body?: unknown; raw?: Uint8Array; headers?: Record<string, string>; signal?: AbortSignal } = {}): Promise<Response> {
    const url = this.url(path);
    for (let attempt = 0; ; attempt++) {
      const headers: Record<string, string> = { accept: 'application/json', ...init.headers };
      if (this.auth.type === 'bearer') headers.authorization = `Bearer ${this.auth.token}`;
      if (this.auth.type === 'dpop') {
        headers.authorization = `DPoP ${this.auth.token}`;
        headers.dpop = await this.auth.key.proof(method, url, this.auth.token, this.nonce);
      }
      let body: BodyInit | undefined;
      if (init.raw) {
        body = buf(init.raw);
        headers['content-type'] = 'application/octet-stream';
      } else if (init.body !== undefined) {
        body = JSON.stringify(init.body);
        headers['content-type'] = 'application/json';
      }
      let response: Response;
      try {
        response = await this.fetch(url, { method, headers, body, credentials: 'same-origin', signal: init.signal, redirect: 'manual' });
      } catch (e) {
        throw new NetworkError(`${method} ${url.pathname} failed: ${(e as Error).message}`);
      }
      const nonce = response.headers.get('dpop-nonce');
      if (nonce) this.nonce = nonce;
      if (response.status === 401 && nonce && this.auth.type === 'dpop' && attempt === 0) {
        const challenge = response.headers.get('www-authenticate') ?? '';
        if (challenge.includes('use_dpop_nonce')) continue;
      }
      if (response.status >= 400) {
        let problem: Record<string, unknown> = {};
        try {
          problem = (await response.json()) as Record<string, unknown>;
        } catch {
          // not a problem document
        }
        const detail = String(problem.detail ?? problem.title ?? response.statusText);
        const wait = Number(response.headers.get('retry-after') ?? NaN);
        throw new GatewayError(response.status, String(problem.type ?? ''), detail, problem, Number.isFinite(wait) ? wait : undefined);
      }
      return response;
    }
  }

  /** A JSON call. */
  /**
   * A JSON call. A GET that the gateway asks to retry (429, 503 with `Retry-After`) is
   * retried twice after the time it names, at most 10 s each: reading changes nothing, so
   * a page that loads many things at once rides out the per-principal rate limit. Other
   * methods are left to the caller ([`send`] retries with the same bytes).
   */
  async call<T = unknown>(method: string, path: string, body?: unknown): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      try {
        const response = await this.request(method, path, { body });
        return await answerOf<T>(response, method, path);
      } catch (e) {
        const wait = e instanceof GatewayError && (e.status === 429 || e.status === 503) ? e.retryAfter : undefined;
        if (method !== 'GET' || wait === undefined || attempt >= 2) throw e;
        await sleep(Math.min(wait, 10) * 1000);
      }
    }
  }

  /** Who the gateway sees: `GET /v1/me`. */
  me(): Promise<Record<string, unknown>> {
    return this.call('GET', 'v1/me');
  }

  /** The episodes the caller may reach. */
  episodes(): Promise<{ episodes: Record<string, unknown>[] }> {
    return this.call('GET', 'v1/episodes');
  }

  episode(id: string): Promise<Record<string, unknown>> {
    return this.call('GET', `v1/episodes/${id}`);
  }

  // --- keys -------------------------------------------------------------------------

  /** The newest key-log head this client has checked (kept in the store as `seen`, the member the Rust CLI keeps it under in its state file). */
  seenHead(): Promise<TreeHead | undefined> {
    return this.store.get<TreeHead>('seen');
  }

  /** Verifies a directory answer and moves the seen head forward, one check at a time. */
  private checked(view: unknown): Promise<Directory> {
    const run = this.headLock.then(async () => {
      const directory = await verifyDirectory(view, this.trusted);
      const previous = await this.seenHead();
      if (previous) {
        let proof: Uint8Array[] = [];
        if (previous.size < directory.head.size) {
          const answer = await this.call<{ proof: unknown }>('GET', `v1/keys/proof/consistency?from=${previous.size}&to=${directory.head.size}`);
          proof = proofHashes(answer.proof);
        }
        await checkConsistency(previous, directory.head, proof);
      }
      if (!previous || previous.size <= directory.head.size) await this.store.set('seen', directory.head);
      return directory;
    });
    this.headLock = run.catch(() => undefined);
    return run;
  }

  private async putDevice(path: string, keys: DeviceKeys, expiresAtMs: number): Promise<Directory> {
    return this.checked(await this.call('PUT', path, await deviceBody(keys, expiresAtMs)));
  }

  /** Publishes this device's public keys as the caller's; checks the answer's proof. */
  publishDevice(keys: DeviceKeys, expiresAtMs = Date.now() + 365 * 86_400_000): Promise<Directory> {
    return this.putDevice(`v1/devices/${keys.deviceId}`, keys, expiresAtMs);
  }

  /** Publishes a clinic's journal key (a system client of that clinic). */
  publishJournalKey(organisation: string, keys: DeviceKeys, expiresAtMs: number): Promise<Directory> {
    return this.putDevice(`v1/clinics/${organisation}/journal-keys/${keys.deviceId}`, keys, expiresAtMs);
  }

  async revokeDevice(deviceId: string): Promise<Directory> {
    return this.checked(await this.call('DELETE', `v1/devices/${deviceId}`));
  }

  /** The caller's own devices, proven. */
  async devices(): Promise<Directory> {
    return this.checked(await this.call('GET', 'v1/devices'));
  }

  /** The episode's keys, each proven to be in the signed key log, the log proven to extend what was seen. */
  async episodeKeys(episode: string, includeInactive = false): Promise<Directory> {
    return this.checked(await this.call('GET', `v1/episodes/${episode}/devices?include_inactive=${includeInactive}`));
  }

  /** The safety number of this device's owner and `other` (`patient:…` or `clinician:…`). */
  async safetyNumber(keys: DeviceKeys, episode: string, other: string): Promise<{ me: string; with: string; number: string }> {
    const directory = await this.episodeKeys(episode);
    const me = directory.device(keys.deviceId)?.owner;
    if (!me) throw new IcbtError('not-a-device', 'this device is not among the episode\'s active keys');
    const theirs = directory.signingKeysOf(other);
    if (theirs.length === 0) throw new IcbtError('no-device', `${other} has no active device in this episode`);
    return { me, with: other, number: await safetyNumber(directory.signingKeysOf(me), theirs) };
  }

  // --- sending ------------------------------------------------------------------------

  /** Seals `payload` to every active key of the episode, checked against the key log, without sending it. */
  async seal(keys: DeviceKeys, episode: string, kind: Kind, payload: Uint8Array, options: { messageId?: string; attachments?: string[] } = {}): Promise<SealedSend> {
    const messageId = options.messageId ?? crypto.randomUUID();
    const directory = await this.episodeKeys(episode);
    const bytes = await seal(payload, { episode, message: messageId, kind, sender: keys.deviceId }, keys, directory.recipients());
    return {
      episode,
      messageId,
      kind,
      envelope: b64url(bytes),
      attachments: options.attachments ?? [],
      fingerprint: await fingerprint(keys.deviceId, kind, payload),
    };
  }

  /** Sends a sealed message. The same one again answers the original receipt (200). */
  deliver(sealed: SealedSend): Promise<Record<string, unknown>> {
    return this.call('PUT', `v1/episodes/${sealed.episode}/messages/${sealed.messageId}`, {
      kind: sealed.kind,
      envelope: sealed.envelope,
      attachments: sealed.attachments,
    });
  }

  /**
   * Seals once, keeps the sealed bytes in the store, and delivers them, retrying the same
   * bytes when the answer was lost or said to try again. A send that is still unanswered
   * after `retries` stays kept: [`resendPending`] tries it again later (say after a reload).
   */
  async send(
    keys: DeviceKeys,
    episode: string,
    kind: Kind,
    payload: Uint8Array,
    options: { messageId?: string; attachments?: string[]; retries?: number } = {},
  ): Promise<Record<string, unknown>> {
    const messageId = options.messageId ?? crypto.randomUUID();
    const name = `pending:${episode}:${messageId}`;
    const wanted = await fingerprint(keys.deviceId, kind, payload);
    let sealed = await this.store.get<SealedSend>(name);
    if (!sealed || sealed.fingerprint !== wanted) {
      sealed = await this.seal(keys, episode, kind, payload, { messageId, attachments: options.attachments });
      await this.store.set(name, sealed);
    }
    return this.deliverKept(name, sealed, options.retries ?? 3);
  }

  private async deliverKept(name: string, sealed: SealedSend, retries: number): Promise<Record<string, unknown>> {
    for (let attempt = 0; ; attempt++) {
      try {
        const receipt = await this.deliver(sealed);
        await this.store.delete(name);
        return receipt;
      } catch (e) {
        if (!mayRetry(e)) {
          await this.store.delete(name);
          throw e;
        }
        if (attempt >= retries) throw e;
        const after = e instanceof GatewayError ? retryAfterMs(e) : undefined;
        await sleep(after ?? Math.min(200 * 2 ** attempt, 5000));
      }
    }
  }

  /** Sends kept but unacknowledged messages again, the same bytes; returns their receipts. */
  async resendPending(): Promise<Record<string, unknown>[]> {
    const receipts = [];
    for (const name of await this.store.keys('pending:')) {
      const sealed = await this.store.get<SealedSend>(name);
      if (sealed) receipts.push(await this.deliverKept(name, sealed, 0));
    }
    return receipts;
  }

  // --- reading ------------------------------------------------------------------------

  /** Opens one listed message with this device's key, its signature checked against `directory`. */
  async open(keys: DeviceKeys, directory: Directory, episode: string, m: MessageView): Promise<Received> {
    const received: Received = {
      seq: m.seq,
      id: m.id,
      episode,
      kind: m.kind,
      audience: m.audience,
      createdAtMs: m.created_at_ms,
      senderDevice: m.sender.device,
      attachments: m.attachments ?? [],
    };
    try {
      const bytes = unb64url(m.envelope);
      if (!bytes) throw new EnvelopeError('malformed', 'malformed: envelope is not base64url');
      const envelope = await Envelope.parse(bytes);
      received.senderDevice = envelope.binding.sender;
      if (envelope.binding.episode !== episode || envelope.binding.message !== m.id || envelope.binding.kind !== m.kind) {
        throw new EnvelopeError('binding-mismatch', 'the envelope is bound to another episode, id or kind than it is listed under');
      }
      const sender = directory.device(envelope.binding.sender);
      received.senderOwner = sender?.owner;
      if (!sender) throw new EnvelopeError('unknown-signer', `the signer ${envelope.binding.sender} is not a known device of the sender`);
      received.opened = await envelope.open(keys, sender.signing);
    } catch (e) {
      received.error = e instanceof IcbtError ? e : new EnvelopeError('crypto', String(e));
    }
    return received;
  }

  /** Messages after `after` (a `seq`), each opened and verified. */
  async history(keys: DeviceKeys, episode: string, options: { after?: number; limit?: number } = {}): Promise<{ messages: Received[]; nextAfter: number }> {
    const directory = await this.episodeKeys(episode, true);
    const page = await this.call<{ messages: MessageView[]; next_after: number }>(
      'GET',
      `v1/episodes/${episode}/messages?after=${options.after ?? 0}&limit=${options.limit ?? 200}`,
    );
    const messages = [];
    for (const m of page.messages) messages.push(await this.open(keys, directory, episode, m));
    return { messages, nextAfter: page.next_after };
  }

  /** Opens a stream entry (fetching the episode's verified keys). */
  async openEntry(keys: DeviceKeys, entry: StreamEntry): Promise<Received> {
    const directory = await this.episodeKeys(entry.episode, true);
    return this.open(keys, directory, entry.episode, entry.message);
  }

  /** Delivered and read marks of the episode's readers, and the caller's unread count. */
  receipts(episode: string): Promise<{ readers: Record<string, unknown>[]; unread?: number }> {
    return this.call('GET', `v1/episodes/${episode}/receipts`);
  }

  /** Marks messages up to `seq` as delivered and/or read by the caller. */
  markReceipts(episode: string, marks: { deliveredUpTo?: number; readUpTo?: number }): Promise<{ readers: Record<string, unknown>[]; unread?: number }> {
    return this.call('PUT', `v1/episodes/${episode}/receipts`, { delivered_up_to: marks.deliveredUpTo, read_up_to: marks.readUpTo });
  }

  /** One page of the inbox after `after`; with `wait` seconds, a long poll. */
  inbox(
    options: { after?: string; limit?: number; wait?: number; device?: string; signal?: AbortSignal } = {},
  ): Promise<{ entries: StreamEntry[]; next_after: string; end?: string }> {
    const query = new URLSearchParams();
    if (options.after !== undefined) query.set('after', options.after);
    query.set('limit', String(options.limit ?? 100));
    if (options.wait !== undefined) query.set('wait', String(options.wait));
    if (options.device !== undefined) query.set('device', options.device);
    return this.request('GET', `v1/inbox?${query}`, { signal: options.signal }).then((r) => answerOf(r, 'GET', 'v1/inbox'));
  }

  /**
   * New messages as they arrive, from the event stream, resuming after the last event
   * seen when the connection drops (nothing missed, nothing twice), and falling back to
   * long polls of the inbox when streaming does not work (`mode: 'auto'`). A refusal
   * (401, 403) ends the iteration with the GatewayError, and the gateway ending the stream
   * because its token or session expired, was logged out or `device` was revoked ends it
   * with a StreamEndedError: re-authenticate, then call again with `after` set to the last
   * position seen. Other ends (a care team changed, the gateway shutting down) reconnect at
   * once by themselves.
   */
  async *events(
    options: {
      after?: string;
      /** The device reading (its id in the key directory): the stream ends when it is revoked. */
      device?: string;
      signal?: AbortSignal;
      mode?: 'auto' | 'stream' | 'poll';
      /** Told when the stream is open (from then on nothing is missed), when it reconnects, and when it falls back to polling. */
      onState?: (state: 'connected' | 'reconnecting' | 'polling') => void;
    } = {},
  ): AsyncGenerator<StreamEvent> {
    let after = options.after;
    let mode = options.mode ?? 'auto';
    let failures = 0;
    // Streams the gateway opened that ended before delivering anything: three in a row
    // mean something between here and the gateway holds events back (a buffering proxy).
    let silent = 0;
    const signal = options.signal;
    const tell = options.onState ?? (() => undefined);
    while (!signal?.aborted) {
      let opened = false;
      let delivered = false;
      try {
        if (mode === 'poll') {
          if (after === undefined) after = await this.present();
          tell('polling');
          const page = await this.inbox({ after, wait: 25, device: options.device, signal });
          for (const entry of page.entries) yield { type: 'message', id: entry.position, entry };
          after = page.next_after;
          if (page.end !== undefined && REAUTHENTICATE.includes(page.end)) throw new StreamEndedError(page.end);
        } else {
          const connected = () => {
            opened = true;
            failures = 0;
            tell('connected');
          };
          // The stream's first event names where it began: a reconnect before any
          // message resumes there, not at a later present.
          const began = (id: string) => {
            after = id;
          };
          for await (const event of this.sse(after, options.device, signal, connected, began)) {
            delivered = true;
            if (event.id !== undefined) after = event.id;
            yield event;
          }
        }
      } catch (e) {
        if (signal?.aborted) return;
        if (e instanceof GatewayError && !e.mayRetry) throw e;
        if (e instanceof StreamEndedError) throw e;
        failures++;
        tell('reconnecting');
        await sleep(Math.min(250 * 2 ** failures, 10_000), signal);
      } finally {
        if (opened) silent = delivered ? 0 : silent + 1;
      }
      if (mode === 'auto' && silent >= 3) mode = 'poll';
    }
  }

  /** The current end of the caller's inbox, for a long poll that starts at the present. */
  private async present(): Promise<string> {
    let after: string | undefined;
    for (;;) {
      const page = await this.inbox({ after, limit: 200 });
      if (page.entries.length === 0) return page.next_after;
      after = page.next_after;
    }
  }

  private async *sse(
    after: string | undefined,
    device: string | undefined,
    signal: AbortSignal | undefined,
    connected: () => void,
    positioned: (id: string) => void,
  ): AsyncGenerator<StreamEvent> {
    const headers: Record<string, string> = { accept: 'text/event-stream' };
    if (after !== undefined) headers['last-event-id'] = after;
    const path = device === undefined ? 'v1/stream' : `v1/stream?${new URLSearchParams({ device })}`;
    const response = await this.request('GET', path, { headers, signal });
    if (!response.body) throw new NetworkError('the event stream has no body');
    connected();
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    let event: { type: string; id?: string; data: string[] } = { type: 'message', data: [] };
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buffer += value;
        let newline: number;
        while ((newline = buffer.search(/\r\n|\r|\n/)) >= 0) {
          const line = buffer.slice(0, newline);
          buffer = buffer.slice(newline + (buffer.startsWith('\r\n', newline) ? 2 : 1));
          if (line === '') {
            // An event with an id and no data moves the position only (as EventSource
            // keeps its last event id).
            if (event.data.length === 0 && event.id !== undefined) positioned(event.id);
            if (event.data.length > 0) {
              const data = event.data.join('\n');
              if (event.type === 'message') {
                const entry = JSON.parse(data) as StreamEntry;
                yield { type: 'message', id: event.id ?? entry.position, entry };
              } else if (event.type === 'end') {
                // The gateway's last event: re-authenticate, or reconnect at once.
                const reason = String((JSON.parse(data) as { reason?: unknown }).reason);
                if (REAUTHENTICATE.includes(reason)) throw new StreamEndedError(reason);
                return;
              } else yield { type: event.type, id: event.id, data };
            }
            event = { type: 'message', data: [] };
            continue;
          }
          if (line.startsWith(':')) continue;
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          const text = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
          if (field === 'data') event.data.push(text);
          else if (field === 'event') event.type = text;
          else if (field === 'id') event.id = text;
        }
      }
    } finally {
      reader.cancel().catch(() => undefined);
    }
  }

  // --- attachments --------------------------------------------------------------------

  /** Encrypts `bytes` with a fresh key, uploads the blob, and returns what the message must carry. */
  async uploadAttachment(episode: string, bytes: Uint8Array, meta: { name: string; contentType: string }): Promise<AttachmentRef> {
    const key = randomBytes(32);
    const iv = randomBytes(12);
    const cryptoKey = await crypto.subtle.importKey('raw', buf(key), 'AES-GCM', false, ['encrypt']);
    const blob = concat(iv, new Uint8Array(await crypto.subtle.encrypt({ name: 'AES-GCM', iv: buf(iv) }, cryptoKey, buf(bytes))));
    const digest = hex(await sha256(blob));
    await this.request('PUT', `v1/episodes/${episode}/attachments/${digest}`, { raw: blob });
    return { sha256: digest, size: bytes.length, key: b64url(key), name: meta.name, content_type: meta.contentType };
  }

  /** Downloads an attachment, checks its hash and decrypts it. */
  async downloadAttachment(episode: string, ref: AttachmentRef): Promise<Uint8Array> {
    const response = await this.request('GET', `v1/episodes/${episode}/attachments/${ref.sha256}`, { headers: { accept: 'application/octet-stream' } });
    const blob = new Uint8Array(await response.arrayBuffer());
    if (hex(await sha256(blob)) !== ref.sha256) throw new EnvelopeError('decrypt', 'the attachment is not the one the message names');
    const key = unb64url(ref.key);
    if (!key || key.length !== 32 || blob.length < 28) throw new EnvelopeError('malformed', 'malformed: attachment');
    const cryptoKey = await crypto.subtle.importKey('raw', buf(key), 'AES-GCM', false, ['decrypt']);
    try {
      return new Uint8Array(await crypto.subtle.decrypt({ name: 'AES-GCM', iv: buf(blob.subarray(0, 12)) }, cryptoKey, buf(blob.subarray(12))));
    } catch {
      throw new EnvelopeError('decrypt', 'the attachment does not decrypt with its key');
    }
  }
}

/**
 * The JSON of a successful answer. A body that breaks off is a `NetworkError`, which may
 * be retried: the status line alone does not say what the gateway answered, and a send
 * must keep its sealed bytes to resend them (the gateway answers a resend of the same
 * bytes with the first receipt).
 */
async function answerOf<T>(response: Response, method: string, path: string): Promise<T> {
  let text: string;
  try {
    text = await response.text();
  } catch (e) {
    throw new NetworkError(`${method} ${path}: the answer broke off: ${(e as Error).message}`);
  }
  return JSON.parse(text) as T;
}

function retryAfterMs(error: GatewayError): number | undefined {
  return error.retryAfter === undefined ? undefined : Math.min(error.retryAfter, 60) * 1000;
}

async function fingerprint(deviceId: string, kind: string, payload: Uint8Array): Promise<string> {
  return hex(await sha256(concat(utf8.encode(`${deviceId}\n${kind}\n`), payload)));
}
