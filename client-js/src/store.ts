// Where a client keeps what must outlive a page or a process: its device keys, the newest
// key-log head it has checked (so a rewritten log is caught next time), and sealed sends
// the gateway has not yet acknowledged (so a retry resends the same bytes).
//
// A store holds structured-cloneable values. In a browser, IndexedDB keeps CryptoKey
// objects themselves, so non-extractable keys persist without ever being readable. Node
// has a file store in `@icbt-gateway/client/node`.

import { generateDeviceKeys, type DeviceKeys } from './keys.js';

export interface Store {
  get<T>(key: string): Promise<T | undefined>;
  set(key: string, value: unknown): Promise<void>;
  delete(key: string): Promise<void>;
  keys(prefix: string): Promise<string[]>;
}

/** A store that forgets everything when the page or process ends. */
export class MemoryStore implements Store {
  private readonly map = new Map<string, unknown>();
  async get<T>(key: string): Promise<T | undefined> {
    return this.map.get(key) as T | undefined;
  }
  async set(key: string, value: unknown): Promise<void> {
    this.map.set(key, value);
  }
  async delete(key: string): Promise<void> {
    this.map.delete(key);
  }
  async keys(prefix: string): Promise<string[]> {
    return [...this.map.keys()].filter((k) => k.startsWith(prefix));
  }
}

function request<T>(r: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

/** A store in the browser's IndexedDB, one object store per database. */
export class IndexedDbStore implements Store {
  private constructor(private readonly db: IDBDatabase) {}

  static async open(name = 'icbt-gateway'): Promise<IndexedDbStore> {
    const open = indexedDB.open(name, 1);
    open.onupgradeneeded = () => open.result.createObjectStore('kv');
    return new IndexedDbStore(await request(open));
  }

  private store(mode: IDBTransactionMode): IDBObjectStore {
    return this.db.transaction('kv', mode).objectStore('kv');
  }

  async get<T>(key: string): Promise<T | undefined> {
    return (await request(this.store('readonly').get(key))) as T | undefined;
  }

  async set(key: string, value: unknown): Promise<void> {
    const tx = this.db.transaction('kv', 'readwrite');
    tx.objectStore('kv').put(value, key);
    await new Promise<void>((resolve, reject) => {
      tx.oncomplete = () => resolve();
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  }

  async delete(key: string): Promise<void> {
    await request(this.store('readwrite').delete(key));
  }

  async keys(prefix: string): Promise<string[]> {
    const all = await request(this.store('readonly').getAllKeys());
    return all.map(String).filter((k) => k.startsWith(prefix));
  }
}

/**
 * This browser's device keys for `owner` from `store`, made (non-extractable) on first use.
 * The caller publishes them; a device whose keys are lost is replaced, not recovered.
 */
export async function deviceKeysIn(store: Store, owner: string): Promise<{ keys: DeviceKeys; created: boolean }> {
  const name = `device:${owner}`;
  const kept = await store.get<DeviceKeys>(name);
  if (kept) return { keys: kept, created: false };
  const keys = await generateDeviceKeys();
  await store.set(name, keys);
  return { keys, created: true };
}
