// What a sealed message says inside: the content format the journal export reads
// (docs/export.md). Text for messages, feedback and notices; a filled-in PHQ-9 or GAD-7 for
// questionnaire responses. Anything else would reach the gateway but not the record.

import { ContentError } from './errors.js';
import { fromUtf8, utf8 } from './encoding.js';
import { isObject, parseStrict } from './json.js';

export type Instrument = 'PHQ-9' | 'GAD-7';

export const ITEMS: Record<Instrument, number> = { 'PHQ-9': 9, 'GAD-7': 7 };

export type Content =
  | { text: string; in_response_to?: string }
  | { questionnaire: { instrument: Instrument; items: number[] } };

/** The payload of a message, feedback or notice. */
export function textContent(text: string, inResponseTo?: string): Uint8Array {
  if (text.trim() === '') throw new ContentError('content', '`text` is empty');
  return utf8.encode(JSON.stringify(inResponseTo ? { text, in_response_to: inResponseTo } : { text }));
}

function checkItems(instrument: string, items: unknown): asserts instrument is Instrument {
  if (!(instrument in ITEMS)) throw new ContentError('content', `unknown instrument \`${instrument}\``);
  const n = ITEMS[instrument as Instrument];
  if (!Array.isArray(items) || items.length !== n || !items.every((i) => Number.isInteger(i) && i >= 0 && i <= 3)) {
    throw new ContentError('content', `${instrument} has ${n} answers, each 0 to 3`);
  }
}

/** The payload of a questionnaire response. */
export function questionnaireContent(instrument: Instrument, items: readonly number[]): Uint8Array {
  checkItems(instrument, items);
  return utf8.encode(JSON.stringify({ questionnaire: { instrument, items: [...items] } }));
}

/** Reads an opened payload of `kind`, as the exporter will. */
export function parseContent(kind: string, payload: Uint8Array): Content {
  let value: unknown;
  try {
    value = parseStrict(fromUtf8(payload) ?? '');
  } catch {
    throw new ContentError('content', 'not the content format');
  }
  if (!isObject(value)) throw new ContentError('content', 'not the content format');
  const keys = Object.keys(value);
  if (kind === 'questionnaire-response') {
    const q = value.questionnaire;
    if (keys.length !== 1 || !isObject(q) || Object.keys(q).length !== 2 || typeof q.instrument !== 'string') {
      throw new ContentError('content', 'a questionnaire response carries `questionnaire` and nothing else');
    }
    checkItems(q.instrument, q.items);
    return { questionnaire: { instrument: q.instrument, items: q.items as number[] } };
  }
  if (!['message', 'feedback', 'notice'].includes(kind)) throw new ContentError('content', `unknown kind \`${kind}\``);
  const text = value.text;
  const reply = value.in_response_to;
  if (typeof text !== 'string' || keys.some((k) => k !== 'text' && k !== 'in_response_to') || (reply !== undefined && typeof reply !== 'string')) {
    throw new ContentError('content', `a ${kind} carries \`text\` (and maybe \`in_response_to\`), no questionnaire`);
  }
  if (text.trim() === '') throw new ContentError('content', '`text` is empty');
  return reply === undefined ? { text } : { text, in_response_to: reply };
}
