// The mesh web console: a single-page app over the message hospital's admin API.
//
// Plain JavaScript, no build step, no dependencies. Pages are chosen by the URL hash
// (#/dead-letters, #/groups, #/messages/<id>, #/jobs, #/stats, #/audit, #/where).
// Authentication is the HttpOnly `mesh_session` cookie set by POST /console/login;
// every change is sent with `X-CSRF-Token` equal to the `mesh_csrf` cookie.
//
// Safety rule: data from the server is only ever put into the page as text
// (textContent, text nodes, attribute values), never parsed as markup.
'use strict';

(function () {
  const API = '/v1/admin';
  const POLL_MS = 500;

  // ---------- small DOM helpers ----------

  /** Creates an element; strings among the children become text nodes. */
  function h(tag, props, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === 'on') {
        for (const [event, fn] of Object.entries(value)) el.addEventListener(event, fn);
      } else if (key === 'testid') {
        el.dataset.testid = value;
      } else if (key === 'class') {
        el.className = value;
      } else if (key === 'value') {
        el.value = value;
      } else if (key === 'checked') {
        el.checked = Boolean(value);
      } else {
        el.setAttribute(key, value === true ? '' : String(value));
      }
    }
    append(el, children);
    return el;
  }

  /** Replaces an element's children (null/undefined/false children are skipped). */
  function fill(el, ...children) {
    el.replaceChildren();
    return append(el, children);
  }

  function append(el, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function fmtTime(iso) {
    if (!iso) return '';
    const s = String(iso);
    const m = s.match(/^(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)/);
    return m ? `${m[1]} ${m[2]}Z` : s;
  }

  function timeEl(iso) {
    return iso ? h('time', { datetime: iso, title: iso }, fmtTime(iso)) : '';
  }

  function fmtBytes(n) {
    if (typeof n !== 'number' || n < 0) return String(n);
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    let v = n;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i += 1;
    }
    return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
  }

  function short(text, max) {
    const s = String(text || '');
    return s.length > max ? `${s.slice(0, max - 1)}…` : s;
  }

  function isUuid(s) {
    return /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(String(s || ''));
  }

  function messageLink(id, text, testid) {
    return h('a', { href: `#/messages/${encodeURIComponent(id)}`, testid }, text || id);
  }

  function listLink(filter, text) {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(filter)) if (v) params.set(k, v);
    return h('a', { href: `#/dead-letters?${params}` }, text);
  }

  function badge(text, kind) {
    return h('span', { class: `badge badge-${kind || text}` }, text);
  }

  /** A table: `columns` are header labels, `rows` arrays of cells (text or nodes). */
  function table(testid, columns, rows, rowProps) {
    const head = h('thead', null, h('tr', null, columns.map((c) => h('th', null, c))));
    const body = h('tbody');
    rows.forEach((cells, i) => {
      const props = rowProps ? rowProps(i) : null;
      body.append(h('tr', props, cells.map((c) => h('td', null, c))));
    });
    if (rows.length === 0) {
      body.append(h('tr', { class: 'empty' }, h('td', { colspan: columns.length }, 'Nothing here.')));
    }
    return h('table', { testid }, head, body);
  }

  /** Key/value rows. */
  function facts(testid, pairs) {
    return h('table', { class: 'facts', testid },
      h('tbody', null, pairs.map(([k, v]) => h('tr', { 'data-key': k }, h('th', null, k), h('td', null, v)))));
  }

  // ---------- session and API ----------

  function cookie(name) {
    for (const part of document.cookie.split(';')) {
      const i = part.indexOf('=');
      if (i > 0 && part.slice(0, i).trim() === name) return part.slice(i + 1).trim();
    }
    return '';
  }

  const loggedIn = () => cookie('mesh_csrf') !== '';

  class ApiError extends Error {
    constructor(status, problem) {
      const p = problem || {};
      super(p.detail ? `${p.title || 'Error'}: ${p.detail}` : (p.title || `HTTP ${status}`));
      this.status = status;
      this.problem = p;
    }
  }

  async function api(method, path, body) {
    const headers = { Accept: 'application/json' };
    const init = { method, headers, credentials: 'same-origin', cache: 'no-store' };
    if (method !== 'GET') headers['X-CSRF-Token'] = cookie('mesh_csrf');
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    const text = await response.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (_) {
        data = { title: `HTTP ${response.status}`, detail: short(text, 200) };
      }
    }
    if (response.status === 401) {
      showLogin('Your session has ended: sign in again.');
      throw new ApiError(401, data);
    }
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
    const s = q.toString();
    return s ? `?${s}` : '';
  }

  // ---------- chrome: flash, login, navigation ----------

  const flashEl = () => document.getElementById('flash');

  function flash(message, kind) {
    const el = flashEl();
    el.textContent = message;
    el.className = `flash flash-${kind || 'info'}`;
    el.hidden = !message;
  }

  function flashError(err) {
    if (err instanceof ApiError && err.status === 401) return;
    flash(err instanceof Error ? err.message : String(err), 'error');
  }

  function showLogin(message) {
    stopPolling();
    document.getElementById('nav').hidden = true;
    document.getElementById('app-view').hidden = true;
    document.getElementById('app-view').replaceChildren();
    document.getElementById('login-view').hidden = false;
    const error = document.getElementById('login-error');
    error.textContent = message || '';
    error.hidden = !message;
    flash('');
    document.getElementById('login-email').focus();
  }

  function showApp() {
    document.getElementById('login-view').hidden = true;
    document.getElementById('nav').hidden = false;
    document.getElementById('app-view').hidden = false;
  }

  async function login(event) {
    event.preventDefault();
    const form = event.target;
    const error = document.getElementById('login-error');
    error.hidden = true;
    const button = form.querySelector('button[type=submit]');
    button.disabled = true;
    try {
      const response = await fetch('/console/login', {
        method: 'POST',
        credentials: 'same-origin',
        headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
        body: JSON.stringify({ email: form.email.value, password: form.password.value }),
      });
      if (!response.ok) {
        let problem = {};
        try {
          problem = await response.json();
        } catch (_) { /* not JSON */ }
        const message = response.status === 403
          ? 'This account is not an administrator.'
          : (problem.detail || problem.title || `Sign-in failed (HTTP ${response.status}).`);
        error.textContent = message;
        error.hidden = false;
        return;
      }
      form.reset();
      if (!location.hash || location.hash === '#' || location.hash === '#/') {
        location.hash = '#/dead-letters';
      }
      route();
    } catch (err) {
      error.textContent = `Sign-in failed: ${err.message}`;
      error.hidden = false;
    } finally {
      button.disabled = false;
    }
  }

  async function logout() {
    try {
      await fetch('/console/logout', {
        method: 'POST',
        credentials: 'same-origin',
        headers: { 'X-CSRF-Token': cookie('mesh_csrf') },
      });
    } finally {
      showLogin('Signed out.');
    }
  }

  // ---------- rendering plumbing ----------

  let renderSeq = 0;
  let pollTimer = null;

  function stopPolling() {
    if (pollTimer !== null) {
      clearTimeout(pollTimer);
      pollTimer = null;
    }
  }

  /** Replaces the page; returns a function telling whether this render is still current. */
  function page(title, ...children) {
    renderSeq += 1;
    const mine = renderSeq;
    stopPolling();
    flash('');
    const view = document.getElementById('app-view');
    fill(view, h('h1', { testid: 'page-title' }, title), ...children.flat());
    return () => mine === renderSeq;
  }

  function markNav(name) {
    for (const a of document.querySelectorAll('#nav a')) {
      a.classList.toggle('active', a.dataset.page === name);
    }
  }

  /**
   * An action form asking for a reason (and, per action, more fields). `fields` are
   * extra elements; `submit(reason, form)` does the work. Only one panel is open at a
   * time, in `box`.
   */
  function actionPanel(box, title, submitLabel, fields, submit) {
    const reason = h('input', {
      type: 'text', name: 'reason', required: true, maxlength: 500,
      placeholder: 'Why? (kept in the audit log)', testid: 'reason', id: 'action-reason',
    });
    const error = h('p', { class: 'error', testid: 'action-error', hidden: true });
    const confirm = h('button', { type: 'submit', class: 'primary', testid: 'confirm-action' }, submitLabel);
    const cancel = h('button', {
      type: 'button', class: 'quiet', testid: 'cancel-action',
      on: { click: () => fill(box) },
    }, 'Cancel');
    const form = h('form', {
      class: 'panel', testid: 'action-panel',
      on: {
        submit: async (event) => {
          event.preventDefault();
          error.hidden = true;
          if (!reason.value.trim()) {
            error.textContent = 'A reason is required.';
            error.hidden = false;
            return;
          }
          confirm.disabled = true;
          try {
            await submit(reason.value.trim(), form);
          } catch (err) {
            error.textContent = err instanceof Error ? err.message : String(err);
            error.hidden = false;
          } finally {
            confirm.disabled = false;
          }
        },
      },
    },
    h('h2', null, title),
    fields,
    h('label', { for: 'action-reason' }, 'Reason'),
    reason,
    h('div', { class: 'buttons' }, confirm, cancel),
    error);
    fill(box, form);
    reason.focus();
    return form;
  }

  /** Shows a bulk result; polls its job until it is done, then calls `onDone`. */
  function showBulkResult(box, result, current, onDone) {
    if (result.dry_run || !result.job) {
      fill(box, h('div', { class: 'panel', testid: 'action-result' },
        result.dry_run
          ? `Dry run: ${result.matched} dead letter(s) match; nothing was changed.`
          : `${result.matched} dead letter(s) matched; nothing to do.`));
      return;
    }
    showJob(box, result.job, current, onDone);
  }

  function jobFacts(job) {
    return facts('job-facts', [
      ['Job', h('a', { href: `#/jobs/${encodeURIComponent(job.id)}` }, job.id)],
      ['Kind', job.kind],
      ['Progress', h('span', { testid: 'job-progress' },
        `${job.done} of ${job.total} done, ${job.skipped} skipped, ${job.failed} failed`)],
      ['Rate', job.rate_per_sec ? `${job.rate_per_sec}/s` : 'no limit'],
      ['Reason', job.reason],
      ['Actor', job.actor],
      ['Created', timeEl(job.created_at)],
      ['Finished', timeEl(job.finished_at)],
      ['Error', job.error || ''],
    ]);
  }

  function showJob(box, job, current, onDone) {
    const status = h('span', { class: `badge badge-${job.status}`, testid: 'job-status' }, job.status);
    const progress = h('progress', { max: Math.max(job.total, 1), value: job.done + job.skipped + job.failed });
    fill(box, h('div', { class: 'panel', testid: 'job-panel', 'data-job-id': job.id },
      h('h2', null, `Job `, status), progress, jobFacts(job)));
    if (job.status !== 'running') {
      if (onDone) onDone(job);
      return;
    }
    stopPolling();
    pollTimer = setTimeout(async () => {
      pollTimer = null;
      if (!current()) return;
      try {
        const next = await api('GET', `${API}/dlq/jobs/${encodeURIComponent(job.id)}`);
        if (current()) showJob(box, next, current, onDone);
      } catch (err) {
        if (!current()) return;
        flashError(err);
        // Keep polling: a transient failure must not leave the page stuck on "running".
        showJob(box, job, current, onDone);
      }
    }, POLL_MS);
  }

  // ---------- pages ----------

  const FILTERS = [
    ['durable', 'Durable', 'filter-durable'],
    ['subject', 'Subject', 'filter-subject'],
    ['message_type', 'Type', 'filter-type'],
    ['error', 'Error text', 'filter-error'],
    ['fingerprint', 'Fingerprint', 'filter-fingerprint'],
  ];

  function isoToLocalInput(iso) {
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return '';
    const pad = (n) => String(n).padStart(2, '0');
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }

  function localInputToIso(value) {
    if (!value) return '';
    const d = new Date(value);
    return Number.isNaN(d.getTime()) ? '' : d.toISOString();
  }

  function select(name, testid, options, value) {
    return h('select', { name, testid, id: `f-${name}` },
      options.map(([v, label]) => h('option', { value: v, selected: v === value }, label)));
  }

  async function deadLetters(params) {
    markNav('dead-letters');
    const inputs = FILTERS.map(([name, label, testid]) => [label, name,
      h('input', { type: 'text', name, id: `f-${name}`, testid, value: params.get(name) || '' })]);
    const kind = select('error_kind', 'filter-kind',
      [['', 'any'], ['transient', 'transient'], ['permanent', 'permanent']], params.get('error_kind') || '');
    const status = select('status', 'filter-status',
      [['', 'any'], ['parked', 'parked'], ['replayed', 'replayed'], ['discarded', 'discarded']],
      params.get('status') || '');
    const from = h('input', { type: 'datetime-local', name: 'from', id: 'f-from', testid: 'filter-from',
      value: params.get('from') ? isoToLocalInput(params.get('from')) : '' });
    const to = h('input', { type: 'datetime-local', name: 'to', id: 'f-to', testid: 'filter-to',
      value: params.get('to') ? isoToLocalInput(params.get('to')) : '' });
    const field = (label, name, input) => h('div', { class: 'field' }, h('label', { for: `f-${name}` }, label), input);
    const form = h('form', {
      class: 'filters', testid: 'dl-filters',
      on: {
        submit: (event) => {
          event.preventDefault();
          const next = new URLSearchParams();
          for (const [, name, input] of inputs) if (input.value.trim()) next.set(name, input.value.trim());
          if (kind.value) next.set('error_kind', kind.value);
          if (status.value) next.set('status', status.value);
          if (localInputToIso(from.value)) next.set('from', localInputToIso(from.value));
          if (localInputToIso(to.value)) next.set('to', localInputToIso(to.value));
          const target = `#/dead-letters?${next}`;
          if (location.hash === target) route(); else location.hash = target;
        },
      },
    },
    inputs.map(([label, name, input]) => field(label, name, input)),
    field('Kind', 'error_kind', kind),
    field('Status', 'status', status),
    field('From', 'from', from),
    field('To', 'to', to),
    h('div', { class: 'field buttons' },
      h('button', { type: 'submit', class: 'primary', testid: 'filter-apply' }, 'Filter'),
      h('a', { href: '#/dead-letters', class: 'button quiet', testid: 'filter-reset' }, 'Reset')));
    const results = h('div', { testid: 'dl-results' }, h('p', { class: 'muted' }, 'Loading…'));
    const current = page('Dead letters', form, results);

    const q = {};
    for (const [k, v] of params) q[k] = v;
    q.limit = q.limit || '50';
    try {
      const pageData = await api('GET', `${API}/dlq/messages${query(q)}`);
      if (!current()) return;
      const rows = pageData.items.map((d) => [
        messageLink(d.id, timeEl(d.parked_at), 'dl-link'),
        d.diagnosis.durable,
        d.diagnosis.subject,
        d.diagnosis.message_type || '',
        badge(d.diagnosis.error_kind),
        h('span', { title: d.diagnosis.error }, short(d.diagnosis.error, 90)),
        String(d.diagnosis.deliveries),
        badge(d.status),
        String(d.replays),
      ]);
      const pager = h('div', { class: 'pager' });
      if (params.get('cursor')) {
        const first = new URLSearchParams(params);
        first.delete('cursor');
        pager.append(h('a', { href: `#/dead-letters?${first}`, class: 'button quiet', testid: 'dl-first' }, '« First page'));
      }
      if (pageData.next_cursor) {
        const next = new URLSearchParams(params);
        next.set('cursor', pageData.next_cursor);
        pager.append(h('a', { href: `#/dead-letters?${next}`, class: 'button', testid: 'dl-next' }, 'Next page »'));
      }
      fill(results,
        h('p', { class: 'muted', testid: 'dl-count' }, `${pageData.items.length} shown${pageData.next_cursor ? ', more on the next page' : ''}`),
        table('dl-table', ['Parked', 'Durable', 'Subject', 'Type', 'Kind', 'Error', 'Deliveries', 'Status', 'Replays'],
          rows, (i) => ({ testid: 'dl-row', 'data-id': pageData.items[i].id })),
        pager);
    } catch (err) {
      if (!current()) return;
      fill(results);
      flashError(err);
    }
  }

  async function groups() {
    markNav('groups');
    const panel = h('div', { testid: 'group-action' });
    const list = h('div', null, h('p', { class: 'muted' }, 'Loading…'));
    const current = page('Failure groups', h('p', { class: 'muted' },
      'Dead letters of one consumer with the same cause (error kind and normalized error text).'), panel, list);

    async function load() {
      try {
        const data = await api('GET', `${API}/dlq/groups`);
        if (!current()) return;
        const rows = data.items.map((g) => [
          h('span', { testid: 'group-durable' }, g.durable),
          badge(g.error_kind),
          h('span', { title: g.sample_error }, short(g.sample_error, 100)),
          h('span', { testid: 'group-parked' }, String(g.parked)),
          String(g.total),
          timeEl(g.first_seen),
          timeEl(g.last_seen),
          h('span', { class: 'actions' },
            listLink({ durable: g.durable, fingerprint: g.fingerprint }, 'Messages'),
            h('button', {
              type: 'button', testid: 'replay-group', disabled: g.parked === 0,
              on: { click: () => replayGroup(g) },
            }, 'Replay group'),
            h('button', {
              type: 'button', class: 'danger', testid: 'discard-group', disabled: g.parked === 0,
              on: { click: () => discardGroup(g) },
            }, 'Discard group')),
        ]);
        fill(list, table('group-table',
          ['Durable', 'Kind', 'Sample error', 'Parked', 'Total', 'First seen', 'Last seen', ''],
          rows, (i) => ({
            testid: 'group-row',
            'data-durable': data.items[i].durable,
            'data-fingerprint': data.items[i].fingerprint,
          })));
      } catch (err) {
        if (current()) flashError(err);
      }
    }

    function groupSelection(g) {
      return { group: { durable: g.durable, fingerprint: g.fingerprint } };
    }

    function replayGroup(g) {
      const dry = h('input', { type: 'checkbox', name: 'dry_run', id: 'action-dry', testid: 'dry-run' });
      const rate = h('input', { type: 'number', name: 'rate', id: 'action-rate', min: 0, step: 1, testid: 'rate', placeholder: 'default' });
      actionPanel(panel, `Replay ${g.parked} parked message(s) of ${g.durable}`, 'Replay', [
        h('p', { class: 'muted' }, short(g.sample_error, 200)),
        h('div', { class: 'inline' }, dry, h('label', { for: 'action-dry' }, 'Dry run (count only)')),
        h('label', { for: 'action-rate' }, 'Replays per second (0 = no limit)'), rate,
      ], async (reason) => {
        const body = { selection: groupSelection(g), dry_run: dry.checked, reason };
        if (rate.value !== '') body.rate_per_sec = Number(rate.value);
        const result = await api('POST', `${API}/dlq/replay`, body);
        showBulkResult(panel, result, current, load);
      });
    }

    function discardGroup(g) {
      const dry = h('input', { type: 'checkbox', name: 'dry_run', id: 'action-dry', testid: 'dry-run' });
      actionPanel(panel, `Discard ${g.parked} parked message(s) of ${g.durable}`, 'Discard', [
        h('p', { class: 'muted' }, 'Discarded messages are kept in the index but never delivered again.'),
        h('div', { class: 'inline' }, dry, h('label', { for: 'action-dry' }, 'Dry run (count only)')),
      ], async (reason) => {
        const result = await api('POST', `${API}/dlq/discard`, { selection: groupSelection(g), dry_run: dry.checked, reason });
        showBulkResult(panel, result, current, load);
      });
    }

    await load();
  }

  async function detail(id) {
    markNav('dead-letters');
    const panel = h('div', { testid: 'detail-action' });
    const box = h('div', null, h('p', { class: 'muted' }, 'Loading…'));
    const current = page('Dead letter', panel, box);

    async function load() {
      let d;
      try {
        d = await api('GET', `${API}/dlq/messages/${encodeURIComponent(id)}`);
      } catch (err) {
        if (current()) {
          fill(box);
          flashError(err);
        }
        return;
      }
      if (!current()) return;
      render(d);
    }

    function render(d) {
      const dl = d.dead_letter;
      const g = dl.diagnosis;
      const bodyText = d.body === null || d.body === undefined ? '' : JSON.stringify(d.body, null, 2);
      const buttons = h('div', { class: 'buttons' },
        h('button', { type: 'button', testid: 'replay-message', on: { click: () => replay() } }, 'Replay'),
        h('button', { type: 'button', class: 'danger', testid: 'discard-message', on: { click: () => discard() } }, 'Discard'),
        h('button', { type: 'button', testid: 'edit-replay', on: { click: () => editReplay(bodyText) } }, 'Edit & replay'),
        g.message_id ? h('a', { class: 'button quiet', href: `#/where?message_id=${encodeURIComponent(g.message_id)}` }, 'Where is it?') : null);
      fill(box,
        h('p', { class: 'lead' }, h('code', { testid: 'detail-id' }, dl.id), ' ',
          h('span', { testid: 'detail-status' }, badge(dl.status))),
        buttons,
        h('h2', null, 'Diagnosis'),
        facts('diagnosis', [
          ['Service', g.service],
          ['Durable', listLink({ durable: g.durable }, g.durable)],
          ['Stream', `${g.stream} #${g.stream_sequence}`],
          ['Subject', g.subject],
          ['Message id', g.message_id || ''],
          ['Type', g.message_type ? `${g.message_type}${g.schema_version ? ` v${g.schema_version}` : ''}` : ''],
          ['Error kind', badge(g.error_kind)],
          ['Error', h('span', { class: 'pre' }, g.error)],
          ['Deliveries', String(g.deliveries)],
          ['First failure', timeEl(g.first_failure_at)],
          ['Last failure', timeEl(g.last_failure_at)],
          ['Parked', timeEl(dl.parked_at)],
          ['Replays', String(dl.replays)],
          ['Fingerprint', listLink({ durable: g.durable, fingerprint: dl.fingerprint }, dl.fingerprint)],
          ['Park id', dl.park_id],
          ['Trace id', g.trace_id || ''],
          ['Replay of', g.replay_of ? (isUuid(g.replay_of) ? messageLink(g.replay_of) : g.replay_of) : ''],
        ]),
        h('h2', null, 'Body'),
        d.body_error ? h('p', { class: 'error', testid: 'body-error' }, `Cannot decode: ${d.body_error}`) : null,
        h('pre', { class: 'json', testid: 'detail-body' }, bodyText),
        h('details', null, h('summary', null, 'Raw payload (base64)'),
          h('pre', { class: 'wrap', testid: 'detail-payload' }, d.payload_base64)),
        h('h2', null, 'Headers'),
        table('detail-headers', ['Name', 'Value'], d.headers.map((x) => [x.name, h('span', { class: 'pre' }, x.value)])),
        h('h2', null, 'History'),
        table('detail-history', ['Parked', 'Status', 'Error', 'Deliveries'], d.history.map((x) => [
          messageLink(x.id, timeEl(x.parked_at)), badge(x.status), short(x.diagnosis.error, 100), String(x.diagnosis.deliveries),
        ])),
        h('h2', null, 'Audit'),
        auditTable('detail-audit', 'detail-audit-row', d.audit));
    }

    function replay() {
      actionPanel(panel, 'Replay this message to its consumer', 'Replay', [], async (reason) => {
        const result = await api('POST', `${API}/dlq/replay`, { selection: { ids: [id] }, reason });
        showBulkResult(panel, result, current, load);
      });
    }

    function discard() {
      actionPanel(panel, 'Discard this message', 'Discard', [], async (reason) => {
        const result = await api('POST', `${API}/dlq/discard`, { selection: { ids: [id] }, reason });
        showBulkResult(panel, result, current, load);
      });
    }

    function editReplay(bodyText) {
      const text = h('textarea', { name: 'body', id: 'action-body', rows: 16, spellcheck: 'false', testid: 'edit-body' });
      text.value = bodyText || '{}';
      actionPanel(panel, 'Edit the body and replay the edited copy', 'Replay edited copy', [
        h('label', { for: 'action-body' }, 'Body (JSON, checked against the message contract)'), text,
      ], async (reason) => {
        let body;
        try {
          body = JSON.parse(text.value);
        } catch (err) {
          throw new Error(`The body is not valid JSON: ${err.message}`);
        }
        const result = await api('POST', `${API}/dlq/messages/${encodeURIComponent(id)}/edit-replay`, { body, reason });
        const diff = h('pre', { class: 'diff', testid: 'edit-diff' },
          String(result.diff || '').split('\n').map((line) => h('span', {
            class: line.startsWith('+') ? 'add' : line.startsWith('-') ? 'del' : '',
          }, `${line}\n`)));
        fill(panel, h('div', { class: 'panel', testid: 'edit-result' },
          h('h2', null, 'Edited copy replayed'),
          facts('edit-facts', [['New message id', h('code', null, result.message_id)]]),
          diff));
        await load();
      });
    }

    await load();
  }

  function auditTable(testid, rowTestid, entries) {
    return table(testid, ['At', 'Actor', 'Action', 'Target', 'Count', 'Reason', 'Detail'], entries.map((a) => [
      timeEl(a.at),
      h('code', { title: a.actor }, short(a.actor, 13)),
      a.action,
      isUuid(a.target) ? messageLink(a.target) : h('span', { class: 'pre' }, short(a.target, 80)),
      String(a.count),
      a.reason,
      a.detail && Object.keys(a.detail).length
        ? h('details', null, h('summary', null, 'show'), h('pre', { class: 'json' }, JSON.stringify(a.detail, null, 2)))
        : '',
    ]), () => ({ testid: rowTestid }));
  }

  async function audit(params) {
    markNav('audit');
    const box = h('div', null, h('p', { class: 'muted' }, 'Loading…'));
    const current = page('Audit log', box);
    try {
      const data = await api('GET', `${API}/audit${query({ limit: 50, cursor: params.get('cursor') })}`);
      if (!current()) return;
      const pager = h('div', { class: 'pager' });
      if (params.get('cursor')) pager.append(h('a', { href: '#/audit', class: 'button quiet' }, '« Newest'));
      if (data.next_cursor) {
        pager.append(h('a', { href: `#/audit?cursor=${encodeURIComponent(data.next_cursor)}`, class: 'button', testid: 'audit-next' }, 'Older »'));
      }
      fill(box, auditTable('audit-table', 'audit-row', data.items), pager);
    } catch (err) {
      if (current()) flashError(err);
    }
  }

  async function stats() {
    markNav('stats');
    const panel = h('div', { testid: 'consumer-action' });
    const box = h('div', null, h('p', { class: 'muted' }, 'Loading…'));
    const current = page('Stats', panel, box);

    async function load() {
      try {
        const s = await api('GET', `${API}/dlq/stats`);
        if (!current()) return;
        const max = s.dlq_max_bytes > 0 ? s.dlq_max_bytes : 0;
        fill(box,
          h('h2', null, 'Dead-letter stream'),
          facts('dlq-depth', [
            ['Messages', h('span', { testid: 'dlq-messages' }, String(s.dlq_messages))],
            ['Size', `${fmtBytes(s.dlq_bytes)}${max ? ` of ${fmtBytes(max)}` : ' (no limit)'}`],
            ['Fill', max ? h('meter', { min: 0, max, value: s.dlq_bytes, low: max * 0.6, high: max * 0.85, optimum: 0 }) : ''],
          ]),
          h('h2', null, 'Consumers'),
          table('consumer-table',
            ['Durable', 'Stream', 'Pending', 'Ack pending', 'Redelivered', 'Parked', 'Paused', ''],
            s.consumers.map((c) => [
              c.durable, c.stream, String(c.pending), String(c.ack_pending), String(c.redelivered),
              c.parked ? listLink({ durable: c.durable, status: 'parked' }, String(c.parked)) : '0',
              c.paused ? h('span', null, badge('paused'), c.paused_until ? [' until ', timeEl(c.paused_until)] : '') : 'no',
              c.paused
                ? h('button', { type: 'button', testid: 'resume-consumer', on: { click: () => resume(c) } }, 'Resume')
                : h('button', { type: 'button', testid: 'pause-consumer', on: { click: () => pause(c) } }, 'Pause'),
            ]), (i) => ({ testid: 'consumer-row', 'data-durable': s.consumers[i].durable })));
      } catch (err) {
        if (current()) flashError(err);
      }
    }

    function pause(c) {
      const seconds = h('input', { type: 'number', min: 1, step: 1, name: 'seconds', id: 'action-seconds', value: '3600', testid: 'pause-seconds' });
      actionPanel(panel, `Pause ${c.durable}`, 'Pause', [
        h('label', { for: 'action-seconds' }, 'For how many seconds'), seconds,
      ], async (reason) => {
        const body = { reason };
        if (seconds.value) body.seconds = Number(seconds.value);
        await api('POST', `${API}/consumers/${encodeURIComponent(c.durable)}/pause`, body);
        fill(panel);
        flash(`${c.durable} paused.`, 'info');
        await load();
      });
    }

    function resume(c) {
      actionPanel(panel, `Resume ${c.durable}`, 'Resume', [], async (reason) => {
        await api('POST', `${API}/consumers/${encodeURIComponent(c.durable)}/resume`, { reason });
        fill(panel);
        flash(`${c.durable} resumed.`, 'info');
        await load();
      });
    }

    await load();
  }

  async function jobs() {
    markNav('jobs');
    const box = h('div', null, h('p', { class: 'muted' }, 'Loading…'));
    const current = page('Jobs', box);
    try {
      const data = await api('GET', `${API}/dlq/jobs`);
      if (!current()) return;
      fill(box, table('job-table',
        ['Created', 'Kind', 'Status', 'Progress', 'Skipped', 'Failed', 'Reason', 'Finished'],
        data.items.map((j) => [
          h('a', { href: `#/jobs/${encodeURIComponent(j.id)}` }, timeEl(j.created_at)),
          j.kind, badge(j.status), `${j.done} / ${j.total}`, String(j.skipped), String(j.failed),
          short(j.reason, 80), timeEl(j.finished_at),
        ]), () => ({ testid: 'job-row' })));
    } catch (err) {
      if (current()) flashError(err);
    }
  }

  async function job(id) {
    markNav('jobs');
    const box = h('div', null, h('p', { class: 'muted' }, 'Loading…'));
    const current = page('Job', box);
    try {
      const j = await api('GET', `${API}/dlq/jobs/${encodeURIComponent(id)}`);
      if (current()) showJob(box, j, current, null);
    } catch (err) {
      if (current()) flashError(err);
    }
  }

  async function where(params) {
    markNav('where');
    const messageId = h('input', { type: 'text', name: 'message_id', id: 'w-message', testid: 'where-message-id', value: params.get('message_id') || '' });
    const traceId = h('input', { type: 'text', name: 'trace_id', id: 'w-trace', testid: 'where-trace-id', value: params.get('trace_id') || '' });
    const result = h('div', { testid: 'where-result' });
    const form = h('form', {
      class: 'filters', testid: 'where-form',
      on: {
        submit: (event) => {
          event.preventDefault();
          const target = `#/where${query({ message_id: messageId.value.trim(), trace_id: traceId.value.trim() })}`;
          if (location.hash === target) route(); else location.hash = target;
        },
      },
    },
    h('div', { class: 'field' }, h('label', { for: 'w-message' }, 'Message id'), messageId),
    h('div', { class: 'field' }, h('label', { for: 'w-trace' }, 'or trace id'), traceId),
    h('div', { class: 'field buttons' }, h('button', { type: 'submit', class: 'primary', testid: 'where-submit' }, 'Find')));
    const current = page('Where is this message?', form, result);
    if (!params.get('message_id') && !params.get('trace_id')) return;
    try {
      const data = await api('GET', `${API}/dlq/where${query({ message_id: params.get('message_id'), trace_id: params.get('trace_id') })}`);
      if (!current()) return;
      if (data.items.length === 0) {
        fill(result, h('p', { class: 'muted' }, 'No message found.'));
        return;
      }
      fill(result, ...data.items.map((m) => h('section', { class: 'panel', testid: 'where-item' },
        h('h2', null, m.message_id),
        facts('where-facts', [['Stream', `${m.stream} #${m.stream_sequence}`], ['Subject', m.subject]]),
        table('where-consumers', ['Consumer', 'Outcome', 'Detail'],
          m.consumers.map((c) => [c.durable, badge(c.outcome), c.detail || '']),
          () => ({ testid: 'where-consumer-row' })))));
    } catch (err) {
      if (current()) flashError(err);
    }
  }

  // ---------- router ----------

  function route() {
    if (!loggedIn()) {
      showLogin();
      return;
    }
    showApp();
    const hash = location.hash.replace(/^#/, '') || '/dead-letters';
    const q = hash.indexOf('?');
    const path = q >= 0 ? hash.slice(0, q) : hash;
    const params = new URLSearchParams(q >= 0 ? hash.slice(q + 1) : '');
    const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
    switch (parts[0]) {
      case 'dead-letters':
        deadLetters(params);
        break;
      case 'messages':
        if (parts[1]) detail(parts[1]); else location.hash = '#/dead-letters';
        break;
      case 'groups':
        groups();
        break;
      case 'jobs':
        if (parts[1]) job(parts[1]); else jobs();
        break;
      case 'stats':
        stats();
        break;
      case 'audit':
        audit(params);
        break;
      case 'where':
        where(params);
        break;
      default:
        location.hash = '#/dead-letters';
    }
  }

  document.addEventListener('DOMContentLoaded', () => {
    document.getElementById('login-form').addEventListener('submit', login);
    document.getElementById('logout').addEventListener('click', logout);
    window.addEventListener('hashchange', route);
    route();
  });
}());
