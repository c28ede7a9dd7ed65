/* cart-fhir timeline: show a grade cell's details; arrow keys move between cells. No network, no globals. */
(function () {
  'use strict';
  function show(cell) {
    var course = cell.closest('.course');
    if (!course) { return; }
    var panel = course.querySelector('.panel');
    var tpl = document.getElementById(cell.getAttribute('data-detail'));
    if (!panel || !tpl) { return; }
    var old = course.querySelector('.cell.selected');
    if (old) { old.classList.remove('selected'); old.removeAttribute('aria-current'); }
    cell.classList.add('selected');
    cell.setAttribute('aria-current', 'true');
    panel.replaceChildren(tpl.content.cloneNode(true));
  }
  function lanes(course) {
    var rows = [];
    var key = null;
    course.querySelectorAll('.cell').forEach(function (c) {
      var tox = c.getAttribute('data-toxicity');
      if (tox !== key) { rows.push([]); key = tox; }
      rows[rows.length - 1].push(c);
    });
    return rows;
  }
  function nearest(row, day) {
    var best = row[0];
    row.forEach(function (c) {
      if (Math.abs(+c.getAttribute('data-day') - day) < Math.abs(+best.getAttribute('data-day') - day)) { best = c; }
    });
    return best;
  }
  // Opened from a CDS card (appContext names the infusion): show that infusion first.
  var focus = document.querySelector('.course[data-focus]');
  if (focus) { focus.scrollIntoView(); }
  document.addEventListener('click', function (e) {
    var cell = e.target.closest && e.target.closest('.cell');
    if (cell) { show(cell); }
  });
  document.addEventListener('focusin', function (e) {
    if (e.target.classList && e.target.classList.contains('cell')) { show(e.target); }
  });
  document.addEventListener('keydown', function (e) {
    var cell = e.target;
    if (!cell.classList || !cell.classList.contains('cell')) { return; }
    var rows = lanes(cell.closest('.course'));
    var r = rows.findIndex(function (row) { return row.indexOf(cell) >= 0; });
    var i = rows[r].indexOf(cell);
    var day = +cell.getAttribute('data-day');
    var next = null;
    if (e.key === 'ArrowRight') { next = rows[r][i + 1]; }
    else if (e.key === 'ArrowLeft') { next = rows[r][i - 1]; }
    else if (e.key === 'ArrowDown' && r + 1 < rows.length) { next = nearest(rows[r + 1], day); }
    else if (e.key === 'ArrowUp' && r > 0) { next = nearest(rows[r - 1], day); }
    else if (e.key === 'Home') { next = rows[r][0]; }
    else if (e.key === 'End') { next = rows[r][rows[r].length - 1]; }
    if (next) { e.preventDefault(); next.focus(); }
  });
})();
