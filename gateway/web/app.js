// The Confab web chat: a small single-page app over `confab.js` (the protocol client).
// State lives in plain maps; every change re-renders the part of the page it touches.
// All user-supplied text goes into the page through `textContent`, never as HTML.

import { ConfabClient, base64ToText, seqOf } from "/confab.js";

/** While typing, `typing: true` is repeated this often (the server's TTL is 5 s). */
const TYPING_REFRESH_MS = 3000;
/** No keystroke for this long ends "typing". */
const TYPING_IDLE_MS = 4000;
/** A peer's "typing" disappears after this long without news: a safety net only. The
 * server forwards one `true` per typing spell (refreshes are absorbed) and always ends it
 * with a `false` (explicit, after its TTL, or at the typist's disconnect). */
const TYPING_SHOWN_MS = 60_000;
/** History page size. */
const HISTORY_PAGE = 50;

const client = new ConfabClient();
const $ = (id) => document.getElementById(id);

/** conversation id → conversation state (see `conversation()`). */
const conversations = new Map();
/** user id → username. */
const names = new Map();
const nameLookups = new Map();
/** user id → {status, last_seen_ms}. */
const presence = new Map();
let openId = null;
let typingSentAt = 0;
let typingIdleTimer = null;

/** Direct conversation ids have the top bit set (router::conversation). */
const isDirectId = (id) => {
  try {
    return BigInt(id) >= 1n << 63n;
  } catch {
    return false;
  }
};

function conversation(id) {
  let c = conversations.get(id);
  if (!c) {
    c = {
      id,
      kind: isDirectId(id) ? "direct" : "group",
      title: "",
      peer: "0",
      lastSeq: 0,
      readSeq: 0, // this device's read cursor
      readSent: 0,
      lastActivity: 0,
      messages: new Map(), // seq → StoredMessage
      historyLoaded: false,
      hasOlder: false,
      loadingOlder: false,
      receipts: new Map(), // user id → {delivered, read} (max over the user's devices)
      members: null, // group members [{user_id, joined_seq}], once known
      typing: new Map(), // user id → timer
      known: false, // in the server's conversation list
    };
    conversations.set(id, c);
  }
  return c;
}

// ----- login -------------------------------------------------------------------------

function showLogin(message = "") {
  $("chat").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message;
  $("login-username").focus();
}

function showChat() {
  $("login").hidden = true;
  $("chat").hidden = false;
  $("me-name").textContent = client.username;
  names.set(client.userId, client.username);
  client.connect();
}

async function submitLogin(register) {
  const username = $("login-username").value.trim().toLowerCase();
  const password = $("login-password").value;
  $("login-error").textContent = "";
  if (!$("login-form").reportValidity()) return;
  try {
    if (register) await client.register(username, password);
    await client.login(username, password);
    $("login-password").value = "";
    showChat();
  } catch (e) {
    $("login-error").textContent = e.message;
  }
}

$("login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  submitLogin(false);
});
$("register-button").addEventListener("click", () => submitLogin(true));
/** Forget everything shown for the last user (the next person to log in sees nothing of it). */
function clearPage() {
  for (const c of conversations.values()) for (const t of c.typing.values()) clearTimeout(t);
  conversations.clear();
  names.clear();
  presence.clear();
  openId = null;
  sessionStorage.removeItem("confab.open");
  renderList();
  renderConversation();
}

$("logout").addEventListener("click", () => {
  client.logout();
  clearPage();
  showLogin();
});

// ----- events from the session -------------------------------------------------------

client.addEventListener("state", (e) => {
  const el = $("connection");
  const { state, retryInMs } = e.detail;
  el.dataset.state = state;
  el.textContent = state === "offline" && retryInMs !== undefined ? "reconnecting…" : state;
});

client.addEventListener("loggedout", (e) => {
  clearPage();
  showLogin(e.detail.reason);
});

client.addEventListener("welcome", () => {
  // Typing spells and presence subscriptions ended with the old connection.
  for (const c of conversations.values()) {
    for (const t of c.typing.values()) clearTimeout(t);
    c.typing.clear();
  }
  if (document.visibilityState !== "visible") client.setPresence("away");
  renderStatus();
  renderList();
});

client.addEventListener("synced", async () => {
  // A read receipt sent just before a drop may be lost: allow sending it again.
  for (const c of conversations.values()) c.readSent = 0;
  await refreshConversations();
  const peers = [...conversations.values()].filter((c) => c.kind === "direct").map((c) => c.peer);
  if (peers.length) subscribePresence(peers);
  if (openId) loadConversation(conversation(openId), true);
});

client.addEventListener("message", (e) => addMessages([e.detail.message]));

client.addEventListener("acked", (e) => {
  const { conversation_id, body, ack } = e.detail;
  addMessages([{
    conversation_id,
    seq: ack.seq,
    message_id: ack.message_id,
    sender_user_id: client.userId,
    timestamp_ms: ack.timestamp_ms,
    kind: "chat",
    body,
  }]);
});

client.addEventListener("sendfailed", (e) => {
  const { conversation_id, body, error } = e.detail;
  const c = conversation(conversation_id);
  c.error = `Not sent (${error.message}): “${base64ToText(body)}”`;
  // Give the text back if the composer is free, so nothing typed is lost.
  if (conversation_id === openId && !$("composer-text").value) $("composer-text").value = base64ToText(body);
  renderConversation();
});

client.addEventListener("receipts", (e) => {
  const update = e.detail;
  const c = conversation(update.conversation_id);
  for (const s of update.states || []) {
    const delivered = seqOf(s.delivered_seq);
    const read = seqOf(s.read_seq);
    if (s.user_id === client.userId) {
      // Another device of mine read it: it is read here too.
      c.readSeq = Math.max(c.readSeq, read);
      continue;
    }
    const r = c.receipts.get(s.user_id) || { delivered: 0, read: 0 };
    r.delivered = Math.max(r.delivered, delivered, read);
    r.read = Math.max(r.read, read);
    c.receipts.set(s.user_id, r);
  }
  renderList();
  if (c.id === openId) renderConversation();
});

client.addEventListener("presence", (e) => {
  for (const entry of e.detail.entries || []) {
    presence.set(entry.user_id, { status: entry.status, last_seen_ms: seqOf(entry.last_seen_ms) });
  }
  renderList();
  renderStatus();
});

client.addEventListener("typing", (e) => {
  const { conversation_id, user_id, active } = e.detail;
  const c = conversation(conversation_id);
  clearTimeout(c.typing.get(user_id));
  c.typing.delete(user_id);
  if (active) {
    c.typing.set(user_id, setTimeout(() => {
      c.typing.delete(user_id);
      renderStatus();
      renderList();
    }, TYPING_SHOWN_MS));
    resolveName(user_id);
  }
  renderStatus();
  renderList();
});

document.addEventListener("visibilitychange", () => {
  client.setPresence(document.visibilityState === "visible" ? "online" : "away");
  if (openId) markRead(conversation(openId));
});

// ----- conversations -----------------------------------------------------------------

async function refreshConversations() {
  try {
    for (const summary of await client.conversations()) upsert(summary);
  } catch {
    return; // dropped mid-way: the next `synced` tries again
  }
  renderList();
}

function upsert(summary) {
  const c = conversation(summary.conversation_id);
  c.known = true;
  c.kind = summary.kind || "direct";
  c.title = summary.title || c.title;
  c.peer = summary.peer_user_id || "0";
  c.lastSeq = Math.max(c.lastSeq, seqOf(summary.last_seq));
  c.readSeq = Math.max(c.readSeq, seqOf(summary.read_seq));
  if (c.kind === "direct" && c.peer !== "0") {
    if (c.title) names.set(c.peer, c.title);
    else resolveName(c.peer);
  }
  return c;
}

/** Add messages (any conversations); render what changed once. */
function addMessages(messages) {
  const touched = new Set();
  for (const message of messages) {
    const c = conversation(message.conversation_id);
    const seq = seqOf(message.seq);
    if (c.messages.has(seq)) continue;
    c.messages.set(seq, message);
    c.lastSeq = Math.max(c.lastSeq, seq);
    c.lastActivity = Math.max(c.lastActivity, seqOf(message.timestamp_ms));
    if (message.sender_user_id !== client.userId) resolveName(message.sender_user_id);
    if (message.kind === "system") {
      for (const id of (message.system && message.system.user_ids) || []) resolveName(id);
      c.membersStale = true;
    }
    if (c.typing.has(message.sender_user_id)) {
      clearTimeout(c.typing.get(message.sender_user_id));
      c.typing.delete(message.sender_user_id);
    }
    touched.add(c);
  }
  let unknown = false;
  for (const c of touched) {
    if (!c.known) {
      // A conversation this page has not heard of (someone opened it with us): its
      // title comes with the list.
      c.known = true;
      unknown = true;
    }
    if (c.id === openId) {
      if (c.membersStale && c.historyLoaded) loadConversation(c, false); // new members
      markRead(c);
      renderConversation();
    }
  }
  if (unknown) {
    refreshConversations().then(() => {
      const peers = [...touched].filter((c) => c.kind === "direct" && c.peer !== "0").map((c) => c.peer);
      if (peers.length) subscribePresence(peers);
    });
  }
  if (touched.size) renderList();
}

function lowestSeq(c) {
  let low = Infinity;
  for (const seq of c.messages.keys()) if (seq < low) low = seq;
  return low;
}

function highestSeq(c) {
  let high = 0;
  for (const seq of c.messages.keys()) if (seq > high) high = seq;
  return high;
}

function unreadCount(c) {
  let mine = 0;
  for (const [seq, m] of c.messages) {
    if (seq > c.readSeq && m.sender_user_id === client.userId) mine += 1;
  }
  return Math.max(0, c.lastSeq - c.readSeq - mine);
}

/**
 * Tell the server this device has read the open conversation. Only once its newest page
 * is on screen (catch-up alone is not "seen"): then up to the newest message shown,
 * contiguously. Opening a conversation reads it, as in common chat apps — messages
 * above the newest page count as read too.
 */
function markRead(c) {
  if (c.id !== openId || document.visibilityState !== "visible" || !c.historyLoaded) return;
  if (!c.messages.size) return;
  let upTo = Math.max(c.readSeq, lowestSeq(c));
  if (!c.messages.has(upTo) && upTo !== c.readSeq) return;
  while (c.messages.has(upTo + 1)) upTo += 1;
  if (upTo <= c.readSent) return;
  if (client.receipt(c.id, "read", upTo)) {
    c.readSent = upTo;
    c.readSeq = Math.max(c.readSeq, upTo);
    renderList();
  }
}

async function openConversation(id) {
  if (openId && openId !== id) stopTyping();
  openId = id;
  sessionStorage.setItem("confab.open", id);
  const c = conversation(id);
  c.readSent = 0;
  renderList();
  renderConversation(true);
  $("composer-text").focus();
  await loadConversation(c, false);
}

/** Fetch the newest page (and, for groups, members and receipts) of a conversation. */
async function loadConversation(c, again) {
  try {
    if (!c.historyLoaded || again) {
      const page = await client.history(c.id, 0, HISTORY_PAGE);
      if (!c.historyLoaded) c.hasOlder = Boolean(page.has_more);
      c.historyLoaded = true;
      addMessages(page.messages || []);
    }
    if (c.kind === "group") {
      c.membersStale = false;
      const [info, receipts] = await client.groupInfo(c.id);
      c.title = info.name || c.title;
      c.members = (info.members || []).map((m) => ({ user_id: m.user_id, joined_seq: seqOf(m.joined_seq) }));
      c.members.forEach((m) => resolveName(m.user_id));
      client.dispatchEvent(new CustomEvent("receipts", { detail: receipts }));
    }
  } catch (e) {
    c.error = e.message;
    if (c.id === openId) renderConversation();
    return;
  }
  if (c.id === openId) {
    markRead(c);
    renderConversation(true);
  }
}

async function loadOlder() {
  const c = openId && conversation(openId);
  if (!c || !c.hasOlder || c.loadingOlder || !c.messages.size) return;
  c.loadingOlder = true;
  const box = $("messages");
  const fromBottom = box.scrollHeight - box.scrollTop;
  try {
    const page = await client.history(c.id, lowestSeq(c), HISTORY_PAGE);
    c.hasOlder = Boolean(page.has_more);
    for (const m of page.messages || []) {
      c.messages.set(seqOf(m.seq), m);
      if (m.sender_user_id !== client.userId) resolveName(m.sender_user_id);
    }
  } catch (e) {
    c.error = e.message;
  } finally {
    c.loadingOlder = false;
  }
  if (c.id !== openId) return; // the reader moved on meanwhile
  renderConversation();
  box.scrollTop = box.scrollHeight - fromBottom; // keep the reader's place
}

$("older").addEventListener("click", loadOlder);
$("messages").addEventListener("scroll", () => {
  if ($("messages").scrollTop === 0) loadOlder();
});

function resolveName(userId) {
  if (!userId || userId === "0" || names.has(userId) || nameLookups.has(userId)) return;
  nameLookups.set(
    userId,
    client
      .lookupUserId(userId)
      .then((u) => {
        names.set(userId, u.username);
        renderList();
        renderConversation();
      })
      .catch(() => {})
      .finally(() => nameLookups.delete(userId)),
  );
}

const nameOf = (userId) => names.get(userId) || `user ${userId}`;

function subscribePresence(userIds) {
  client.presenceSubscribe(userIds).then(
    (update) => client.dispatchEvent(new CustomEvent("presence", { detail: update })),
    () => {},
  );
}

// ----- the sidebar forms -------------------------------------------------------------

$("new-direct").addEventListener("submit", async (e) => {
  e.preventDefault();
  const username = $("new-direct-username").value.trim().toLowerCase();
  $("sidebar-error").textContent = "";
  try {
    const c = upsert(await client.openDirect(username));
    $("new-direct-username").value = "";
    subscribePresence([c.peer]);
    openConversation(c.id);
  } catch (err) {
    $("sidebar-error").textContent = err.code === "not_found" ? `No user named ${username}` : err.message;
  }
});

$("new-group").addEventListener("submit", async (e) => {
  e.preventDefault();
  $("sidebar-error").textContent = "";
  const name = $("new-group-name").value.trim();
  const usernames = $("new-group-members").value.split(/[\s,]+/).map((s) => s.trim().toLowerCase())
    .filter((s) => s && s !== client.username);
  try {
    const ids = [];
    for (const username of usernames) {
      const user = await client.lookupUsername(username).catch((err) => {
        throw err.code === "not_found" ? new Error(`No user named ${username}`) : err;
      });
      names.set(user.user_id, user.username);
      ids.push(user.user_id);
    }
    const info = await client.groupCreate(name, ids);
    const c = conversation(info.conversation_id);
    c.known = true;
    c.kind = "group";
    c.title = info.name;
    c.members = (info.members || []).map((m) => ({ user_id: m.user_id, joined_seq: seqOf(m.joined_seq) }));
    $("new-group-name").value = "";
    $("new-group-members").value = "";
    $("new-group").closest("details").open = false;
    openConversation(c.id);
  } catch (err) {
    $("sidebar-error").textContent = err.message;
  }
});

// ----- the composer ------------------------------------------------------------------

function sendComposed() {
  const box = $("composer-text");
  const text = box.value.trim();
  if (!text || !openId) return;
  box.value = "";
  stopTyping();
  conversation(openId).error = "";
  client.send(openId, text);
  renderConversation();
  scrollToBottom();
}

function stopTyping() {
  clearTimeout(typingIdleTimer);
  if (typingSentAt && openId) client.typing(openId, false);
  typingSentAt = 0;
}

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  sendComposed();
});
$("composer-text").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) {
    e.preventDefault();
    sendComposed();
  }
});
$("composer-text").addEventListener("input", () => {
  if (!openId) return;
  if (!$("composer-text").value.trim()) return stopTyping();
  const now = Date.now();
  if (now - typingSentAt > TYPING_REFRESH_MS && client.typing(openId, true)) typingSentAt = now;
  clearTimeout(typingIdleTimer);
  typingIdleTimer = setTimeout(stopTyping, TYPING_IDLE_MS);
});

// ----- rendering ---------------------------------------------------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function titleOf(c) {
  if (c.title) return c.title;
  if (c.kind === "direct" && c.peer !== "0") return nameOf(c.peer);
  return "…";
}

function previewOf(c) {
  if (c.typing.size) return typingText(c);
  const last = c.messages.get(highestSeq(c));
  if (!last) return "";
  return last.kind === "system" ? systemText(last) : base64ToText(last.body);
}

function renderList() {
  const list = $("conversations");
  const items = [...conversations.values()]
    .filter((c) => c.known)
    .sort((a, b) => b.lastActivity - a.lastActivity || (a.id < b.id ? -1 : 1));
  list.replaceChildren(
    ...items.map((c) => {
      const li = el("li", c.id === openId ? "active" : "");
      li.dataset.id = c.id;
      const title = el("span", "title");
      if (c.kind === "direct") {
        const dot = el("span", "dot");
        dot.dataset.status = (presence.get(c.peer) || {}).status || "offline";
        title.append(dot);
      }
      title.append(titleOf(c));
      li.append(title);
      const unread = unreadCount(c);
      if (unread > 0) li.append(el("span", "unread", String(unread)));
      li.append(el("span", "preview", previewOf(c)));
      li.addEventListener("click", () => openConversation(c.id));
      return li;
    }),
  );
}

function typingText(c) {
  const who = [...c.typing.keys()].map(nameOf);
  if (!who.length) return "";
  return who.length === 1 ? `${who[0]} is typing…` : `${who.join(", ")} are typing…`;
}

function renderStatus() {
  if (!openId) return;
  const c = conversation(openId);
  const status = $("conversation-status");
  const typing = typingText(c);
  status.classList.toggle("typing", Boolean(typing));
  if (typing) {
    status.textContent = typing;
  } else if (c.kind === "direct") {
    const p = presence.get(c.peer);
    if (!p) status.textContent = "";
    else if (p.status === "online") status.textContent = "online";
    else if (p.status === "away") status.textContent = "away";
    else status.textContent = p.last_seen_ms ? `last seen ${when(p.last_seen_ms)}` : "offline";
  } else {
    status.textContent = c.members ? `${c.members.length} members` : "group";
  }
  $("conversation-error").textContent = c.error || "";
}

function when(ms) {
  const d = new Date(ms);
  const today = new Date().toDateString() === d.toDateString();
  const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return today ? time : `${d.toLocaleDateString()} ${time}`;
}

/** sent / delivered / read for one of my messages: every other member who was in the
 * conversation when it was sent must be past it. */
function tickOf(c, seq) {
  let others;
  if (c.kind === "direct") others = [c.peer];
  else if (c.members) {
    others = c.members.filter((m) => m.user_id !== client.userId && m.joined_seq <= seq).map((m) => m.user_id);
  } else others = [...c.receipts.keys()];
  if (!others.length) return "sent";
  const states = others.map((u) => c.receipts.get(u) || { delivered: 0, read: 0 });
  if (states.every((s) => s.read >= seq)) return "read";
  if (states.every((s) => s.delivered >= seq)) return "delivered";
  return "sent";
}

const TICKS = { pending: "🕓", sent: "✓", delivered: "✓✓", read: "✓✓" };

function systemText(m) {
  const s = m.system || {};
  const actorId = m.sender_user_id === "0" ? s.actor_user_id : m.sender_user_id;
  const actor = nameOf(actorId);
  const ids = s.user_ids || [];
  const users = ids.map(nameOf).join(", ");
  switch (s.op) {
    case "add_members":
      if (!s.name) return `${actor} added ${users}`;
      // Creation reads as the creator adding everyone, the creator included.
      return `${actor} created “${s.name}” with ${ids.filter((u) => u !== actorId).map(nameOf).join(", ")}`;
    case "remove_members":
      return `${actor} removed ${users}`;
    case "leave":
      return `${actor} left`;
    case "set_role":
      return `${actor} made ${users} ${s.role === "member" ? "a member" : `the ${s.role}`}`;
    case "rename":
    default:
      return `${actor} renamed the group to “${s.name || ""}”`;
  }
}

function renderConversation(toBottom = false) {
  $("empty").hidden = Boolean(openId);
  $("conversation").hidden = !openId;
  if (!openId) return;
  const c = conversation(openId);
  $("conversation-title").textContent = titleOf(c);
  renderStatus();
  $("older").hidden = !c.hasOlder;
  const box = $("messages");
  const atBottom = toBottom || box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  const rows = [];
  for (const seq of [...c.messages.keys()].sort((a, b) => a - b)) {
    const m = c.messages.get(seq);
    const mine = m.sender_user_id === client.userId;
    if (m.kind === "system") {
      const li = el("li", "message system", systemText(m));
      li.dataset.seq = String(seq);
      rows.push(li);
      continue;
    }
    const li = el("li", mine ? "message mine" : "message");
    li.dataset.seq = String(seq);
    if (!mine && c.kind === "group") li.append(el("div", "sender", nameOf(m.sender_user_id)));
    li.append(el("div", "text", base64ToText(m.body)));
    const meta = el("div", "meta", when(seqOf(m.timestamp_ms)));
    if (mine) {
      const tick = tickOf(c, seq);
      const t = el("span", "tick", TICKS[tick]);
      t.dataset.tick = tick;
      t.title = tick;
      meta.append(t);
    }
    li.append(meta);
    rows.push(li);
  }
  for (const entry of client.unacknowledged(openId)) {
    const li = el("li", "message mine pending");
    li.dataset.key = entry.key;
    li.append(el("div", "text", base64ToText(entry.body)));
    const meta = el("div", "meta");
    const t = el("span", "tick", TICKS.pending);
    t.dataset.tick = "pending";
    t.title = "sending";
    meta.append(t);
    li.append(meta);
    rows.push(li);
  }
  $("message-list").replaceChildren(...rows);
  if (atBottom) scrollToBottom();
}

function scrollToBottom() {
  const box = $("messages");
  box.scrollTop = box.scrollHeight;
}

// ----- start -------------------------------------------------------------------------

if (client.loggedIn) {
  showChat();
  const last = sessionStorage.getItem("confab.open");
  if (last) openConversation(last);
} else {
  showLogin();
}
