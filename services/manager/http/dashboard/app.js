// Programmer Pool dashboard: plain JavaScript, no build step, no third-party code.
//
// Reads the manager's /v1 routes only. Streams (GET /v1/pool/events, GET /v1/tasks/{id}/events)
// are server-sent events read with fetch(), not EventSource: fetch can send the token in the
// Authorization header, so it never appears in a URL (and so in no access log or history). A
// broken task stream is resumed with Last-Event-ID = the last seq shown: no output is lost or
// shown twice. Everything from the server is shown with textContent, never parsed as HTML.
'use strict';

const TOKEN_KEY = 'pas.token';
const $ = (id) => document.getElementById(id);
const SVG = 'http://www.w3.org/2000/svg';

const state = {
  selected: null,      // task id shown in the task panel
  pinned: false,       // the user picked it (else the newest running task is followed)
  follow: null,        // AbortController of the selected task's stream
  lastSeq: 0,
  tasksTimer: null,
  pool: null,          // AbortController of the pool stream
};

function token() { return sessionStorage.getItem(TOKEN_KEY) || ''; }

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (token()) h.Authorization = 'Bearer ' + token();
  return h;
}

function notice(text) {
  const n = $('notice');
  n.textContent = text || '';
  n.hidden = !text;
}

async function failure(response) {
  let message = response.statusText;
  try { message = (await response.json()).message || message; } catch (_) { /* not JSON */ }
  return new Error(response.status + ': ' + message);
}

async function getJson(path) {
  const r = await fetch(path, { headers: headers(), cache: 'no-store' });
  if (!r.ok) throw await failure(r);
  return r.json();
}

// Reads an SSE response body; calls onEvent({id, event, data}) per event. Resolves at its end.
async function readSse(response, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event = { id: null, event: 'message', data: [] };
      for (const line of block.split('\n')) {
        if (line.startsWith(':')) continue; // keep-alive / heartbeat comment
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let v = colon < 0 ? '' : line.slice(colon + 1);
        if (v.startsWith(' ')) v = v.slice(1);
        if (field === 'id') event.id = v;
        else if (field === 'event') event.event = v;
        else if (field === 'data') event.data.push(v);
      }
      if (event.data.length) onEvent({ id: event.id, event: event.event, data: event.data.join('\n') });
    }
  }
}

// Follows an SSE route until `finished()` or `signal` aborts; reconnects after a break with
// Last-Event-ID (backoff 1 s doubling to 10 s).
async function followSse(path, { signal, lastId, onEvent, finished }) {
  let delay = 1000;
  while (!signal.aborted && !finished()) {
    try {
      const extra = { Accept: 'text/event-stream' };
      const id = lastId();
      if (id) extra['Last-Event-ID'] = String(id);
      const r = await fetch(path, { headers: headers(extra), signal, cache: 'no-store' });
      if (!r.ok) throw await failure(r);
      setConnection('live');
      delay = 1000;
      await readSse(r, onEvent);
    } catch (e) {
      if (signal.aborted) return;
      setConnection('reconnecting', e.message);
    }
    if (finished() || signal.aborted) return;
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, 10000);
  }
}

function setConnection(s, why) {
  const c = $('connection');
  c.dataset.state = s;
  c.textContent = s;
  c.title = why || '';
  if (why) notice(why.startsWith('401') ? 'This pool needs a token to read: ' + why : why);
  else notice('');
}

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

// Names as the API spells them, shortened for people: TASK_STATE_RUNNING → running.
function short(name, prefix) {
  return (name || '').replace(prefix, '').toLowerCase() || 'unknown';
}

function usd(nanousd) {
  const n = Number(nanousd || 0) / 1e9;
  return '$' + n.toFixed(n !== 0 && n < 0.01 ? 6 : 2);
}

// ---- pool ----

function renderPool(status) {
  const programmers = status.programmers || [];
  $('pool-summary').textContent =
    `${status.available || 0}/${status.poolSize || 0} available · queue ${status.totalQueueDepth || 0}` +
    ` · manager queue ${status.managerQueueDepth || 0}/${status.managerQueueCapacity || 0}` +
    ` · ${status.usingBackup || 0} on backup · strategy ${status.strategy || ''}`;
  const body = $('programmers').tBodies[0];
  body.replaceChildren(...programmers.map((p) => {
    const breaker = short(p.circuitState, 'CIRCUIT_STATE_');
    const tr = el('tr', {
      'data-id': p.id,
      'data-state': short(p.state, 'PROGRAMMER_STATE_'),
      'data-breaker': breaker,
      'data-backup': p.usingBackup ? 'yes' : 'no',
    });
    tr.append(
      el('td', {}, p.id),
      el('td', { class: 'state' }, short(p.state, 'PROGRAMMER_STATE_')),
      el('td', { class: 'breaker' }, breaker),
      el('td', {}, p.currentLlm || p.primaryLlm || ''),
      el('td', { class: 'backup' }, p.usingBackup ? 'backup' : 'primary'),
      el('td', {}, String(p.queueDepth || 0)),
      el('td', {}, String(p.inFlight || 0)),
      el('td', {}, `${p.completed || 0} / ${p.failed || 0}`),
      el('td', {}, p.paid ? 'paid' : 'free'),
    );
    return tr;
  }));
  renderBudget(status.budget || {});
  renderAlerts(status.alerts || []);
  renderLlms(status.llmStats || []);
}

function renderBudget(b) {
  const limit = Number(b.limitNanousd || 0);
  const spent = Number(b.spentNanousd || 0);
  const reserved = Number(b.reservedNanousd || 0);
  const alert = Number(b.alertThresholdNanousd || 0);
  // Any spend shows (at least 2 units of 300), however small next to the limit.
  const width = (v) => (limit > 0 && v > 0 ? Math.min(300, Math.max(2, (300 * v) / limit)) : 0);
  $('gauge-spent').setAttribute('width', width(spent).toFixed(2));
  $('gauge-reserved').setAttribute('x', width(spent).toFixed(2));
  $('gauge-reserved').setAttribute('width', Math.max(0, width(spent + reserved) - width(spent)).toFixed(2));
  $('gauge-alert').setAttribute('x1', width(alert).toFixed(2));
  $('gauge-alert').setAttribute('x2', width(alert).toFixed(2));
  $('budget-gauge').dataset.fraction = limit > 0 ? String(spent / limit) : '0';
  $('budget-spent').textContent = usd(spent);
  $('budget-spent').dataset.nanousd = String(spent);
  $('budget-reserved').textContent = usd(reserved);
  $('budget-limit').textContent = usd(limit);
  $('budget-alert').textContent = usd(alert);
  $('budget-day').textContent = b.day || '';
}

function renderAlerts(alerts) {
  const list = $('alerts');
  if (!alerts.length) {
    list.replaceChildren(el('li', { class: 'none' }, 'none'));
    return;
  }
  list.replaceChildren(...alerts.map((a) => {
    const li = el('li', { 'data-kind': a.kind });
    li.append(el('strong', {}, a.kind), document.createTextNode(' ' + (a.message || '')));
    return li;
  }));
}

// One row per LLM: p50 and p95 duration bars (scaled to the slowest p95) and a success bar.
function renderLlms(stats) {
  const chart = $('llm-chart');
  $('llm-empty').hidden = stats.length > 0;
  const row = 34;
  chart.setAttribute('viewBox', `0 0 600 ${Math.max(1, stats.length) * row}`);
  const slowest = Math.max(1, ...stats.map((s) => Number(s.p95DurationMs || 0)));
  chart.replaceChildren(...stats.map((s, i) => {
    const g = svg('g', { transform: `translate(0 ${i * row})`, 'data-llm': s.llm });
    const p50 = Number(s.p50DurationMs || 0);
    const p95 = Number(s.p95DurationMs || 0);
    const rate = Number(s.successRate || 0);
    g.append(
      svg('text', { x: 0, y: 14, class: 'label' }, s.llm),
      svg('rect', { x: 220, y: 2, height: 10, width: (200 * p95) / slowest, class: 'p95' }),
      svg('rect', { x: 220, y: 2, height: 10, width: (200 * p50) / slowest, class: 'p50' }),
      svg('text', { x: 220, y: 26, class: 'value' }, `${(p50 / 1000).toFixed(1)} s / ${(p95 / 1000).toFixed(1)} s`),
      svg('rect', { x: 440, y: 2, height: 10, width: 100, class: 'gauge-bg' }),
      svg('rect', { x: 440, y: 2, height: 10, width: 100 * rate, class: 'ok' }),
      svg('text', { x: 440, y: 26, class: 'value' }, `${Math.round(rate * 100)}% of ${s.tasks || 0}`),
    );
    return g;
  }));
}

// (Re)starts the pool stream, e.g. with a new token.
function followPool() {
  if (state.pool) state.pool.abort();
  state.pool = new AbortController();
  const signal = state.pool.signal;
  followSse('/v1/pool/events', {
    signal,
    lastId: () => null, // snapshots: the newest is all that matters
    finished: () => false,
    onEvent: (e) => {
      if (e.event === 'error') { setConnection('error', JSON.parse(e.data).message); return; }
      renderPool(JSON.parse(e.data));
      scheduleTasks();
    },
  });
}

// ---- tasks ----

function scheduleTasks() {
  if (state.tasksTimer) return;
  state.tasksTimer = setTimeout(() => { state.tasksTimer = null; loadTasks(); }, 300);
}

async function loadTasks() {
  let page;
  try { page = await getJson('/v1/tasks?pageSize=50'); } catch (e) { notice(e.message); return; }
  const tasks = page.tasks || [];
  $('tasks').tBodies[0].replaceChildren(...tasks.map((t) => {
    const s = short(t.state, 'TASK_STATE_');
    const tr = el('tr', { 'data-task': t.taskId, 'data-state': s });
    if (t.taskId === state.selected) tr.classList.add('selected');
    tr.append(
      el('td', {}, t.taskId),
      el('td', { class: 'state' }, s),
      el('td', {}, t.programmerId || ''),
      el('td', {}, t.runId || ''),
      el('td', {}, t.createdMs ? new Date(Number(t.createdMs)).toLocaleTimeString() : ''),
    );
    tr.addEventListener('click', () => select(t.taskId, true));
    return tr;
  }));
  // Unless the user picked one, follow the newest running (else queued) task — once the one
  // followed now has finished (a running task is never swapped for a newer one).
  const followed = $('task-state').dataset.state;
  if (!state.pinned && !(state.selected && (followed === 'running' || followed === 'queued'))) {
    const live = tasks.find((t) => t.state === 'TASK_STATE_RUNNING') || tasks.find((t) => t.state === 'TASK_STATE_QUEUED');
    if (live && live.taskId !== state.selected) select(live.taskId, false);
  }
}

function select(taskId, pinned) {
  state.pinned = pinned;
  if (state.follow) state.follow.abort();
  state.selected = taskId;
  state.lastSeq = 0;
  for (const tr of $('tasks').tBodies[0].rows) tr.classList.toggle('selected', tr.dataset.task === taskId);
  $('task-id').textContent = taskId;
  $('output').textContent = '';
  $('diff').textContent = '';
  $('task-summary').textContent = '';
  setTaskState('queued');
  const controller = new AbortController();
  state.follow = controller;
  let done = false;
  followSse('/v1/tasks/' + encodeURIComponent(taskId) + '/events', {
    signal: controller.signal,
    lastId: () => state.lastSeq,
    finished: () => done,
    onEvent: (e) => {
      if (e.event === 'error') { notice(JSON.parse(e.data).message); done = true; return; }
      const event = JSON.parse(e.data);
      const seq = Number(event.seq || 0);
      if (seq <= state.lastSeq) return; // never shown twice
      state.lastSeq = seq;
      if (showEvent(event)) done = true;
    },
  });
}

function setTaskState(s) {
  const t = $('task-state');
  t.textContent = s;
  t.dataset.state = s;
  $('cancel-task').hidden = !token() || !(s === 'queued' || s === 'running');
}

// Shows one task event; true for the result (the stream's last).
function showEvent(event) {
  const out = $('output');
  if (event.queued) {
    setTaskState('queued');
    $('task-summary').textContent = `waiting in the ${event.queued.queue} queue at ${event.queued.position || 1}: ${event.queued.reason || ''}`;
  } else if (event.assigned) {
    setTaskState('running');
    const a = event.assigned;
    $('task-summary').textContent = `on ${a.programmerId} with ${a.llm}${a.usingBackup ? ' (backup)' : ''}`;
  } else if (event.output) {
    setTaskState('running');
    const span = el('span', { class: event.output.stream === 'stderr' ? 'stderr' : 'stdout' }, event.output.text || '');
    const atBottom = out.scrollTop + out.clientHeight >= out.scrollHeight - 4;
    out.append(span);
    if (atBottom) out.scrollTop = out.scrollHeight;
  } else if (event.failover) {
    out.append(el('span', { class: 'note' }, `\n[failover ${event.failover.fromLlm} → ${event.failover.toLlm}: ${event.failover.reason || ''}]\n`));
  } else if (event.rerouted) {
    out.append(el('span', { class: 'note' }, `\n[rerouted ${event.rerouted.fromProgrammer} → ${event.rerouted.toProgrammer}]\n`));
  } else if (event.escalated) {
    const x = event.escalated;
    out.append(el('span', { class: 'note' }, `\n[escalated: ${x.fromTier} programmer ${x.fromProgrammer} failed (${x.reason || ''}) → ${x.toTier} tier]\n`));
  } else if (event.result) {
    const r = event.result;
    setTaskState(short(r.status, 'TASK_STATE_'));
    $('task-summary').textContent =
      `${short(r.status, 'TASK_STATE_')} on ${r.programmerId || '-'}${r.tier ? ` (${r.tier})` : ''} with ${r.llmUsed || '-'}` +
      ` · ${((Number(r.durationMs || 0)) / 1000).toFixed(1)} s · ${usd(r.costNanousd)}` +
      (r.branch ? ` · branch ${r.branch}` : '') + (r.errorMessage ? ` · ${r.errorMessage}` : '') +
      (r.escalation ? ` · ${r.escalation}` : '');
    showDiff(r.diff || '');
    scheduleTasks();
    return true;
  }
  return false;
}

function showDiff(diff) {
  const pre = $('diff');
  if (!diff) { pre.textContent = '(no change)'; return; }
  pre.replaceChildren(...diff.split('\n').map((line) => {
    let cls = 'ctx';
    if (line.startsWith('+++') || line.startsWith('---') || line.startsWith('diff ')) cls = 'file';
    else if (line.startsWith('+')) cls = 'add';
    else if (line.startsWith('-')) cls = 'del';
    else if (line.startsWith('@@')) cls = 'hunk';
    return el('span', { class: cls }, line + '\n');
  }));
}

// ---- token, dispatch, cancel ----

function applyToken() {
  const has = !!token();
  $('mode').dataset.mode = has ? 'dispatch' : 'read-only';
  $('mode').textContent = has ? 'token set: dispatch and cancel enabled' : 'read-only';
  $('dispatch-form').hidden = !has;
  setTaskState($('task-state').dataset.state || '');
}

async function dispatch(ev) {
  ev.preventDefault();
  const list = (v) => v.split(',').map((s) => s.trim()).filter(Boolean);
  const body = {
    taskDescription: $('d-description').value,
    workspace: $('d-workspace').value,
    files: list($('d-files').value),
    capabilities: list($('d-capabilities').value),
    dryRun: $('d-dry-run').checked,
    runId: 'dashboard',
  };
  try {
    const controller = new AbortController();
    const r = await fetch('/v1/tasks', {
      method: 'POST', headers: headers({ 'Content-Type': 'application/json' }),
      body: JSON.stringify(body), signal: controller.signal,
    });
    if (!r.ok) throw await failure(r);
    // The first event names the task; the task panel follows it from there (tasks outlive this
    // connection, so closing it is harmless).
    await readSse(r, (e) => {
      const first = JSON.parse(e.data);
      if (first.taskId) { controller.abort(); select(first.taskId, true); scheduleTasks(); }
    }).catch(() => {});
    notice('');
  } catch (e) {
    notice(e.message);
  }
}

async function cancel() {
  if (!state.selected) return;
  try {
    const r = await fetch('/v1/tasks/' + encodeURIComponent(state.selected) + ':cancel', { method: 'POST', headers: headers() });
    if (!r.ok) throw await failure(r);
    notice((await r.json()).message || '');
  } catch (e) {
    notice(e.message);
  }
}

function start() {
  $('token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const t = $('token').value.trim();
    if (t) sessionStorage.setItem(TOKEN_KEY, t);
    $('token').value = '';
    applyToken();
    followPool();
    loadTasks();
  });
  $('forget-token').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    applyToken();
    followPool();
  });
  $('dispatch-form').addEventListener('submit', dispatch);
  $('cancel-task').addEventListener('click', cancel);
  applyToken();
  followPool();
  loadTasks();
}

start();
