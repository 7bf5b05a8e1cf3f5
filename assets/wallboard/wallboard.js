// civicline live wallboard. Plain JS, no dependencies, no network besides our own API.
// All text from JSON goes through textContent (never innerHTML).
(function () {
  'use strict';

  var token = new URLSearchParams(window.location.search).get('token') || '';
  var RETRY_AFTER_CLOSE_MS = 5000;

  var el = {
    total: document.getElementById('total-waiting'),
    conn: document.getElementById('conn'),
    updated: document.getElementById('updated'),
    error: document.getElementById('error'),
    queues: document.getElementById('queue-rows'),
    agents: document.getElementById('agent-rows'),
    casesLink: document.getElementById('cases-link')
  };

  if (token) {
    el.casesLink.href = '/wallboard/cases?token=' + encodeURIComponent(token);
  }

  // State for local ticking between snapshots.
  var lastSnapshot = null;
  var receivedAt = 0; // performance.now() when lastSnapshot arrived
  var tickers = [];   // {cell, base_s, tick}

  function make(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function pad2(n) { return (n < 10 ? '0' : '') + n; }

  // mm:ss, or h:mm:ss from one hour.
  function clock(totalSeconds) {
    var s = Math.max(0, Math.floor(Number(totalSeconds) || 0));
    var h = Math.floor(s / 3600);
    var m = Math.floor((s % 3600) / 60);
    var sec = s % 60;
    return h > 0 ? h + ':' + pad2(m) + ':' + pad2(sec) : pad2(m) + ':' + pad2(sec);
  }

  function estimateText(s) {
    if (s === null || s === undefined || !isFinite(Number(s))) return '—';
    return 'about ' + Math.max(1, Math.round(Number(s) / 60)) + ' min';
  }

  function serviceLevel(v) {
    if (v === null || v === undefined || !isFinite(Number(v))) return { text: '—', cls: 'muted' };
    var pct = Math.round(Number(v) * 100);
    return { text: pct + '%', cls: v >= 0.8 ? 'sl-good' : v >= 0.6 ? 'sl-warn' : 'sl-bad' };
  }

  // "not_ready(lunch)" -> {base: "not_ready", label: "not ready (lunch)"}
  function agentState(state) {
    var s = String(state === null || state === undefined ? 'unknown' : state);
    var m = /^([a-z_]+)\((.*)\)$/.exec(s);
    var base = m ? m[1] : s;
    var label = base === 'wrap_up' ? 'wrap\u2011up' : base.replace(/_/g, ' '); // non-breaking hyphen
    if (m && m[2]) label += ' (' + m[2] + ')';
    return { base: base, label: label };
  }

  function setConn(cls, text) {
    el.conn.className = 'conn ' + cls;
    el.conn.textContent = text;
  }

  function showError(text) {
    if (text) {
      el.error.textContent = text;
      el.error.hidden = false;
    } else {
      el.error.hidden = true;
      el.error.textContent = '';
    }
  }

  function emptyRow(tbody, cols, text) {
    var tr = make('tr');
    var td = make('td', text, 'empty');
    td.colSpan = cols;
    tr.appendChild(td);
    tbody.appendChild(tr);
  }

  function render(snap) {
    var queues = Array.isArray(snap.queues) ? snap.queues : [];
    var agents = Array.isArray(snap.agents) ? snap.agents : [];
    tickers = [];

    var total = 0;
    var qBody = document.createElement('tbody');
    qBody.id = 'queue-rows';
    queues.forEach(function (q) {
      var waiting = Math.max(0, Number(q.waiting) || 0);
      total += waiting;
      var tr = make('tr');
      tr.setAttribute('data-testid', 'queue-' + q.id);
      var name = make('th', q.name || q.id);
      name.scope = 'row';
      tr.appendChild(name);
      var w = make('td', waiting, 'num waiting' + (waiting > 0 ? ' hot' : ''));
      w.setAttribute('data-testid', 'queue-waiting-' + q.id);
      tr.appendChild(w);
      var lw = make('td', waiting > 0 ? clock(q.longest_wait_s) : '—', 'num');
      if (waiting > 0) tickers.push({ cell: lw, base_s: Number(q.longest_wait_s) || 0 });
      tr.appendChild(lw);
      tr.appendChild(make('td', estimateText(q.estimate_s), 'nowrap'));
      tr.appendChild(make('td', (Number(q.agents_ready) || 0) + ' / ' + (Number(q.agents_busy) || 0), 'num'));
      var sl = serviceLevel(q.service_level_today);
      var slCell = make('td', sl.text, 'num ' + sl.cls);
      if (q.offered_today !== undefined) {
        slCell.title = 'offered ' + q.offered_today + ', answered ' + q.answered_today +
          ', abandoned ' + q.abandoned_today + ' (target ' + q.service_level_s + ' s)';
      }
      tr.appendChild(slCell);
      qBody.appendChild(tr);
    });
    if (queues.length === 0) emptyRow(qBody, 6, 'no queues');
    el.queues.replaceWith(qBody);
    el.queues = qBody;

    var aBody = document.createElement('tbody');
    aBody.id = 'agent-rows';
    agents.forEach(function (a) {
      var tr = make('tr');
      tr.setAttribute('data-testid', 'agent-' + a.id);
      var name = make('th', a.name || a.id);
      name.scope = 'row';
      tr.appendChild(name);
      var st = agentState(a.state);
      tr.appendChild(make('td', st.label, 'state state-' + st.base));
      var t = make('td', clock(a.time_in_state_s), 'num');
      tickers.push({ cell: t, base_s: Number(a.time_in_state_s) || 0 });
      tr.appendChild(t);
      aBody.appendChild(tr);
    });
    if (agents.length === 0) emptyRow(aBody, 3, 'no agents');
    el.agents.replaceWith(aBody);
    el.agents = aBody;

    el.total.textContent = String(total);
    document.body.setAttribute('data-snapshot-at', String(snap.at_ms));
    updatedText();
  }

  function updatedText() {
    if (!lastSnapshot) return;
    var at = new Date(Number(lastSnapshot.at_ms));
    var ago = Math.floor((performance.now() - receivedAt) / 1000);
    el.updated.textContent = 'updated ' + pad2(at.getHours()) + ':' + pad2(at.getMinutes()) + ':' +
      pad2(at.getSeconds()) + (ago >= 2 ? ' (' + ago + ' s ago)' : '');
  }

  // Local tick: elapsed time since the snapshot arrived, measured with this browser's
  // monotonic clock (no dependence on server/browser clock agreement).
  function tick() {
    if (!lastSnapshot) return;
    var elapsed = (performance.now() - receivedAt) / 1000;
    tickers.forEach(function (t) { t.cell.textContent = clock(t.base_s + elapsed); });
    updatedText();
  }

  var source = null;
  function connect() {
    if (!token) {
      setConn('down', 'no token');
      showError('No access token: open this page as /wallboard?token=…');
      return;
    }
    setConn('connecting', 'connecting');
    source = new EventSource('/api/v1/live/stream?token=' + encodeURIComponent(token));
    source.onopen = function () { setConn('live', 'live'); showError(''); };
    source.addEventListener('snapshot', function (ev) {
      var snap;
      try {
        snap = JSON.parse(ev.data);
      } catch (e) {
        showError('Bad snapshot from server');
        return;
      }
      lastSnapshot = snap;
      receivedAt = performance.now();
      setConn('live', 'live');
      render(snap);
    });
    source.onerror = function () {
      if (source.readyState === EventSource.CLOSED) {
        // The server refused (e.g. 401) or sent a non-event-stream reply; the browser
        // will not retry by itself, so we do, slowly.
        setConn('down', 'disconnected');
        showError('Live feed refused by server; retrying…');
        source.close();
        setTimeout(connect, RETRY_AFTER_CLOSE_MS);
      } else {
        setConn('reconnecting', 'reconnecting');
      }
    };
  }

  setInterval(tick, 500); // half-second so the shown seconds never lag by more than 0.5 s
  connect();
})();
