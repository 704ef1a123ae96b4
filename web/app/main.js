// The reference web client: a patient's and a therapist's view of their treatment
// messages, on the browser SDK. Everything is sealed and opened here, in the browser; the
// gateway sees ciphertext only. Text is Norwegian bokmål.
//
// The page logs in through the gateway's hosted login (the session cookie authorises
// every API call), keeps this browser's device keys as non-extractable Web Crypto keys in
// IndexedDB, and follows the event stream from the start of the caller's inbox, so
// history and live messages arrive the same way and a dropped connection resumes where
// it stopped.

import {
  Client,
  DirectoryError,
  EnvelopeError,
  GatewayError,
  IndexedDbStore,
  StreamEndedError,
  deviceKeysIn,
  parseContent,
  questionnaireContent,
  textContent,
} from '@icbt-gateway/client';

// --- small DOM helpers (text only: nothing from the network becomes markup) ----------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) if (c !== undefined && c !== null) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

const main = document.getElementById('main');
const alarm = document.getElementById('alarm');

// Set once something does not check out: nothing may be sent from this page after it.
let blocked = false;

/** Says what is wrong, at the top, and stops sending. */
function raise(text) {
  blocked = true;
  alarm.textContent = text;
  alarm.hidden = false;
  for (const b of document.querySelectorAll('main form button[type=submit]')) b.disabled = true;
}

/** Says something the user must know that does not stop them. */
function notice(text) {
  alarm.textContent = text;
  alarm.hidden = false;
}

const time = (ms) => new Date(ms).toLocaleString('nb-NO', { dateStyle: 'short', timeStyle: 'short' });

// --- what a reader is told when something does not check out -------------------------

function explain(error) {
  if (error instanceof DirectoryError) {
    return 'Nøkkelkatalogen stemmer ikke med det denne nettleseren har sett før, eller med den signerte loggen. ' +
      'Noen kan ha byttet ut en nøkkel. Ikke send noe nå, og kontakt klinikken.';
  }
  if (error instanceof EnvelopeError) {
    switch (error.code) {
      case 'not-a-recipient':
        return 'Meldingen ble sendt før denne nettleseren ble registrert, og kan ikke leses her.';
      case 'unknown-signer':
        return 'Avsenderens nøkkel finnes ikke i den signerte nøkkelloggen. Meldingen vises ikke.';
      default:
        return 'Meldingen er endret underveis eller ødelagt, og vises ikke.';
    }
  }
  if (error instanceof GatewayError) {
    if (error.problemType.endsWith('envelope-sender-not-a-device')) {
      return 'Denne nettleseren er trukket tilbake som enhet. Last siden på nytt for å registrere den igjen.';
    }
    return `Tjenesten svarte: ${error.message}`;
  }
  return 'Noe gikk galt. Prøv igjen.';
}

// --- questionnaire --------------------------------------------------------------------

const PHQ9 = [
  'Lite interesse for eller glede av å gjøre ting',
  'Følt deg nedfor, deprimert eller håpløs',
  'Problemer med å sovne, sove gjennom natten eller sovet for mye',
  'Følt deg sliten eller hatt lite energi',
  'Dårlig matlyst eller overspising',
  'Dårlig selvbilde, eller følt at du har sviktet deg selv eller familien',
  'Vansker med å konsentrere deg, for eksempel om å lese eller se på TV',
  'Beveget deg eller snakket så langsomt at andre kunne merke det, eller vært så urolig at du har beveget deg mye mer enn vanlig',
  'Tanker om at det ville vært bedre om du var død, eller om å skade deg selv',
];
const ANSWERS = ['Ikke i det hele tatt', 'Flere dager', 'Mer enn halvparten av dagene', 'Nesten hver dag'];

const KIND = { message: 'Melding', feedback: 'Tilbakemelding', 'questionnaire-response': 'Spørreskjema', notice: 'Varsel' };

// --- the session ------------------------------------------------------------------------

async function pinnedLogKeys(store) {
  // Trust on first use: the key-log key this browser first saw is kept and every later
  // checkpoint must be signed by it. A platform's own app pins it in its build instead.
  let keys = await store.get('log-keys');
  if (!keys) {
    const response = await fetch('/v1/keys/checkpoint', { headers: { accept: 'application/json' } });
    if (!response.ok) throw new Error('the key log is empty');
    keys = [(await response.json()).public_key];
    await store.set('log-keys', keys);
  }
  return keys;
}

function showLogin() {
  main.replaceChildren(
    el('h1', {}, 'Logg inn'),
    el('div', { class: 'card' },
      el('p', {}, 'Pasienter logger inn med ID-porten, behandlere med HelseID.'),
      el('p', { class: 'row' },
        el('a', { class: 'button', href: '/auth/login/dev-idporten?return_to=/app/' }, 'Logg inn som pasient (ID-porten)'),
        el('a', { class: 'button', href: '/auth/login/dev-helseid?return_to=/app/' }, 'Logg inn som behandler (HelseID)'),
      ),
    ),
  );
}

async function start() {
  const meResponse = await fetch('/v1/me', { headers: { accept: 'application/json' } });
  if (meResponse.status === 401) return showLogin();
  if (!meResponse.ok) throw new Error(`GET /v1/me: ${meResponse.status}`);
  const me = await meResponse.json();
  const store = await IndexedDbStore.open('icbt-app');
  const client = new Client({ gateway: location.origin, auth: { type: 'session' }, logKeys: await pinnedLogKeys(store), store });
  const self = me.kind === 'patient' ? 'patient' : `clinician:${me.hpr_number}`;
  document.getElementById('session').replaceChildren(
    el('form', { method: 'post', action: '/auth/logout', class: 'row' },
      el('span', { class: 'muted' }, me.kind === 'patient' ? 'Innlogget som pasient' : `Innlogget som behandler (HPR ${me.hpr_number})`),
      el('button', { class: 'secondary', type: 'submit' }, 'Logg ut'),
    ),
  );
  const keys = await device(client, store, self);
  document.body.dataset.device = keys.deviceId;
  document.querySelector('.foot').append(el('p', {}, `Denne nettleserens enhet: ${keys.deviceId.slice(0, 8)} (sammenlign med enhetslisten hos klinikken)`));
  const app = new App(client, keys, me);
  // The stream is open before history is read, so nothing falls between the two.
  await app.follow();
  await app.render();
}

/** This browser's device for `owner`, published if it is not yet. */
async function device(client, store, owner) {
  let { keys } = await deviceKeysIn(store, owner);
  const mine = await client.devices().catch((e) => {
    if (e instanceof GatewayError && e.status === 404) return undefined;
    throw e;
  });
  const known = mine?.device(keys.deviceId);
  if (known?.revoked) {
    // A revoked id is spent: this browser becomes a new device.
    await store.delete(`device:${owner}`);
    ({ keys } = await deviceKeysIn(store, owner));
    notice('Denne nettleseren var trukket tilbake som enhet og er registrert på nytt. Eldre meldinger kan ikke leses her.');
  }
  if (!known || known.revoked) await client.publishDevice(keys);
  return keys;
}

// --- the views --------------------------------------------------------------------------

class App {
  constructor(client, keys, me) {
    this.client = client;
    this.keys = keys;
    this.me = me;
    this.patient = me.kind === 'patient';
    this.episodes = [];
    this.open = undefined; // the episode shown
    this.shown = new Set(); // message ids on the page
    this.directories = new Map();
    this.unread = new Map();
  }

  async directory(episode, fresh = false) {
    if (fresh || !this.directories.has(episode)) this.directories.set(episode, await this.client.episodeKeys(episode, true));
    return this.directories.get(episode);
  }

  async render() {
    this.episodes = (await this.client.episodes()).episodes;
    if (this.patient) {
      // The newest active treatment (a patient rarely has more than one at a time).
      const newest = [...this.episodes].sort((a, b) => b.created_at_ms - a.created_at_ms);
      const episode = newest.find((e) => e.state === 'active') ?? newest[0];
      if (!episode) {
        main.replaceChildren(el('h1', {}, 'Ingen behandling'), el('p', {}, 'Du har ingen aktiv behandling.'));
        return;
      }
      return this.showEpisode(episode);
    }
    return this.showCaseload();
  }

  async showCaseload() {
    const rows = [];
    for (const e of this.episodes) {
      // One episode's count that cannot be read leaves a dash, not an empty page.
      const unread = await this.client.receipts(e.id).then((r) => r.unread ?? 0, () => undefined);
      this.unread.set(e.id, unread ?? 0);
      rows.push(el('tr', { 'data-episode': e.id },
        el('td', {}, el('a', { href: `#${e.id}`, onclick: (ev) => (ev.preventDefault(), this.showEpisode(e)) }, `Pasient …${e.patient.slice(-3)}`)),
        el('td', {}, e.programme),
        el('td', {}, e.state === 'active' ? 'Aktiv' : e.state),
        el('td', {}, el('span', { class: unread ? 'badge' : 'badge zero', 'data-unread': e.id }, unread === undefined ? '–' : String(unread)), el('span', { class: 'sr-only' }, ' uleste')),
      ));
    }
    this.open = undefined;
    main.replaceChildren(
      el('h1', {}, 'Pasientliste'),
      el('table', {},
        el('caption', { class: 'sr-only' }, 'Dine pasienter, med uleste meldinger'),
        el('thead', {}, el('tr', {}, el('th', { scope: 'col' }, 'Pasient'), el('th', { scope: 'col' }, 'Program'), el('th', { scope: 'col' }, 'Status'), el('th', { scope: 'col' }, 'Uleste'))),
        el('tbody', {}, rows),
      ),
    );
  }

  async showEpisode(episode) {
    this.open = episode;
    this.shown.clear();
    const thread = el('ol', { class: 'thread', id: 'thread', 'aria-live': 'polite', 'aria-label': 'Meldinger' });
    const therapist = episode.care_team.find((m) => m.role === 'therapist') ?? episode.care_team[0];
    const other = this.patient ? `clinician:${therapist?.hpr_number}` : `patient:${episode.patient}`;
    const safety = el('output', { class: 'safety', id: 'safety-number' });
    const parts = [
      this.patient ? el('h1', {}, 'Din behandling') : el('h1', {}, `Pasient …${episode.patient.slice(-3)}`),
      this.patient ? undefined : el('p', {}, el('a', { href: '#', onclick: (ev) => (ev.preventDefault(), this.showCaseload()) }, '← Tilbake til pasientlisten')),
      el('p', { class: 'muted' }, `Program: ${episode.programme}`),
      el('h2', {}, 'Meldinger'),
      thread,
      this.composer(episode),
      this.patient ? this.questionnaire(episode) : undefined,
      el('h2', {}, 'Sikkerhetsnummer'),
      el('div', { class: 'card' },
        el('p', {}, this.patient
          ? 'Sammenlign dette nummeret med behandleren din ved neste time. Er det likt, er det bare dere to og journalen som kan lese meldingene.'
          : 'Sammenlign dette nummeret med pasienten ved neste time.'),
        el('p', { class: 'row' },
          el('button', { type: 'button', class: 'secondary', id: 'show-safety', onclick: async () => {
            try {
              safety.textContent = (await this.client.safetyNumber(this.keys, episode.id, other)).number;
            } catch (e) {
              safety.textContent = explain(e);
            }
          } }, 'Vis sikkerhetsnummer'),
          safety,
        ),
      ),
    ];
    main.replaceChildren(...parts.filter(Boolean));
    // What the stream has already delivered for this episode is shown again from history.
    const { messages } = await this.client.history(this.keys, episode.id);
    for (const m of messages) this.show(m);
    await this.markRead(episode.id);
  }

  composer(episode) {
    const text = el('textarea', { id: 'compose-text', name: 'text', required: true });
    const kind = this.patient ? undefined : el('select', { id: 'compose-kind', name: 'kind' },
      el('option', { value: 'feedback' }, 'Tilbakemelding'),
      el('option', { value: 'message' }, 'Melding'));
    const status = el('p', { class: 'muted', id: 'compose-status', 'aria-live': 'polite' });
    return el('form', { class: 'card', id: 'compose', onsubmit: async (ev) => {
      ev.preventDefault();
      if (blocked) return;
      const button = ev.target.querySelector('button');
      button.disabled = true;
      status.textContent = 'Krypterer og sender …';
      try {
        const receipt = await this.client.send(this.keys, episode.id, kind?.value ?? 'message', textContent(text.value));
        text.value = '';
        status.textContent = `Sendt (${time(receipt.created_at_ms)}).`;
      } catch (e) {
        status.textContent = explain(e);
        if (e instanceof DirectoryError) raise(explain(e));
      } finally {
        button.disabled = blocked;
      }
    } },
    el('label', { for: 'compose-text' }, this.patient ? 'Skriv til behandleren din' : 'Svar til pasienten'),
    text,
    el('p', { class: 'row' }, kind ? el('label', { for: 'compose-kind', class: 'sr-only' }, 'Type') : undefined, kind, el('button', { type: 'submit' }, 'Send')),
    status);
  }

  questionnaire(episode) {
    const fieldsets = PHQ9.map((item, i) => el('fieldset', {},
      el('legend', {}, `${i + 1}. ${item}`),
      el('div', { class: 'options' }, ANSWERS.map((answer, value) => el('label', {},
        el('input', { type: 'radio', name: `phq9-${i}`, value, required: true }), answer))),
    ));
    const status = el('p', { id: 'phq9-status', 'aria-live': 'polite' });
    return el('section', { 'aria-labelledby': 'phq9-heading' },
      el('h2', { id: 'phq9-heading' }, 'Ukens spørreskjema (PHQ-9)'),
      el('form', { class: 'card', id: 'phq9', onsubmit: async (ev) => {
        ev.preventDefault();
        if (blocked) return;
        const form = ev.target;
        const items = PHQ9.map((_, i) => Number(new FormData(form).get(`phq9-${i}`)));
        form.querySelector('button').disabled = true;
        try {
          await this.client.send(this.keys, episode.id, 'questionnaire-response', questionnaireContent('PHQ-9', items));
          status.textContent = items[8] > 0
            ? 'Takk for svarene. Behandleren din får beskjed om svaret på spørsmål 9. Trenger du hjelp nå, ring 113.'
            : 'Takk for svarene. Behandleren din ser dem.';
          form.reset();
        } catch (e) {
          status.textContent = explain(e);
        } finally {
          form.querySelector('button').disabled = blocked;
        }
      } },
      el('p', {}, 'Hvor ofte har du vært plaget av følgende de siste to ukene?'),
      fieldsets,
      el('button', { type: 'submit' }, 'Send svar'),
      status),
    );
  }

  /** Puts one opened (or refused) message on the page, once. */
  show(received) {
    if (this.shown.has(received.id)) return;
    this.shown.add(received.id);
    const thread = document.getElementById('thread');
    if (!thread) return;
    const mine = received.senderDevice === this.keys.deviceId;
    const owner = received.senderOwner ?? '';
    const who = mine ? 'Du'
      : owner.startsWith('clinician:') ? (this.patient ? 'Behandleren din' : `Behandler (HPR ${owner.slice(10)})`)
      : owner.startsWith('patient:') ? 'Pasienten'
      : owner.startsWith('journal:') ? 'Klinikkens journalsystem'
      : 'Ukjent avsender';
    let body;
    let state = 'ok';
    let cls = `message ${received.kind}${mine ? ' mine' : ''}`;
    if (received.error) {
      state = 'invalid';
      cls += ' invalid';
      body = el('p', { class: 'body', role: 'alert' }, el('strong', {}, 'Vises ikke: '), explain(received.error));
    } else {
      try {
        const content = parseContent(received.kind, received.opened.payload);
        if ('questionnaire' in content) {
          const { instrument, items } = content.questionnaire;
          const sum = items.reduce((a, b) => a + b, 0);
          body = el('p', { class: 'body' }, `${instrument} besvart: sum ${sum} av ${items.length * 3}` + (instrument === 'PHQ-9' ? `, spørsmål 9: ${items[8]}` : ''));
        } else {
          body = el('p', { class: 'body' }, content.text);
        }
      } catch {
        body = el('p', { class: 'body' }, new TextDecoder().decode(received.opened.payload));
      }
      if (received.kind === 'notice' && received.audience === 'care-team') {
        cls += ' alert';
        const text = body.textContent.replace(/^Risikovarsel:\s*/, '');
        body = el('div', {}, el('p', { class: 'body', role: 'alert' }, el('strong', {}, 'Risikovarsel: '), text));
      }
    }
    const item = el('li', { class: cls, 'data-id': received.id, 'data-seq': received.seq, 'data-kind': received.kind, 'data-state': state },
      el('p', { class: 'meta' }, `${who} · ${KIND[received.kind] ?? received.kind} · ${time(received.createdAtMs)}`),
      body);
    const after = [...thread.children].find((li) => Number(li.dataset.seq) > received.seq);
    thread.insertBefore(item, after ?? null);
  }

  async markRead(episode) {
    const seqs = [...document.querySelectorAll('#thread li')].map((li) => Number(li.dataset.seq));
    if (seqs.length > 0) await this.client.markReceipts(episode, { deliveredUpTo: Math.max(...seqs), readUpTo: Math.max(...seqs) }).catch(() => undefined);
  }

  /** Opens the event stream and follows it for as long as the page is open; resolves once it is open. */
  follow() {
    return new Promise((opened) => {
      const onState = (state) => {
        document.body.dataset.stream = state;
        if (state !== 'reconnecting') opened();
      };
      this.loop(onState).catch((e) => {
        opened();
        if (e instanceof GatewayError && e.status === 401) raise('Innloggingen er utløpt. Last siden på nytt for å logge inn igjen.');
        else if (e instanceof StreamEndedError && e.code === 'device-revoked') {
          raise('Denne nettleseren er trukket tilbake som enhet. Last siden på nytt for å registrere den igjen.');
        } else if (e instanceof StreamEndedError) raise('Du er logget ut, eller innloggingen er utløpt. Last siden på nytt for å logge inn igjen.');
        else raise(explain(e));
      });
    });
  }

  async loop(onState) {
    for await (const event of this.client.events({ onState, device: this.keys.deviceId })) {
      if (event.type !== 'message') continue;
      const { entry } = event;
      if (this.open?.id === entry.episode) {
        let received = await this.client.open(this.keys, await this.directory(entry.episode), entry.episode, entry.message);
        if (received.error?.code === 'unknown-signer') {
          received = await this.client.open(this.keys, await this.directory(entry.episode, true), entry.episode, entry.message);
        }
        this.show(received);
        if (received.senderDevice !== this.keys.deviceId) await this.markRead(entry.episode);
      } else if (!this.patient && entry.message.sender.device !== this.keys.deviceId) {
        const n = (this.unread.get(entry.episode) ?? 0) + 1;
        this.unread.set(entry.episode, n);
        const badge = document.querySelector(`[data-unread="${entry.episode}"]`);
        if (badge) {
          badge.textContent = String(n);
          badge.className = 'badge';
        }
      }
    }
  }
}

start().catch((e) => {
  main.replaceChildren(el('p', { class: 'muted' }, 'Siden kan ikke brukes før dette er løst.'));
  raise(explain(e));
});
