// The security team's console: search the access log, a patient's timeline as the
// patient sees it (printable as the answer to an access request), a person's activity,
// the review reports, and an integrity panel that checks in this browser what the
// gateway says about its logs. Text is Norwegian bokmål.
//
// Everything is read through the auditor API with the login session's cookie, so every
// read is itself recorded. The integrity panel trusts nothing the gateway computes: it
// verifies each log's checkpoint note against a key pinned in this browser, proves each
// newer checkpoint extends the last one this browser saw, and recomputes the leaf of
// every record it shows before checking its inclusion proof against the signed root.

import {
  ACCESS_LOG_ORIGIN,
  accessRecordLeaf,
  KEY_LOG_ORIGIN,
  b64,
  leafHash,
  parseVerifierKey,
  unb64,
  verifyCheckpointNote,
  verifyConsistency,
  verifyInclusion,
} from '@icbt-gateway/client';

// --- small DOM helpers (text only: nothing from the network becomes markup) ----------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) if (c !== undefined && c !== null && c !== false) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const panel = document.getElementById('integrity');

const time = (ms) => new Date(Number(ms)).toLocaleString('nb-NO', { dateStyle: 'short', timeStyle: 'medium' });
const short = (text, n = 12) => (text && text.length > n ? `${text.slice(0, n)}…` : text ?? '');

const ACTIONS = {
  read: 'lese',
  search: 'søke',
  create: 'opprette',
  update: 'endre',
  export: 'eksportere',
  login: 'logge inn',
  logout: 'logge ut',
  'key-publish': 'legge til enhetsnøkkel',
  'key-revoke': 'trekke tilbake enhetsnøkkel',
  'audit-read': 'lese tilgangsloggen',
};
const OUTCOMES = { success: 'tillatt', refused: 'avvist' };
const RESOURCES = {
  episode: 'behandlingsforløp',
  episodes: 'behandlingsforløp',
  'care-team': 'behandlingsteam',
  messages: 'meldinger',
  receipts: 'lesebekreftelser',
  attachment: 'vedlegg',
  session: 'innlogging',
  'device-key': 'enhetsnøkkel',
  'access-log': 'tilgangsloggen',
};
const PRINCIPALS = { patient: 'pasient', clinician: 'helsepersonell', system: 'system', unknown: 'ukjent' };
const REPORTS = {
  'off-team': 'Tilgang uten å være i behandlingsteamet',
  'after-hours': 'Tilgang utenfor arbeidstid',
  'many-patients': 'Uvanlig mange pasienter per dag',
  'refusal-bursts': 'Mange avvisninger på kort tid',
  'dead-letters': 'Journaleksport som ikke kom fram',
};

// --- the API ---------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `svar ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

class LoggedOut extends Error {}

async function api(path) {
  const response = await fetch(path, { headers: { accept: 'application/json' }, credentials: 'same-origin' });
  if (response.status === 401) {
    showLogin();
    throw new LoggedOut();
  }
  const text = await response.text();
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    body = null;
  }
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

function errorBox(e) {
  if (e instanceof LoggedOut) return el('p', { class: 'muted' }, 'Logget ut.');
  if (e instanceof ApiError) {
    const field = e.problem?.path ? ` (felt: ${e.problem.path})` : '';
    return el('p', { class: 'error', role: 'alert' }, `Gatewayen avviste forespørselen: ${e.problem?.title ?? e.status}${field}. ${e.problem?.detail ?? ''}`);
  }
  return el('p', { class: 'error', role: 'alert' }, `Noe gikk galt: ${e.message}`);
}

// --- the integrity panel -------------------------------------------------------------

const PINS = 'icbt-console:pinned-keys';
const SEEN = 'icbt-console:seen-checkpoints';

const integrity = {
  logs: {}, // access | keys → { size, root, keyId, firstUse }
  roots: new Map(), // access-log tree size (text) → verified root
  failures: [], // what failed, in words, naming the record or checkpoint
  recordsChecked: 0,
  checked: false,
};

function load(key) {
  try {
    return JSON.parse(localStorage.getItem(key) ?? '{}') ?? {};
  } catch {
    return {};
  }
}

function fail(text) {
  if (!integrity.failures.includes(text)) integrity.failures.push(text);
  renderIntegrity();
}

const LOGS = {
  access: { origin: ACCESS_LOG_ORIGIN, name: 'Tilgangsloggen', checkpoint: '/v1/audit/checkpoint', consistency: '/v1/audit/proof/consistency' },
  keys: { origin: KEY_LOG_ORIGIN, name: 'Nøkkelloggen', checkpoint: '/v1/keys/checkpoint', consistency: '/v1/keys/proof/consistency' },
};

/** Verifies one log's newest checkpoint and that it extends the one seen before. */
async function checkLog(log) {
  const { origin, name, checkpoint, consistency } = LOGS[log];
  let view;
  try {
    view = await api(checkpoint);
  } catch (e) {
    if (e instanceof ApiError && e.status === 404 && log === 'keys') return; // no keys yet
    throw e;
  }
  const pins = load(PINS);
  let firstUse = false;
  if (!pins[log]) {
    pins[log] = view.verifier_key;
    localStorage.setItem(PINS, JSON.stringify(pins));
    firstUse = true;
  }
  let key;
  try {
    key = await parseVerifierKey(pins[log]);
  } catch {
    return fail(`${name}: den festede nøkkelen kan ikke leses; fest den på nytt under Integritet.`);
  }
  let head;
  try {
    head = await verifyCheckpointNote(view.note ?? '', [key.publicKey], origin);
  } catch (e) {
    return fail(`${name}: sjekkpunktet (størrelse ${view.size}) er ikke signert med den festede nøkkelen ${key.keyId} (${e.code ?? e.message}).`);
  }
  const seen = load(SEEN)[log];
  if (seen) {
    const before = BigInt(seen.size);
    if (head.size < before) {
      return fail(`${name}: loggen har ${head.size} poster, men denne nettleseren har sett et signert sjekkpunkt med ${before}: poster er fjernet.`);
    }
    let proof = [];
    if (head.size > before) {
      const answer = await api(`${consistency}?from=${before}&to=${head.size}`);
      proof = answer.proof.map((h) => unb64(h) ?? new Uint8Array());
    }
    const why = await verifyConsistency(before, head.size, unb64(seen.root) ?? new Uint8Array(), head.root, proof);
    if (why) {
      return fail(`${name}: sjekkpunktet med størrelse ${head.size} bygger ikke videre på det med størrelse ${before} som denne nettleseren så sist (${why}): loggen er skrevet om.`);
    }
  }
  const all = load(SEEN);
  all[log] = { size: head.size.toString(), root: b64(head.root) };
  localStorage.setItem(SEEN, JSON.stringify(all));
  integrity.logs[log] = { size: head.size, root: head.root, keyId: key.keyId, firstUse };
  if (log === 'access') integrity.roots.set(head.size.toString(), head.root);
}

async function checkIntegrity() {
  for (const log of Object.keys(LOGS)) await checkLog(log);
  integrity.checked = true;
  renderIntegrity();
}

let refreshing = null;

/** The newest access-log checkpoint again (one request however many rows ask). */
function refreshIntegrity() {
  refreshing ??= checkIntegrity().finally(() => {
    refreshing = null;
  });
  return refreshing;
}

/**
 * Checks that `record` is in the signed log as shown: its leaf, recomputed here, with its
 * proof (`proof` for the tree of `proofSize`, or one asked for now) gives the root of a
 * checkpoint this browser verified. Returns 'ok', 'newer' (after the newest checkpoint)
 * or 'failed'.
 */
async function verifyRecord(record) {
  let size = record.proofSize;
  let proof = record.proof;
  if (!proof || !integrity.roots.has(size)) {
    await refreshIntegrity();
    const head = integrity.logs.access;
    if (!head || BigInt(record.index) >= head.size) return 'newer';
    size = head.size.toString();
    proof = (await api(`/v1/audit/proof/inclusion?index=${record.index}&size=${size}`)).proof;
  }
  const why = await verifyInclusion(
    await leafHash(await accessRecordLeaf(record)),
    BigInt(record.index),
    BigInt(size),
    proof.map((h) => unb64(h) ?? new Uint8Array()),
    integrity.roots.get(size),
  );
  integrity.recordsChecked += 1;
  if (why) {
    fail(`Post ${record.index} (${record.id}): innholdet stemmer ikke med den signerte tilgangsloggen (${why}). Posten er endret etter at den ble ført.`);
    return 'failed';
  }
  renderIntegrity();
  return 'ok';
}

/** Marks `records` as proven against the tree of the size their request named. */
function provenAt(records, query) {
  const size = query.get('proof_size');
  for (const r of records) r.proofSize = size;
  return records;
}

function renderIntegrity() {
  panel.hidden = false;
  const failed = integrity.failures.length > 0;
  panel.dataset.state = failed ? 'failed' : integrity.checked ? 'ok' : 'pending';
  document.getElementById('integrity-state').textContent = failed
    ? 'Integritetskontrollen feilet'
    : integrity.checked
      ? 'Loggene er kontrollert i denne nettleseren'
      : 'Kontrollerer …';
  const items = [];
  for (const [log, { name }] of Object.entries(LOGS)) {
    const l = integrity.logs[log];
    if (!l) continue;
    items.push(
      el('li', {}, `${name}: ${l.size} poster, rot ${short(b64(l.root), 16)}, signert med nøkkel ${l.keyId}`, l.firstUse ? ' (festet ved første bruk – sammenlign med icbt-gateway audit verifier-keys)' : ''),
    );
  }
  items.push(el('li', {}, `Poster kontrollert mot signert rot: ${integrity.recordsChecked}`));
  for (const f of integrity.failures) items.push(el('li', { class: 'failed' }, f));
  document.getElementById('integrity-details').replaceChildren(...items);
}

// --- records as tables -----------------------------------------------------------------

function who(r) {
  const kind = PRINCIPALS[r.principal_kind] ?? r.principal_kind;
  if (!r.principal_id) return kind;
  return el('span', {}, `${kind} `, el('a', { href: `#/personell?id=${encodeURIComponent(r.principal_id)}` }, r.principal_id));
}

function what(r) {
  const action = ACTIONS[r.action] ?? r.action;
  const outcome = OUTCOMES[r.outcome] ?? r.outcome;
  const resource = r.action === 'audit-read' ? '' : ` ${RESOURCES[r.resource_type] ?? r.resource_type}`;
  return `${action}${resource}${r.resource_id ? ` ${short(r.resource_id, 14)}` : ''} – ${outcome}${r.reason ? ` (${r.reason})` : ''}`;
}

function proofCell(record) {
  const cell = el('td', { 'data-index': record.index }, 'kontrollerer …');
  verifyRecord(record).then((state) => {
    cell.replaceChildren(
      state === 'ok'
        ? el('span', { class: 'proof-ok' }, '✓ i signert logg')
        : state === 'failed'
          ? el('span', { class: 'proof-bad' }, '✗ endret')
          : el('span', { class: 'muted' }, 'nyere enn sjekkpunktet'),
    );
  });
  return cell;
}

function recordsTable(records, caption) {
  return el('div', { class: 'table-wrap' },
    el('table', {},
      el('caption', {}, caption),
      el('thead', {}, el('tr', {}, ['Tid', 'Hvem', 'Hva', 'Pasient', 'Behandlingsforløp', 'Posisjon', 'Bevis'].map((h) => el('th', { scope: 'col' }, h)))),
      el('tbody', {}, records.map((r) =>
        el('tr', { class: r.outcome === 'refused' ? 'refused' : undefined },
          el('td', {}, time(r.recorded_at_ms)),
          el('td', {}, who(r), r.principal_organisation ? el('div', { class: 'muted' }, `org. ${r.principal_organisation}`) : null),
          el('td', {}, what(r)),
          el('td', {}, r.patient ? el('a', { href: `#/pasient?nin=${r.patient}` }, r.patient) : ''),
          el('td', { class: 'mono' }, r.episode_id ? el('a', { href: `#/sok?episode=${r.episode_id}` }, short(r.episode_id, 13)) : ''),
          el('td', {}, String(r.index)),
          proofCell(r),
        ))),
    ));
}

/** Query parameters of the access-log API from a route's parameters. */
function recordQuery(params, extra = {}) {
  const q = new URLSearchParams();
  for (const k of ['patient', 'principal', 'episode', 'action', 'outcome', 'from_ms', 'to_ms', 'after']) {
    const v = params.get(k);
    if (v) q.set(k, v);
  }
  for (const [k, v] of Object.entries(extra)) q.set(k, v);
  if (integrity.logs.access) q.set('proof_size', integrity.logs.access.size.toString());
  return q;
}

function field(label, input) {
  return el('div', {}, el('label', { for: input.id }, label), input);
}

const localInput = (ms) => {
  if (!ms) return '';
  const d = new Date(Number(ms));
  return new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
};
const fromLocal = (value) => (value ? String(new Date(value).getTime()) : '');

// --- pages -------------------------------------------------------------------------------

async function searchPage(params) {
  const input = (id, value, attrs = {}) => el('input', { id, name: id, value: value ?? '', ...attrs });
  const select = (id, options, value) =>
    el('select', { id, name: id }, el('option', { value: '' }, 'alle'), Object.entries(options).map(([k, v]) => el('option', { value: k, selected: k === value }, v)));
  const form = el('form', { class: 'filters', onsubmit: (e) => {
    e.preventDefault();
    const data = new FormData(form);
    const q = new URLSearchParams();
    for (const k of ['patient', 'principal', 'episode', 'action', 'outcome']) if (data.get(k)) q.set(k, String(data.get(k)).trim());
    if (data.get('from')) q.set('from_ms', fromLocal(data.get('from')));
    if (data.get('to')) q.set('to_ms', fromLocal(data.get('to')));
    location.hash = `#/sok?${q}`;
  } },
    field('Pasient (fødselsnummer)', input('patient', params.get('patient'), { inputmode: 'numeric', autocomplete: 'off' })),
    field('Hvem (HPR-nummer, klient eller fødselsnummer)', input('principal', params.get('principal'), { autocomplete: 'off' })),
    field('Behandlingsforløp (id)', input('episode', params.get('episode'), { autocomplete: 'off' })),
    field('Handling', select('action', ACTIONS, params.get('action'))),
    field('Utfall', select('outcome', OUTCOMES, params.get('outcome'))),
    field('Fra', input('from', localInput(params.get('from_ms')), { type: 'datetime-local' })),
    field('Til', input('to', localInput(params.get('to_ms')), { type: 'datetime-local' })),
    el('div', {}, el('button', { type: 'submit' }, 'Søk')),
  );
  main.replaceChildren(el('h1', {}, 'Søk i tilgangsloggen'), form);
  if (![...params.keys()].length) {
    main.append(el('p', { class: 'muted' }, 'Velg minst ett filter, eller søk uten filter for de eldste postene.'));
    if (!location.hash.includes('?')) return;
  }
  try {
    const limit = /^[1-9]\d{0,2}$/.test(params.get('limit') ?? '') ? params.get('limit') : '50';
    const query = recordQuery(params, { limit });
    const page = await api(`/v1/audit/records?${query}`);
    main.append(recordsTable(provenAt(page.records, query), `${page.records.length} poster`));
    if (page.next_after !== undefined) {
      const next = new URLSearchParams(params);
      next.set('after', String(page.next_after));
      main.append(el('div', { class: 'actions' }, el('a', { class: 'button', href: `#/sok?${next}` }, 'Neste side')));
    }
  } catch (e) {
    main.append(errorBox(e));
  }
}

/** Up to `max` entries of a patient's timeline, a page at a time. */
async function timeline(nin, max = 2000) {
  const entries = [];
  let after;
  do {
    const q = new URLSearchParams({ limit: '500' });
    if (after !== undefined) q.set('after', String(after));
    if (integrity.logs.access) q.set('proof_size', integrity.logs.access.size.toString());
    const page = await api(`/v1/audit/patients/${encodeURIComponent(nin)}/access-log?${q}`);
    provenAt(page.entries.map((e) => e.record), q);
    entries.push(...page.entries);
    after = page.next_after;
  } while (after !== undefined && entries.length < max);
  return { entries, more: after !== undefined };
}

async function patientPage(params) {
  const nin = params.get('nin') ?? '';
  const form = el('form', { class: 'filters', onsubmit: (e) => {
    e.preventDefault();
    location.hash = `#/pasient?nin=${encodeURIComponent(new FormData(form).get('nin').trim())}`;
  } },
    field('Pasient (fødselsnummer)', el('input', { id: 'nin', name: 'nin', value: nin, inputmode: 'numeric', autocomplete: 'off', required: true })),
    el('div', {}, el('button', { type: 'submit' }, 'Vis logg')),
  );
  main.replaceChildren(el('h1', {}, 'Pasientens tilgangslogg'), form);
  if (!nin) {
    main.append(el('p', { class: 'muted' }, 'Svar på innsynsbegjæring: hvem har sett pasientens opplysninger, slik pasienten ser det og med intern detalj.'));
    return;
  }
  try {
    await checkIntegrity();
    const { entries, more } = await timeline(nin);
    const head = integrity.logs.access;
    main.append(
      ...[el('div', { class: 'print-only' },
        el('p', {}, `Utskrift ${time(Date.now())}. Tilgangslogg for pasient ${nin}: ${entries.length} oppføringer.`),
        head ? el('p', { class: 'mono' }, `Kontrollert mot signert sjekkpunkt: ${head.size} poster, rot ${b64(head.root)}, nøkkel ${head.keyId}.`) : null),
      el('div', { class: 'actions no-print' },
        el('button', { type: 'button', id: 'print', onclick: () => window.print() }, 'Skriv ut / lagre som PDF'),
        el('a', { class: 'button secondary', href: `/v1/audit/records?patient=${encodeURIComponent(nin)}&format=fhir&limit=500`, download: `tilgangslogg-${nin}.json` }, 'Last ned (FHIR AuditEvent)'),
      ),
      more ? el('p', { class: 'notice' }, 'Bare de første 2000 oppføringene vises; bruk søket med tidsrom for resten.') : null,
      el('div', { class: 'table-wrap' },
        el('table', { id: 'timeline' },
          el('caption', {}, `${entries.length} oppføringer for pasient ${nin}`),
          el('thead', {}, el('tr', {}, ['Tid', 'Slik pasienten ser det', 'Intern detalj', 'Posisjon', 'Bevis'].map((h) => el('th', { scope: 'col' }, h)))),
          el('tbody', {}, entries.map((e) => {
            const r = e.record;
            return el('tr', { class: e.refused ? 'refused' : undefined },
              el('td', {}, time(e.at_ms)),
              el('td', {}, el('strong', {}, e.who), el('div', {}, e.what)),
              el('td', {},
                el('div', {}, who(r), r.principal_organisation ? ` · org. ${r.principal_organisation}` : ''),
                el('div', {}, what(r)),
                el('div', { class: 'muted mono' }, [r.client_id && `klient ${r.client_id}`, r.request_id && `forespørsel ${short(r.request_id, 8)}`, r.source && `fra ${r.source}`].filter(Boolean).join(' · '))),
              el('td', {}, String(r.index)),
              proofCell(r));
          })),
        ))].filter(Boolean),
    );
  } catch (e) {
    main.append(errorBox(e));
  }
}

async function personPage(params) {
  const id = params.get('id') ?? '';
  const form = el('form', { class: 'filters', onsubmit: (e) => {
    e.preventDefault();
    location.hash = `#/personell?id=${encodeURIComponent(new FormData(form).get('id').trim())}`;
  } },
    field('HPR-nummer, klient eller fødselsnummer', el('input', { id: 'id', name: 'id', value: id, autocomplete: 'off', required: true })),
    el('div', {}, el('button', { type: 'submit' }, 'Vis aktivitet')),
  );
  main.replaceChildren(el('h1', {}, 'Aktivitet for én person eller klient'), form);
  if (!id) return;
  try {
    const q = new URLSearchParams({ principal: id });
    for (const k of ['from_ms', 'to_ms', 'after']) if (params.get(k)) q.set(k, params.get(k));
    const query = recordQuery(q, { limit: '200' });
    const page = await api(`/v1/audit/records?${query}`);
    provenAt(page.records, query);
    const patients = new Set(page.records.map((r) => r.patient).filter(Boolean));
    const refused = page.records.filter((r) => r.outcome === 'refused').length;
    main.append(
      el('dl', { class: 'facts card' },
        el('dt', {}, 'Poster på denne siden'), el('dd', {}, String(page.records.length)),
        el('dt', {}, 'Ulike pasienter'), el('dd', {}, String(patients.size)),
        el('dt', {}, 'Avvist'), el('dd', {}, String(refused))),
      recordsTable(page.records, `Aktivitet for ${id}`),
    );
    if (page.next_after !== undefined) {
      const next = new URLSearchParams(params);
      next.set('after', String(page.next_after));
      main.append(el('div', { class: 'actions' }, el('a', { class: 'button', href: `#/personell?${next}` }, 'Neste side')));
    }
  } catch (e) {
    main.append(errorBox(e));
  }
}

/** Why a report row is there, in the console's words (the API's `detail` is English). */
function why(row) {
  switch (row.kind) {
    case 'off-team':
      return row.detail.includes('refused') ? 'forsøkte uten å være i behandlingsteamet, og ble avvist' : 'ikke i behandlingsteamet på det tidspunktet';
    case 'after-hours':
      return 'utenfor arbeidstid';
    case 'many-patients':
      return `${row.patients} ulike pasienter på én dag`;
    case 'refusal-bursts':
      return `${row.count} avvisninger tett i tid`;
    default:
      return `eksporten feilet: ${row.detail}`;
  }
}

const dateInput = (ms) => (ms ? new Date(Number(ms)).toISOString().slice(0, 10) : '');
const DAY = 86_400_000;

async function reportsPage(params) {
  const kind = params.get('kind') ?? 'off-team';
  const to = params.get('to_ms') ?? String(Math.ceil(Date.now() / DAY) * DAY);
  const from = params.get('from_ms') ?? String(Number(to) - 30 * DAY);
  const form = el('form', { class: 'filters', onsubmit: (e) => {
    e.preventDefault();
    const data = new FormData(form);
    const q = new URLSearchParams({
      kind: data.get('kind'),
      from_ms: String(new Date(`${data.get('from')}T00:00`).getTime()),
      to_ms: String(new Date(`${data.get('to')}T00:00`).getTime()),
    });
    location.hash = `#/rapporter?${q}`;
  } },
    field('Rapport', el('select', { id: 'kind', name: 'kind' }, Object.entries(REPORTS).map(([k, v]) => el('option', { value: k, selected: k === kind }, v)))),
    field('Fra (dato)', el('input', { id: 'from', name: 'from', type: 'date', value: dateInput(from), required: true })),
    field('Til (dato, ikke med)', el('input', { id: 'to', name: 'to', type: 'date', value: dateInput(to), required: true })),
    el('div', {}, el('button', { type: 'submit' }, 'Kjør rapport')),
  );
  main.replaceChildren(el('h1', {}, 'Gjennomgang av tilgangsloggen'), form);
  if (!params.get('kind')) {
    main.append(el('p', { class: 'muted' }, 'Rapportene peker på det som bør ses nærmere på. Hver rad lenker til postene bak den.'));
    return;
  }
  const q = new URLSearchParams({ from_ms: from, to_ms: to, limit: '500' });
  try {
    const report = await api(`/v1/audit/reports/${encodeURIComponent(kind)}?${q}`);
    main.append(el('div', { class: 'actions' },
      el('a', { class: 'button secondary', href: `/v1/audit/reports/${encodeURIComponent(kind)}?${q}&format=csv`, download: `${kind}.csv` }, 'Last ned CSV')));
    if (!report.complete) {
      main.append(el('p', { class: 'notice' }, `Rapporten nådde tidsgrensen og dekker bare fram til ${time(report.scanned_to_ms)}. Velg et kortere tidsrom.`));
    }
    if (!report.rows.length) {
      main.append(el('p', { id: 'report-empty' }, `Ingen funn i ${report.records_scanned} poster.`));
      return;
    }
    main.append(el('div', { class: 'table-wrap' }, el('table', { id: 'report' },
      el('caption', {}, `${REPORTS[kind]}: ${report.total_rows} funn i ${report.records_scanned} poster`),
      el('thead', {}, el('tr', {}, ['Hvem', 'Pasient', 'Forløp', 'Dag', 'Første', 'Siste', 'Antall', 'Hvorfor', 'Poster'].map((h) => el('th', { scope: 'col' }, h)))),
      el('tbody', {}, report.rows.map((row) => {
        const link = new URLSearchParams();
        if (row.principal && !row.principal.startsWith('source:')) link.set('principal', row.principal);
        if (row.episode) link.set('episode', row.episode);
        if (row.kind === 'refusal-bursts') link.set('outcome', 'refused');
        if (row.kind !== 'dead-letters') {
          link.set('from_ms', String(row.first_ms));
          link.set('to_ms', String(row.last_ms + 1));
        }
        return el('tr', {},
          el('td', {}, row.principal ? `${PRINCIPALS[row.principal_kind] ?? ''} ${row.principal}` : ''),
          el('td', {}, row.patient ?? (row.patients ? `${row.patients} pasienter` : '')),
          el('td', { class: 'mono' }, row.episode ? short(row.episode, 13) : ''),
          el('td', {}, row.day ?? ''),
          el('td', {}, time(row.first_ms)),
          el('td', {}, time(row.last_ms)),
          el('td', {}, String(row.count)),
          el('td', {}, why(row)),
          el('td', {}, el('a', { href: `#/sok?${link}` }, row.kind === 'dead-letters' ? `Vis forløpets poster (eksport ${row.dead_letters.join(', ')})` : `Vis ${row.count} poster`)));
      })))));
  } catch (e) {
    main.append(errorBox(e));
  }
}

async function integrityPage() {
  const pins = load(PINS);
  const text = el('textarea', { id: 'pins', name: 'pins', 'aria-describedby': 'pins-help' }, [pins.access, pins.keys].filter(Boolean).join('\n'));
  const one = el('input', { id: 'record-index', name: 'index', inputmode: 'numeric', autocomplete: 'off' });
  const result = el('div', { id: 'record-result', 'aria-live': 'polite' });
  main.replaceChildren(
    el('h1', {}, 'Integritet'),
    el('p', {}, 'Nettleseren kontrollerer selv signaturen på hver loggs siste sjekkpunkt, at det bygger videre på det forrige den så, og at hver post den viser står i den signerte loggen slik den vises.'),
    el('form', { class: 'card', onsubmit: async (e) => {
      e.preventDefault();
      result.replaceChildren(el('p', {}, 'Kontrollerer …'));
      try {
        await checkIntegrity();
        const index = Number(one.value);
        const q = new URLSearchParams({ limit: '1' });
        if (index > 0) q.set('after', String(index - 1));
        const query = recordQuery(new URLSearchParams(), Object.fromEntries(q));
        const page = await api(`/v1/audit/records?${query}`);
        provenAt(page.records, query);
        const record = page.records.find((r) => r.index === index);
        if (!record) return result.replaceChildren(el('p', { class: 'error' }, `Fant ingen post ${index}.`));
        result.replaceChildren(recordsTable([record], `Post ${index}`));
      } catch (err) {
        result.replaceChildren(errorBox(err));
      }
    } },
      field('Kontroller én post (posisjon i loggen)', one),
      el('div', { class: 'actions' }, el('button', { type: 'submit' }, 'Kontroller'))),
    result,
    el('form', { class: 'card', onsubmit: (e) => {
      e.preventDefault();
      const lines = text.value.split('\n').map((l) => l.trim()).filter(Boolean);
      const next = {};
      for (const line of lines) {
        if (line.startsWith(`${ACCESS_LOG_ORIGIN}+`)) next.access = line;
        if (line.startsWith(`${KEY_LOG_ORIGIN}+`)) next.keys = line;
      }
      localStorage.setItem(PINS, JSON.stringify(next));
      location.reload();
    } },
      field('Festede verifiseringsnøkler', text),
      el('p', { id: 'pins-help', class: 'muted' }, 'Én per linje, slik icbt-gateway audit verifier-keys skriver dem. Tomt: nøklene festes ved første bruk.'),
      el('div', { class: 'actions' }, el('button', { type: 'submit' }, 'Lagre nøkler'))),
  );
}

// --- login and routing -------------------------------------------------------------------

function showLogin() {
  nav.hidden = true;
  panel.hidden = true;
  document.getElementById('session').replaceChildren();
  main.replaceChildren(
    el('h1', {}, 'Logg inn'),
    el('p', {}, 'Sikkerhetskonsollet er for dem som gjennomgår tilgangsloggen. Du logger inn med HelseID.'),
    el('a', { class: 'button', id: 'login', href: '/console/login' }, 'Logg inn med HelseID'),
  );
}

const ROUTES = { sok: searchPage, pasient: patientPage, personell: personPage, rapporter: reportsPage, integritet: integrityPage };

async function route() {
  const [path, query] = location.hash.replace(/^#\/?/, '').split('?');
  const page = ROUTES[path] ? path : 'sok';
  for (const a of nav.querySelectorAll('a')) a.setAttribute('aria-current', a.getAttribute('href') === `#/${page}` ? 'page' : 'false');
  await ROUTES[page](new URLSearchParams(query ?? ''));
}

async function start() {
  let me;
  try {
    me = await api('/v1/me');
  } catch (e) {
    if (!(e instanceof LoggedOut)) main.replaceChildren(errorBox(e));
    return;
  }
  if (!me.auditor) {
    main.replaceChildren(el('h1', {}, 'Ingen tilgang'), el('p', {}, 'Sikkerhetskonsollet er bare for revisorer.'));
    return;
  }
  document.getElementById('session').replaceChildren(
    el('span', {}, `HPR ${me.hpr_number ?? '–'} `),
    el('form', { method: 'post', action: '/auth/logout', style: 'display:inline' }, el('button', { type: 'submit', class: 'secondary' }, 'Logg ut')),
  );
  nav.hidden = false;
  renderIntegrity();
  try {
    await checkIntegrity();
  } catch (e) {
    fail(`Kunne ikke hente sjekkpunktene: ${e.message}`);
  }
  window.addEventListener('hashchange', () => route());
  await route();
}

start();
