// The safety number two people compare face to face: 60 digits, the same as the Rust
// SDK's for the same keys (docs/envelope.md). Each side's half is SHA-256 iterated 5 200
// times over that person's sorted signing-key thumbprints.

import { concat, sha256, utf8 } from './encoding.js';
import type { PublicKey } from './jwk.js';

const ITERATIONS = 5200;

async function side(keys: readonly PublicKey[]): Promise<string> {
  const thumbprints = [...new Set(keys.map((k) => k.thumbprint))].sort();
  const identity = utf8.encode(thumbprints.join(','));
  let hash = await sha256(concat(utf8.encode('icbt-safety-number-v1\n'), identity));
  for (let i = 0; i < ITERATIONS; i++) hash = await sha256(concat(hash, identity));
  const groups: string[] = [];
  for (let g = 0; g < 6; g++) {
    let n = 0;
    for (const b of hash.subarray(g * 5, g * 5 + 5)) n = n * 256 + b;
    groups.push(String(n % 100_000).padStart(5, '0'));
  }
  return groups.join(' ');
}

/** Twelve groups of five digits; the same whichever side computes it. */
export async function safetyNumber(mine: readonly PublicKey[], theirs: readonly PublicKey[]): Promise<string> {
  const [a, b] = [await side(mine), await side(theirs)];
  return a <= b ? `${a} ${b}` : `${b} ${a}`;
}
