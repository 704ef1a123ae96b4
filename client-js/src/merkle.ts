// RFC 9162 Merkle trees: leaf and node hashes, and the verification of inclusion
// (§2.1.3.2) and consistency (§2.1.4.2) proofs. Sizes are bigints so bit tricks stay exact
// past 2^32.

import { buf, concat, equalBytes } from './encoding.js';

async function digest(...parts: Uint8Array[]): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.digest('SHA-256', buf(concat(...parts))));
}

/** `SHA-256(0x00 || data)`. */
export function leafHash(data: Uint8Array): Promise<Uint8Array> {
  return digest(new Uint8Array([0]), data);
}

/** `SHA-256(0x01 || left || right)`. */
export function nodeHash(left: Uint8Array, right: Uint8Array): Promise<Uint8Array> {
  return digest(new Uint8Array([1]), left, right);
}

/** Why a proof failed, or undefined when it holds. */
export type ProofFailure = 'index-out-of-range' | 'sizes-out-of-order' | 'wrong-length' | 'root-mismatch';

/** Checks that `leaf` is leaf `index` of the tree of `size` leaves whose root is `root`. */
export async function verifyInclusion(
  leaf: Uint8Array,
  index: bigint,
  size: bigint,
  proof: readonly Uint8Array[],
  root: Uint8Array,
): Promise<ProofFailure | undefined> {
  if (index >= size) return 'index-out-of-range';
  let fn = index;
  let sn = size - 1n;
  let r = leaf;
  for (const p of proof) {
    if (sn === 0n) return 'wrong-length';
    if ((fn & 1n) === 1n || fn === sn) {
      r = await nodeHash(p, r);
      while ((fn & 1n) === 0n && fn !== 0n) {
        fn >>= 1n;
        sn >>= 1n;
      }
    } else {
      r = await nodeHash(r, p);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n) return 'wrong-length';
  return equalBytes(r, root) ? undefined : 'root-mismatch';
}

/** Checks that the tree of `first` leaves is a prefix of the tree of `second` leaves. */
export async function verifyConsistency(
  first: bigint,
  second: bigint,
  firstRoot: Uint8Array,
  secondRoot: Uint8Array,
  proof: readonly Uint8Array[],
): Promise<ProofFailure | undefined> {
  if (first > second) return 'sizes-out-of-order';
  if (first === second) {
    if (proof.length !== 0) return 'wrong-length';
    return equalBytes(firstRoot, secondRoot) ? undefined : 'root-mismatch';
  }
  if (first === 0n) return proof.length === 0 ? undefined : 'wrong-length';
  const path: Uint8Array[] = [];
  if ((first & (first - 1n)) === 0n) path.push(firstRoot);
  path.push(...proof);
  let fn = first - 1n;
  let sn = second - 1n;
  while ((fn & 1n) === 1n) {
    fn >>= 1n;
    sn >>= 1n;
  }
  const [head, ...rest] = path;
  if (!head) return 'wrong-length';
  let fr = head;
  let sr = head;
  for (const c of rest) {
    if (sn === 0n) return 'wrong-length';
    if ((fn & 1n) === 1n || fn === sn) {
      fr = await nodeHash(c, fr);
      sr = await nodeHash(c, sr);
      while ((fn & 1n) === 0n && fn !== 0n) {
        fn >>= 1n;
        sn >>= 1n;
      }
    } else {
      sr = await nodeHash(sr, c);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n) return 'wrong-length';
  return equalBytes(fr, firstRoot) && equalBytes(sr, secondRoot) ? undefined : 'root-mismatch';
}
