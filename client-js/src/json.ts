// JSON parsing that refuses duplicate members, as serde does for the Rust side's closed
// structs. `JSON.parse` keeps the last of two equal keys, so a header with `"kid"` twice
// would read differently here and there; this parser refuses it instead.

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

class Parser {
  private i = 0;
  constructor(private readonly s: string) {}

  fail(): never {
    throw new SyntaxError(`invalid JSON at ${this.i}`);
  }

  ws(): void {
    for (;;) {
      const c = this.s.charCodeAt(this.i);
      if (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) this.i++;
      else return;
    }
  }

  value(depth: number): Json {
    if (depth > 64) this.fail();
    this.ws();
    const c = this.s[this.i];
    if (c === '{') return this.object(depth);
    if (c === '[') return this.array(depth);
    if (c === '"') return this.string();
    if (this.s.startsWith('true', this.i)) return (this.i += 4), true;
    if (this.s.startsWith('false', this.i)) return (this.i += 5), false;
    if (this.s.startsWith('null', this.i)) return (this.i += 4), null;
    return this.number();
  }

  object(depth: number): Json {
    this.i++;
    const out: { [key: string]: Json } = Object.create(null);
    this.ws();
    if (this.s[this.i] === '}') return this.i++, out;
    for (;;) {
      this.ws();
      if (this.s[this.i] !== '"') this.fail();
      const key = this.string();
      if (Object.prototype.hasOwnProperty.call(out, key)) throw new SyntaxError(`duplicate member \`${key}\``);
      this.ws();
      if (this.s[this.i++] !== ':') this.fail();
      out[key] = this.value(depth + 1);
      this.ws();
      const c = this.s[this.i++];
      if (c === '}') return out;
      if (c !== ',') this.fail();
    }
  }

  array(depth: number): Json {
    this.i++;
    const out: Json[] = [];
    this.ws();
    if (this.s[this.i] === ']') return this.i++, out;
    for (;;) {
      out.push(this.value(depth + 1));
      this.ws();
      const c = this.s[this.i++];
      if (c === ']') return out;
      if (c !== ',') this.fail();
    }
  }

  string(): string {
    const start = this.i;
    this.i++;
    for (;;) {
      const c = this.s.charCodeAt(this.i);
      if (Number.isNaN(c) || c < 0x20) this.fail();
      if (c === 0x22) break;
      if (c === 0x5c) this.i++;
      this.i++;
    }
    this.i++;
    return JSON.parse(this.s.slice(start, this.i)) as string;
  }

  number(): number {
    const m = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/.exec(this.s.slice(this.i, this.i + 400));
    if (!m) this.fail();
    this.i += m[0].length;
    return Number(m[0]);
  }

  document(): Json {
    const v = this.value(0);
    this.ws();
    if (this.i !== this.s.length) this.fail();
    return v;
  }
}

/** Parses `text` as JSON; throws SyntaxError on duplicate members or anything JSON.parse refuses. */
export function parseStrict(text: string): Json {
  return new Parser(text).document();
}

/** Whether `value` is a plain JSON object. */
export function isObject(value: unknown): value is { [key: string]: Json } {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Whether `value` is an object with exactly the members `keys`. */
export function hasExactly(value: unknown, keys: readonly string[]): value is { [key: string]: Json } {
  if (!isObject(value)) return false;
  const own = Object.keys(value);
  return own.length === keys.length && keys.every((k) => Object.prototype.hasOwnProperty.call(value, k));
}
