#!/usr/bin/env node
// icbt-js: the JavaScript SDK as a command line, with the Rust `icbt` CLI's commands,
// settings and JSON-lines output, so the two can be run against each other.
//
//   icbt-js keygen --keys FILE
//   icbt-js publish --keys FILE [--days N]
//   icbt-js devices --episode ID [--all]
//   icbt-js send --keys FILE --episode ID [--kind K] [--id UUID] --text TEXT
//   icbt-js receive --keys FILE --episode ID [--after SEQ]
//   icbt-js safety-number --keys FILE --episode ID --with OWNER
//
// Settings from the environment, as `icbt-gateway dev token` prints them: ICBT_GATEWAY,
// ICBT_TOKEN_FILE, ICBT_DPOP_KEY_FILE, ICBT_LOG_KEYS, ICBT_STATE_FILE, ICBT_CA_FILE.

import { spawnSync } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';

import { Client, type Auth } from './client.js';
import { DpopKey } from './dpop.js';
import { fromUtf8 } from './encoding.js';
import type { Kind } from './envelope.js';
import { IcbtError, mayRetry } from './errors.js';
import { createDeviceKeyFile, FileStore, readDeviceKeyFile } from './node.js';

function out(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

async function client(): Promise<Client> {
  const env = process.env;
  if (!env.ICBT_GATEWAY) throw new Error('ICBT_GATEWAY is required');
  if (!env.ICBT_TOKEN_FILE) throw new Error('ICBT_TOKEN_FILE is required');
  if (!env.ICBT_LOG_KEYS) throw new Error('ICBT_LOG_KEYS is required: the key log public key');
  const token = (await readFile(env.ICBT_TOKEN_FILE, 'utf8')).trim();
  const auth: Auth = env.ICBT_DPOP_KEY_FILE
    ? { type: 'dpop', token, key: await DpopKey.fromPkcs8(new Uint8Array(await readFile(env.ICBT_DPOP_KEY_FILE))) }
    : { type: 'bearer', token };
  const store = env.ICBT_STATE_FILE ? await FileStore.open(env.ICBT_STATE_FILE) : undefined;
  return new Client({ gateway: env.ICBT_GATEWAY, auth, logKeys: env.ICBT_LOG_KEYS.split(','), store });
}

async function run(argv: string[]): Promise<void> {
  const [command, ...rest] = argv;
  const { values: o } = parseArgs({
    args: rest,
    options: {
      keys: { type: 'string' },
      episode: { type: 'string' },
      kind: { type: 'string', default: 'message' },
      id: { type: 'string' },
      text: { type: 'string' },
      after: { type: 'string', default: '0' },
      with: { type: 'string' },
      days: { type: 'string', default: '365' },
      all: { type: 'boolean', default: false },
    },
  });
  const need = (name: keyof typeof o): string => {
    const v = o[name];
    if (typeof v !== 'string') throw new Error(`--${name} is required`);
    return v;
  };
  switch (command) {
    case 'keygen': {
      const keys = await createDeviceKeyFile(need('keys'));
      return out({ device_id: keys.deviceId, encryption_kid: keys.encryptionKid });
    }
    case 'publish': {
      const keys = await readDeviceKeyFile(need('keys'));
      const c = await client();
      const directory = await c.publishDevice(keys, Date.now() + Number(o.days) * 86_400_000);
      return out({ device_id: keys.deviceId, encryption_kid: keys.encryptionKid, owner: directory.devices[0]?.owner, log_size: directory.head.size });
    }
    case 'devices': {
      const directory = await (await client()).episodeKeys(need('episode'), o.all === true);
      const now = Date.now();
      for (const d of directory.devices) {
        out({ device_id: d.deviceId, owner: d.owner, encryption_kid: d.encryption.thumbprint, active: !d.revoked && now < d.expiresAtMs, revoked: d.revoked, verified: true });
      }
      return;
    }
    case 'send': {
      const keys = await readDeviceKeyFile(need('keys'));
      const id = o.id ?? crypto.randomUUID();
      try {
        const receipt = await (await client()).send(keys, need('episode'), o.kind as Kind, new TextEncoder().encode(need('text')), { messageId: id });
        return out(receipt);
      } catch (e) {
        if (!mayRetry(e)) throw e;
        const where = process.env.ICBT_STATE_FILE ?? 'memory only: set ICBT_STATE_FILE to keep it';
        throw new Error(`message ${id} was not acknowledged and may or may not have arrived; retry with --id ${id} (the sealed message is kept in ${where})`);
      }
    }
    case 'receive': {
      const keys = await readDeviceKeyFile(need('keys'));
      const { messages } = await (await client()).history(keys, need('episode'), { after: Number(o.after) });
      for (const m of messages) {
        const line: Record<string, unknown> = { seq: m.seq, id: m.id, kind: m.kind, sender_device: m.senderDevice, sender_owner: m.senderOwner ?? null };
        if (m.opened) Object.assign(line, { verified: true, text: fromUtf8(m.opened.payload) ?? '' });
        else Object.assign(line, { verified: false, error: m.error?.message, code: m.error?.code });
        out(line);
      }
      return;
    }
    case 'safety-number': {
      const keys = await readDeviceKeyFile(need('keys'));
      const s = await (await client()).safetyNumber(keys, need('episode'), need('with'));
      return out({ me: s.me, with: s.with, safety_number: s.number });
    }
    default:
      throw new Error(`unknown command \`${command ?? ''}\`: keygen, publish, devices, send, receive, safety-number`);
  }
}

// Node's fetch trusts extra CAs only from NODE_EXTRA_CA_CERTS, read at start: run again with it.
if (process.env.ICBT_CA_FILE && process.env.NODE_EXTRA_CA_CERTS !== process.env.ICBT_CA_FILE) {
  const child = spawnSync(process.execPath, process.argv.slice(1), {
    stdio: 'inherit',
    env: { ...process.env, NODE_EXTRA_CA_CERTS: process.env.ICBT_CA_FILE },
  });
  process.exit(child.status ?? 1);
}

run(process.argv.slice(2)).catch((e: unknown) => {
  const code = e instanceof IcbtError ? ` [${e.code}]` : '';
  process.stderr.write(`icbt-js: ${(e as Error).message}${code}\n`);
  process.exit(1);
});
