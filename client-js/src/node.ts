// Node's side of the client: device keys and client state in files readable by their owner
// only. The key file is the Rust `icbt` CLI's format, so one device works from either SDK.
// In memory the private keys are non-extractable CryptoKeys; on disk they are JWKs, as a
// file cannot hold a key nobody may read.

import { chmod, mkdir, open, readFile, rename, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';

import { fromPrivateJson, generateDeviceKeys, toPrivateJson, type DeviceKeys } from './keys.js';
import type { Store } from './store.js';

/** Writes `text` to a new file only its owner can read; refuses to overwrite. */
async function createPrivate(path: string, text: string): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const file = await open(path, 'wx', 0o600);
  try {
    await file.writeFile(text);
  } finally {
    await file.close();
  }
}

/** Makes a new device and writes its key file; returns the keys, imported non-extractable. */
export async function createDeviceKeyFile(path: string): Promise<DeviceKeys> {
  const text = await toPrivateJson(await generateDeviceKeys({ extractable: true }));
  await createPrivate(path, text);
  return fromPrivateJson(text);
}

/** Reads a device key file (`icbt keygen` or [`createDeviceKeyFile`]). */
export async function readDeviceKeyFile(path: string): Promise<DeviceKeys> {
  return fromPrivateJson(await readFile(path, 'utf8'));
}

/**
 * A store in one JSON file (mode 0600), rewritten atomically on every change: the seen
 * key-log head and unacknowledged sealed sends. It holds no private keys.
 */
export class FileStore implements Store {
  private constructor(
    private readonly path: string,
    private data: Record<string, unknown>,
  ) {}

  static async open(path: string): Promise<FileStore> {
    let data: Record<string, unknown> = {};
    try {
      data = JSON.parse(await readFile(path, 'utf8')) as Record<string, unknown>;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    return new FileStore(path, data);
  }

  private async save(): Promise<void> {
    const temporary = `${this.path}.tmp`;
    await mkdir(dirname(this.path), { recursive: true });
    await writeFile(temporary, JSON.stringify(this.data), { mode: 0o600 });
    await chmod(temporary, 0o600);
    await rename(temporary, this.path);
  }

  async get<T>(key: string): Promise<T | undefined> {
    return this.data[key] as T | undefined;
  }
  async set(key: string, value: unknown): Promise<void> {
    this.data[key] = value;
    await this.save();
  }
  async delete(key: string): Promise<void> {
    if (key in this.data) {
      delete this.data[key];
      await this.save();
    }
  }
  async keys(prefix: string): Promise<string[]> {
    return Object.keys(this.data).filter((k) => k.startsWith(prefix));
  }
}

export * from './index.js';
