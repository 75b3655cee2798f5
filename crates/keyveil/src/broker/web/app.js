// keyveil approval page: live updates of the pending-request list over server-sent events.
// Loaded from /static/app.js (CSP: script-src 'self'; no inline script anywhere).
// A card already on screen is never replaced or moved, so a half-typed factor survives updates.
'use strict';

(function () {
  const list = document.getElementById('requests');
  const live = document.getElementById('live');
  if (!list || !live || typeof EventSource === 'undefined') return;

  function say(text, cls) {
    live.textContent = text;
    live.className = 'live ' + (cls || '');
  }

  function cardsOf(root) {
    return Array.from(root.querySelectorAll('article[data-request-id]'));
  }

  function idOf(card) {
    return Number(card.dataset.requestId);
  }

  function merge(fresh) {
    const incoming = cardsOf(fresh);
    const wanted = new Set(incoming.map(idOf));
    for (const old of cardsOf(list)) {
      if (!wanted.has(idOf(old))) old.remove();
    }
    const present = new Map(cardsOf(list).map((c) => [idOf(c), c]));
    for (const card of incoming) {
      const id = idOf(card);
      if (present.has(id)) continue;
      const after = cardsOf(list).find((c) => idOf(c) > id);
      const node = document.importNode(card, true);
      node.classList.add('new');
      list.insertBefore(node, after || null);
    }
    const n = cardsOf(list).length;
    const empty = document.getElementById('empty');
    if (empty) empty.hidden = n > 0;
    document.title = (n > 0 ? '(' + n + ') ' : '') + 'keyveil · approvals';
  }

  let busy = false;
  let again = false;
  async function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    try {
      do {
        again = false;
        const r = await fetch('/requests', { credentials: 'same-origin', cache: 'no-store' });
        if (r.status === 401) {
          say('Session ended: run keyveil approve --web for a new link.', 'off');
          source.close();
          return;
        }
        if (!r.ok) continue;
        const tpl = document.createElement('template');
        tpl.innerHTML = await r.text();
        merge(tpl.content);
      } while (again);
    } catch (e) {
      say('Live updates interrupted; retrying…', 'off');
    } finally {
      busy = false;
    }
  }

  const source = new EventSource('/events');
  source.addEventListener('open', () => say('Live: new requests appear here by themselves.', 'on'));
  source.addEventListener('hello', refresh);
  source.addEventListener('changed', refresh);
  source.addEventListener('error', () => say('Live updates interrupted; retrying…', 'off'));

  // One click per form: an approval takes a moment (the passphrase is checked with Argon2id).
  document.addEventListener('submit', (ev) => {
    const button = ev.target.querySelector('button[type=submit]');
    if (button) {
      button.disabled = true;
      button.textContent = button.classList.contains('btn-deny') ? 'Denying…' : 'Checking…';
    }
  });
})();
