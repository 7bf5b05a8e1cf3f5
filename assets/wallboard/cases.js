// civicline cases page: open cases by department and age, > 90 days called out, history
// on click. Plain JS; all text from JSON goes through textContent (never innerHTML).
(function () {
  'use strict';

  var token = new URLSearchParams(window.location.search).get('token') || '';
  var PAGE = 1000;
  var MAX_PAGES = 20;
  var REFRESH_MS = 60000;
  var BUCKETS = [
    { key: 'd0_7', max: 7 },
    { key: 'd8_30', max: 30 },
    { key: 'd31_90', max: 90 },
    { key: 'over90', max: Infinity }
  ];

  var el = {
    totalOpen: document.getElementById('total-open'),
    totalOver90: document.getElementById('total-over90'),
    updated: document.getElementById('updated'),
    error: document.getElementById('error'),
    callout: document.getElementById('callout'),
    ages: document.getElementById('age-rows'),
    cases: document.getElementById('case-rows'),
    filter: document.getElementById('dept-filter'),
    reload: document.getElementById('reload'),
    history: document.getElementById('history'),
    wallLink: document.getElementById('wallboard-link')
  };
  if (token) el.wallLink.href = '/wallboard?token=' + encodeURIComponent(token);

  var allCases = [];
  var selected = null;     // case number currently shown in the history panel
  var historySeq = 0;      // guards against out-of-order history replies

  function make(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function pad2(n) { return (n < 10 ? '0' : '') + n; }
  function fmtTime(ms) {
    var d = new Date(Number(ms));
    if (isNaN(d.getTime())) return '—';
    return d.getFullYear() + '-' + pad2(d.getMonth() + 1) + '-' + pad2(d.getDate()) + ' ' +
      pad2(d.getHours()) + ':' + pad2(d.getMinutes());
  }
  function deptOf(c) { return c.department ? String(c.department) : '(none)'; }
  function ageOf(c) { return Math.max(0, Math.floor(Number(c.age_days) || 0)); }
  function bucketOf(age) {
    for (var i = 0; i < BUCKETS.length; i++) if (age <= BUCKETS[i].max) return BUCKETS[i].key;
    return 'over90';
  }

  function showError(text) {
    el.error.textContent = text || '';
    el.error.hidden = !text;
  }
  function replaceBody(old, id) {
    var b = document.createElement('tbody');
    b.id = id;
    old.replaceWith(b);
    return b;
  }
  function emptyRow(tbody, cols, text) {
    var tr = make('tr');
    var td = make('td', text, 'empty');
    td.colSpan = cols;
    tr.appendChild(td);
    tbody.appendChild(tr);
  }

  function api(path) {
    return fetch(path, { headers: { 'Authorization': 'Bearer ' + token, 'Accept': 'application/json' } })
      .then(function (r) {
        if (!r.ok) throw new Error(path.split('?')[0] + ': HTTP ' + r.status);
        return r.json();
      });
  }

  function loadAll() {
    var got = [];
    function page(n) {
      var q = '/api/v1/cases?status=open&limit=' + PAGE + '&offset=' + (n * PAGE);
      return api(q).then(function (body) {
        var cases = Array.isArray(body.cases) ? body.cases : [];
        got = got.concat(cases);
        var total = Number(body.total);
        if (cases.length === PAGE && n + 1 < MAX_PAGES && !(isFinite(total) && got.length >= total)) {
          return page(n + 1);
        }
        return got;
      });
    }
    return page(0);
  }

  function summarise(cases) {
    var byDept = {};
    cases.forEach(function (c) {
      var d = deptOf(c);
      var s = byDept[d] || (byDept[d] = { d0_7: 0, d8_30: 0, d31_90: 0, over90: 0, total: 0 });
      s[bucketOf(ageOf(c))] += 1;
      s.total += 1;
    });
    return byDept;
  }

  function render() {
    var byDept = summarise(allCases);
    var depts = Object.keys(byDept).sort();
    var over90Total = 0;

    // Call-out cards: departments with the most > 90 day cases first.
    var cards = document.createElement('div');
    cards.className = 'callout';
    cards.id = 'callout';
    cards.setAttribute('data-testid', 'over90-callout');
    depts.slice().sort(function (a, b) { return byDept[b].over90 - byDept[a].over90 || (a < b ? -1 : 1); })
      .forEach(function (d) {
        var n = byDept[d].over90;
        over90Total += n;
        var card = make('div', null, 'card' + (n === 0 ? ' zero' : ''));
        var num = make('div', n, 'n');
        num.setAttribute('data-testid', 'over90-' + d);
        card.appendChild(num);
        card.appendChild(make('div', d, 'd'));
        cards.appendChild(card);
      });
    if (depts.length === 0) cards.appendChild(make('p', 'No open cases.', 'muted'));
    el.callout.replaceWith(cards);
    el.callout = cards;

    el.ages = replaceBody(el.ages, 'age-rows');
    depts.forEach(function (d) {
      var s = byDept[d];
      var tr = make('tr');
      var th = make('th', d);
      th.scope = 'row';
      tr.appendChild(th);
      tr.appendChild(make('td', s.d0_7, 'num'));
      tr.appendChild(make('td', s.d8_30, 'num'));
      tr.appendChild(make('td', s.d31_90, 'num'));
      var o = make('td', s.over90, 'num over90' + (s.over90 > 0 ? ' hot' : ''));
      o.setAttribute('data-testid', 'age-over90-' + d);
      tr.appendChild(o);
      tr.appendChild(make('td', s.total, 'num'));
      el.ages.appendChild(tr);
    });
    if (depts.length === 0) emptyRow(el.ages, 6, 'no open cases');

    el.totalOpen.textContent = String(allCases.length);
    el.totalOver90.textContent = String(over90Total);

    // Department filter: keep the current choice if it still exists.
    var current = el.filter.value;
    while (el.filter.options.length > 1) el.filter.remove(1);
    depts.forEach(function (d) { el.filter.appendChild(new Option(d + ' (' + byDept[d].total + ')', d)); });
    el.filter.value = byDept[current] ? current : '';

    renderList();
  }

  function renderList() {
    var dept = el.filter.value;
    var rows = allCases.filter(function (c) { return !dept || deptOf(c) === dept; })
      .sort(function (a, b) { return ageOf(b) - ageOf(a) || String(a.case_number).localeCompare(String(b.case_number)); });
    el.cases = replaceBody(el.cases, 'case-rows');
    rows.forEach(function (c) {
      var num = String(c.case_number);
      var tr = make('tr', null, num === selected ? 'selected' : '');
      tr.setAttribute('data-case', num);
      var td = make('td');
      var btn = make('button', num, 'case-link');
      btn.type = 'button';
      btn.setAttribute('data-testid', 'case-' + num);
      btn.setAttribute('aria-label', 'Show history of case ' + num);
      btn.addEventListener('click', function () { showHistory(num); });
      td.appendChild(btn);
      tr.appendChild(td);
      tr.appendChild(make('td', deptOf(c)));
      tr.appendChild(make('td', c.category || ''));
      tr.appendChild(make('td', c.address || ''));
      var age = ageOf(c);
      tr.appendChild(make('td', age, 'num' + (age > 90 ? ' age-old' : '')));
      el.cases.appendChild(tr);
    });
    if (rows.length === 0) emptyRow(el.cases, 5, 'no open cases');
  }

  function detailText(detail) {
    if (detail === null || detail === undefined) return '';
    if (typeof detail !== 'object') return String(detail);
    return Object.keys(detail).map(function (k) {
      var v = detail[k];
      return k + ': ' + (typeof v === 'string' ? v : JSON.stringify(v));
    }).join(', ');
  }

  function showHistory(num) {
    selected = num;
    var seq = ++historySeq;
    Array.prototype.forEach.call(el.cases.querySelectorAll('tr[data-case]'), function (tr) {
      tr.classList.toggle('selected', tr.getAttribute('data-case') === num);
    });
    var box = make('div');
    box.id = 'history';
    box.setAttribute('data-testid', 'history');
    box.setAttribute('data-state', 'loading');
    box.appendChild(make('p', 'Loading history of case ' + num + '…', 'muted'));
    el.history.replaceWith(box);
    el.history = box;

    api('/api/v1/cases/' + encodeURIComponent(num) + '/history').then(function (body) {
      if (seq !== historySeq) return;
      var items = Array.isArray(body.history) ? body.history : [];
      var out = make('div');
      out.id = 'history';
      out.setAttribute('data-testid', 'history');
      out.setAttribute('data-state', 'loaded');
      out.setAttribute('data-case', num);
      out.appendChild(make('h3', 'Case ' + num));
      var table = make('table');
      var thead = make('thead');
      var hr = make('tr');
      ['When', 'Action', 'By', 'Detail'].forEach(function (h) {
        var th = make('th', h);
        th.scope = 'col';
        hr.appendChild(th);
      });
      thead.appendChild(hr);
      table.appendChild(thead);
      var tb = make('tbody');
      items.forEach(function (h) {
        var tr = make('tr');
        tr.appendChild(make('td', fmtTime(h.at_ms)));
        tr.appendChild(make('td', h.action || ''));
        tr.appendChild(make('td', h.by || ''));
        tr.appendChild(make('td', detailText(h.detail), 'history-detail'));
        tb.appendChild(tr);
      });
      if (items.length === 0) emptyRow(tb, 4, 'no history');
      table.appendChild(tb);
      out.appendChild(table);
      el.history.replaceWith(out);
      el.history = out;
    }).catch(function (e) {
      if (seq !== historySeq) return;
      el.history.setAttribute('data-state', 'error');
      el.history.textContent = '';
      el.history.appendChild(make('p', 'Could not load history: ' + e.message));
    });
  }

  var loading = false;
  function reload() {
    if (!token) {
      showError('No access token: open this page as /wallboard/cases?token=…');
      document.body.setAttribute('data-cases-state', 'error');
      return;
    }
    if (loading) return;
    loading = true;
    loadAll().then(function (cases) {
      allCases = cases;
      render();
      showError('');
      var now = new Date();
      el.updated.textContent = 'updated ' + pad2(now.getHours()) + ':' + pad2(now.getMinutes()) + ':' + pad2(now.getSeconds());
      document.body.setAttribute('data-cases-state', 'loaded');
    }).catch(function (e) {
      showError('Could not load cases: ' + e.message);
      el.updated.textContent = 'load failed';
      document.body.setAttribute('data-cases-state', 'error');
    }).then(function () { loading = false; });
  }

  el.filter.addEventListener('change', renderList);
  el.reload.addEventListener('click', reload);
  setInterval(reload, REFRESH_MS);
  reload();
})();
