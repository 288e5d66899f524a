// The status page of fleet watch: reads /api/v1/{status,watch,history} and draws them.
// Every value is set with textContent (never as HTML): names come from GitHub, Docker and
// pull requests. No library, no request to any other origin.
'use strict';

const POLL_MS = 3000;
const DAY = 24 * 3600;
const SVG = 'http://www.w3.org/2000/svg';
// Bidirectional and invisible controls are shown, not obeyed: a name cannot reorder itself.
const CONTROLS = /[\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]/g;

const HAS_CONTROL = new RegExp(CONTROLS.source);

function text(s) {
  const str = s === null || s === undefined ? '' : String(s);
  // Most values have no control character: one text node, no fragment.
  if (!HAS_CONTROL.test(str)) return document.createTextNode(str);
  const out = document.createDocumentFragment();
  let last = 0;
  for (const m of str.matchAll(CONTROLS)) {
    out.append(document.createTextNode(str.slice(last, m.index)));
    const code = 'U+' + m[0].codePointAt(0).toString(16).toUpperCase().padStart(4, '0');
    const mark = el('span', { class: 'ctl', title: 'control character ' + code });
    mark.textContent = code;
    out.append(mark);
    last = m.index + m[0].length;
  }
  out.append(document.createTextNode(str.slice(last)));
  return out;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) node.setAttribute(k, String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : text(c));
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

function state(word, extra) {
  return el('span', { class: 'state state-' + String(word).replace(/[^a-z_]/g, '') }, word, extra ? ' ' + extra : null);
}

function table(headers, rows) {
  const head = el('tr', {}, ...headers.map((h) => el('th', { scope: 'col' }, h)));
  return el('div', { class: 'scroll' }, el('table', {}, el('thead', {}, head), el('tbody', {}, ...rows)));
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return '-';
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return s + 's';
  if (s < 3600) return Math.floor(s / 60) + 'm' + String(s % 60).padStart(2, '0') + 's';
  if (s < 86400) return Math.floor(s / 3600) + 'h' + String(Math.floor(s % 3600 / 60)).padStart(2, '0') + 'm';
  return Math.floor(s / 86400) + 'd' + String(Math.floor(s % 86400 / 3600)).padStart(2, '0') + 'h';
}

function gib(bytes) {
  return bytes === null || bytes === undefined ? '-' : (bytes / 2 ** 30).toFixed(1) + ' GiB';
}

function clock(at) {
  return new Date(at * 1000).toLocaleTimeString([], { hour12: false });
}

function replace(id, ...nodes) {
  const body = document.querySelector('#' + id + ' .body');
  body.replaceChildren(...nodes);
}

// What the plan says each autoscaled pool wants now, by pool.
function autoscaled(watch) {
  return new Map(((watch.plan && watch.plan.autoscale) || []).map((a) => [a.pool, a]));
}

// A pool's runners wanted: what an autoscaled pool's plan wants now, else the spec's count.
function wanted(pool, scaled) {
  const a = scaled.get(pool.name);
  return a ? a.wanted : pool.desired;
}

function renderSummary(status, watch) {
  document.getElementById('fleet-name').replaceChildren(text(status.fleet));
  document.title = 'fleet ' + status.fleet;
  const t = status.totals;
  const scaled = autoscaled(watch);
  const desired = status.pools.reduce((sum, p) => sum + wanted(p, scaled), 0);
  const items = [
    ['runners', (t.containers - t.exited) + ' of ' + desired],
    ['busy', t.busy], ['idle', t.idle], ['offline', t.offline], ['exited', t.exited],
    ['hosts up', status.hosts.filter((h) => h.observed).length + ' of ' + status.hosts.length],
  ];
  if (watch.observed_at) items.push(['observed', clock(watch.observed_at)]);
  document.getElementById('summary').replaceChildren(
    ...items.map(([k, v]) => el('div', {}, el('dt', {}, k), el('dd', {}, v))));
}

function renderReconcile(watch, now) {
  const last = watch.last_reconcile;
  const nodes = [];
  if (last) {
    nodes.push(el('p', { id: 'last-reconcile' }, 'Last reconcile: ', state(last.result), ' (trigger ', last.trigger,
      ', ' + last.duration_seconds.toFixed(2) + ' s, ' + duration(now - last.ended_at) + ' ago, at ' + clock(last.ended_at) + ')'));
  } else {
    nodes.push(el('p', { class: 'muted' }, 'No reconcile has finished yet.'));
  }
  const plan = watch.plan;
  if (plan) {
    nodes.push(el('p', { id: 'plan-summary' }, plan.summary));
    const wants = plan.changes.map((c) => el('li', {}, c)).concat(plan.deferred.map((c) => el('li', {}, c + ' (waits for its job)')));
    if (wants.length) nodes.push(el('h3', {}, 'The plan still wants'), el('ul', { id: 'plan-changes' }, ...wants));
    if (plan.warnings.length) nodes.push(el('h3', {}, 'Warnings'), el('ul', {}, ...plan.warnings.map((w) => el('li', {}, w))));
  }
  replace('reconcile', ...nodes);
}

function gpuLine(gpus) {
  if (!gpus.length) return '-';
  return gpus.map((g) => g.uuid + (g.utilization_percent !== null ? ' ' + g.utilization_percent + '%' : '')).join(', ');
}

// A GPU's health as NVML read it (absent for declared GPUs), its quarantine, and why.
function health(g) {
  return el('p', { class: 'health' }, 'health ', state(g.health || 'not read'),
    g.quarantined ? el('span', { class: 'quarantined' }, 'quarantined') : null,
    ...(g.health_reasons || []).map((r) => el('span', { class: 'reason' }, r)));
}

// The GPUs of a host that are not healthy, by state, and how many are quarantined.
function unwell(gpus) {
  const counts = new Map();
  for (const g of gpus) if (g.health && g.health !== 'healthy') counts.set(g.health, (counts.get(g.health) || 0) + 1);
  const parts = Array.from(counts, ([s, n]) => n + ' ' + s);
  const q = gpus.filter((g) => g.quarantined).length;
  if (q) parts.push(q + ' quarantined');
  return parts.length ? parts.join(', ') : '-';
}

function renderHosts(status) {
  const rows = status.hosts.map((h) => {
    const held = h.gpus.filter((g) => g.held_by).length;
    return el('tr', { 'data-host': h.name },
      el('td', { class: 'name' }, h.name),
      el('td', {}, h.observed ? state('up') : state('down', h.reason ? '- ' + h.reason : '')),
      el('td', {}, h.gpu_source + (h.gpu_note ? ' (' + h.gpu_note + ')' : '')),
      el('td', {}, h.observed ? String(h.gpus.length - held) : '-'),
      el('td', {}, h.observed ? String(held) : '-'),
      el('td', { class: 'unwell' }, h.observed ? unwell(h.gpus) : '-'));
  });
  replace('hosts', table(['host', 'state', 'GPU list', 'GPUs free', 'GPUs held', 'GPUs not healthy'], rows));
}

function renderPools(status, watch) {
  const scaled = autoscaled(watch);
  const rows = status.pools.map((p) => {
    const count = (s) => p.runners.filter((r) => r.state === s).length;
    const a = scaled.get(p.name);
    let auto = '-';
    let waiting = '-';
    if (a) {
      auto = 'min_idle ' + a.min_idle + ', max ' + a.max + ', wants ' + a.wanted + ', capacity offered ' + a.capacity +
        (a.assigned !== undefined ? ', jobs assigned ' + a.assigned : '');
      if (a.waiting) waiting = state('waiting', a.waiting[0] + ' (' + a.waiting[1].replace(/_/g, ' ') + ')');
      else waiting = '0';
    }
    return el('tr', { 'data-pool': p.name },
      el('td', { class: 'name' }, p.name), el('td', { class: 'name' }, p.hosts.join(', ')),
      el('td', {}, String(wanted(p, scaled))), el('td', {}, String(p.runners.length - count('exited'))),
      el('td', {}, String(count('busy'))), el('td', {}, String(count('idle'))), el('td', {}, String(count('offline'))),
      el('td', { class: 'waiting' }, waiting), el('td', {}, auto));
  });
  replace('pools', table(['pool', 'hosts', 'wanted', 'running', 'busy', 'idle', 'offline', 'jobs waiting', 'autoscale'], rows));
}

// The job a runner runs, where watch knows it: its name, then where it comes from.
function jobCell(job) {
  if (!job) return el('td', { class: 'job' }, '-');
  const workflow = (job.workflow || '').replace(/^.*\/\.github\/workflows\//, '');
  const where = [job.repository, workflow ? 'workflow ' + workflow : '', job.run_id ? 'run ' + job.run_id : '',
    job.started_at ? 'since ' + clock(job.started_at) : ''].filter((x) => x).join(', ');
  return el('td', { class: 'job', title: job.workflow || '' }, el('span', { class: 'name job-name' }, job.job_name),
    where ? el('span', { class: 'where' }, where) : null);
}

// Rows by runner name, kept between polls: a row whose values did not change is left alone,
// so a poll of a large fleet touches only the rows that changed.
const runnerRows = new Map();

function runnerRow(p, r) {
  const gh = r.github ? (r.github.online ? 'online' : 'offline') + (r.github.busy ? ' busy' : ' idle') + ', id ' + r.github.id : 'not registered';
  // The uptime changes at every poll: it is set in place rather than rebuilding the row.
  const key = JSON.stringify([p.name, { ...r, uptime_seconds: 0 }]);
  const uptime = duration(r.uptime_seconds);
  const kept = runnerRows.get(r.name);
  if (kept && kept.key === key) {
    const cell = kept.row.children[6];
    if (cell.textContent !== uptime) cell.textContent = uptime;
    return kept.row;
  }
  const row = el('tr', { 'data-runner': r.name },
    el('td', { class: 'name' }, r.name), el('td', { class: 'name' }, r.host), el('td', { class: 'name' }, p.name),
    el('td', {}, state(r.state)), el('td', {}, r.container), el('td', { class: 'name' }, gpuLine(r.gpus)),
    el('td', {}, uptime), jobCell(r.job), el('td', {}, gh),
    el('td', {}, r.exit_code === null ? '-' : String(r.exit_code)));
  runnerRows.set(r.name, { key, row });
  return row;
}

let runnerTable = null;
let orphans = null;

function renderRunners(status) {
  const rows = [];
  const names = new Set();
  for (const p of status.pools) {
    for (const r of p.runners) {
      rows.push(runnerRow(p, r));
      names.add(r.name);
    }
  }
  for (const name of Array.from(runnerRows.keys())) if (!names.has(name)) runnerRows.delete(name);
  const nodes = [];
  if (rows.length) {
    runnerTable = runnerTable || table(['runner', 'host', 'pool', 'state', 'container', 'GPUs', 'uptime', 'job', 'GitHub', 'last exit'], []);
    const body = runnerTable.querySelector('tbody');
    const same = body.children.length === rows.length && rows.every((r, i) => body.children[i] === r);
    if (!same) body.replaceChildren(...rows);
    nodes.push(runnerTable);
  } else {
    nodes.push(el('p', { class: 'muted' }, 'No runner containers.'));
  }
  if (status.orphan_registrations.length) {
    const key = JSON.stringify(status.orphan_registrations);
    if (!orphans || orphans.key !== key) {
      orphans = { key, nodes: [el('h3', {}, 'Registrations without a container'),
        el('ul', { id: 'orphans' }, ...status.orphan_registrations.map((n) => el('li', { class: 'name' }, n)))] };
    }
    nodes.push(...orphans.nodes);
  }
  // The section is only rebuilt when its parts changed: moving the table would lay it out again.
  const section = document.querySelector('#runners .body');
  const unchanged = section.children.length === nodes.length && nodes.every((n, i) => section.children[i] === n);
  if (!unchanged) section.replaceChildren(...nodes);
}

// The last 24 hours, or since the first sample when watch has run for less: a young
// watch's few samples are spread over the chart rather than squeezed against its right edge.
function chart(samples, now) {
  const w = 240, h = 60;
  const from = samples.length ? Math.max(now - DAY, Math.min(samples[0][0], now - 60)) : now - DAY;
  const span = Math.max(1, now - from);
  const box = svg('svg', { class: 'chart', viewBox: '0 0 ' + w + ' ' + (h + 12), role: 'img', 'data-points': samples.length,
    'aria-label': 'utilization since ' + clock(from) + ': ' + samples.length + ' samples' + (samples.length ? ', last ' + samples[samples.length - 1][1] + '%' : '') });
  box.append(svg('rect', { class: 'frame', x: 0, y: 0, width: w, height: h }));
  const xy = samples.map(([at, pct]) => [((at - from) / span) * w, h - (Math.min(100, pct) / 100) * h]);
  if (xy.length > 1) box.append(svg('polyline', { class: 'line', points: xy.map(([x, y]) => x.toFixed(1) + ',' + y.toFixed(1)).join(' ') }));
  for (const [x, y] of xy.slice(-1)) box.append(svg('circle', { cx: x.toFixed(1), cy: y.toFixed(1), r: 2 }));
  const start = now - from >= DAY - 60 ? '24 h ago' : 'since ' + clock(from);
  for (const [x, y, anchor, label] of [[0, h + 10, 'start', start], [w, h + 10, 'end', 'now'], [2, 8, 'start', '100%']]) {
    const t = svg('text', { x, y, 'text-anchor': anchor });
    t.textContent = label;
    box.append(t);
  }
  return box;
}

function renderGpus(status, history, now) {
  const use = new Map();
  for (const p of status.pools) for (const r of p.runners) for (const g of r.gpus) use.set(r.host + '\n' + g.uuid, g);
  const nodes = [];
  for (const h of status.hosts) {
    if (!h.gpus.length) continue;
    const series = (history.gpus && history.gpus[h.name]) || {};
    const cards = h.gpus.map((g) => {
      const u = use.get(h.name + '\n' + g.uuid);
      const samples = series[g.uuid] || [];
      return el('div', { class: 'gpu' + (g.held_by ? '' : ' free'), 'data-gpu': g.uuid },
        el('p', { class: 'name' }, g.uuid),
        el('p', { class: 'muted' }, (g.name || 'GPU') + (g.memory_total_bytes ? ', ' + gib(g.memory_total_bytes) : '')),
        el('p', {}, 'held by ', g.held_by ? el('span', { class: 'name' }, g.held_by) : state('free')),
        health(g),
        el('p', {}, 'utilization ', u && u.utilization_percent !== null ? u.utilization_percent + '%' : '-',
          ', memory ', u ? gib(u.memory_used_bytes) + ' of ' + gib(u.memory_total_bytes) : '-'),
        chart(samples, now));
    });
    nodes.push(el('h3', { class: 'name' }, 'host ' + h.name), el('div', { class: 'grid' }, ...cards));
  }
  if (!nodes.length) nodes.push(el('p', { class: 'muted' }, 'No host lists GPUs.'));
  if (history.source === 'memory') nodes.push(el('p', { class: 'muted' }, 'History: what this watch saw since it started (kept in memory, 24 h at most).'));
  replace('gpus', ...nodes);
}

function renderEvents(history) {
  const events = (history.events || []).slice(-100).reverse();
  replace('events', events.length
    ? el('ul', { class: 'events' }, ...events.map((e) => el('li', {}, el('time', {}, clock(e.at)),
      el('span', { class: 'kind' }, e.kind.replace(/_/g, ' ')), el('span', { class: 'name' }, e.subject), e.detail ? ' - ' + e.detail : null)))
    : el('p', { class: 'muted' }, 'Nothing happened yet.'));
}

async function getJson(path) {
  const r = await fetch(path, { cache: 'no-store', credentials: 'same-origin' });
  if (!r.ok) throw new Error(path + ': HTTP ' + r.status);
  return r.json();
}

let lastGood = 0;

let lastHistory = null;

function updated() {
  const live = document.getElementById('live');
  lastGood = Date.now();
  live.className = '';
  live.textContent = 'live: updated ' + new Date().toLocaleTimeString([], { hour12: false }) + ', every ' + POLL_MS / 1000 + ' s';
  document.body.dataset.updated = String(lastGood);
}

// The status and the plan are drawn as soon as they arrive; the GPUs and events when the
// history does (it is the larger answer).
async function refresh() {
  const live = document.getElementById('live');
  try {
    const history = getJson('/api/v1/history');
    history.catch(() => {});
    const [status, watch] = await Promise.all([getJson('/api/v1/status'), getJson('/api/v1/watch')]);
    const now = Date.now() / 1000;
    renderSummary(status, watch);
    renderReconcile(watch, now);
    renderHosts(status);
    renderPools(status, watch);
    renderRunners(status);
    // The browser's own clock of the first full draw (the benchmark reads it).
    if (!performance.getEntriesByName('runners-drawn').length) performance.mark('runners-drawn');
    lastHistory = await history;
    renderGpus(status, lastHistory, now);
    renderEvents(lastHistory);
    updated();
  } catch (e) {
    live.className = 'stale';
    live.textContent = 'not updated' + (lastGood ? ' since ' + new Date(lastGood).toLocaleTimeString([], { hour12: false }) : '') + ': ' + e.message;
  }
}

document.addEventListener('DOMContentLoaded', () => {
  refresh();
  setInterval(refresh, POLL_MS);
});
