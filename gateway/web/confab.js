// Confab client library for browsers: the reference JavaScript client of the
// `confab.v1.json` WebSocket protocol (docs/protocol.md). No dependencies, no build step.
//
// What it does for an app:
//  - accounts and tokens over HTTP (`/v1/users`, `/v1/login`, `/v1/token/refresh`); the
//    device id and tokens are kept in `storage`, so a reload is the same device and keeps
//    its delivery cursors;
//  - one WebSocket session, kept up: Hello, heartbeats (`ping` every
//    `heartbeat_interval_ms`), reconnect with capped, jittered backoff after any drop,
//    access-token refresh before a Hello that would fail;
//  - requests matched to answers by `request_id` (promises; an `error` frame rejects
//    with a `ConfabError` carrying its code);
//  - an outbox of sends: each send keeps its idempotency key and is retried after a
//    reconnect until it is acknowledged (the server stores it once: `status: duplicate`);
//    the outbox is in `storage`, so even a reload retries what was not acknowledged;
//  - catch-up: the server pushes everything after this device's delivered cursor after
//    every Hello; the library reports each message once per (conversation, seq) it has
//    seen in this page's life and sends `delivered` receipts for what arrived.
//
// Events (EventTarget; `event.detail` holds the data):
//   state     {state: "connecting" | "online" | "offline", retryInMs?}
//   welcome   the Welcome body
//   message   {message: StoredMessage, live: bool}   (live = Deliver, else catch-up)
//   synced    {}                                     (catch-up finished)
//   receipts  ReceiptUpdate body
//   presence  PresenceUpdate body
//   typing    Typing body
//   acked     {conversation_id, key, body, ack}      (an outbox send became durable)
//   sendfailed {conversation_id, key, body, error}   (refused for good: forbidden, too_large)
//   loggedout {reason}

/** Reconnect backoff: first delay, cap. Full jitter in between. */
export const RECONNECT_BASE_MS = 250;
export const RECONNECT_MAX_MS = 10_000;
/** A request with no answer after this long is rejected (the session is probably dead). */
export const REQUEST_TIMEOUT_MS = 15_000;
/** Refresh the access token when it has less than this left. */
export const TOKEN_REFRESH_MARGIN_MS = 60_000;
/** Delivered receipts are coalesced over this window per conversation. */
export const RECEIPT_DELAY_MS = 100;

const SUBPROTOCOL = "confab.v1.json";
const STORE_KEY = "confab.session";
/** The outbox is kept per user, so an automatic logout (a refused refresh) does not lose
 * what was typed: logging in again as the same user resumes it. */
const outboxKey = (userId) => `confab.outbox.${userId}`;
/** Error codes that refuse a send for good; any other error is retried with the same key. */
const FINAL_SEND_ERRORS = new Set([
  "forbidden", "invalid_argument", "too_large", "not_found", "malformed_frame", "group_full",
]);
/** A connection counts as healthy (backoff starts over) after staying up this long. */
const STABLE_CONNECTION_MS = 5_000;

/** An `error` frame (or an HTTP error answer): `code` is the snake_case ErrorCode. */
export class ConfabError extends Error {
  constructor(code, message, retryAfterMs = 0) {
    super(message || code);
    this.name = "ConfabError";
    this.code = code;
    this.retryAfterMs = retryAfterMs;
  }
}

// ----- encoding helpers ----------------------------------------------------------------

/** UTF-8 text → standard base64 (the JSON encoding of byte vectors). */
export function textToBase64(text) {
  const bytes = new TextEncoder().encode(text);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

/** base64 → UTF-8 text (invalid sequences become U+FFFD rather than failing). */
export function base64ToText(b64) {
  try {
    const binary = atob(b64 || "");
    const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
    return new TextDecoder().decode(bytes);
  } catch {
    return "";
  }
}

/** A fresh 16-byte idempotency key as 32 lowercase hex digits. */
export function newIdempotencyKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Sequence numbers and ids travel as decimal strings; sequences fit a JS number. */
export const seqOf = (value) => Number(value || 0);

// ----- the client ----------------------------------------------------------------------

export class ConfabClient extends EventTarget {
  /**
   * @param {object} [options]
   * @param {string} [options.baseUrl]  http(s) origin of the gateway (default: this page's)
   * @param {Storage} [options.storage] where the session and outbox are kept (localStorage)
   * @param {string} [options.clientName] sent in Hello
   */
  constructor(options = {}) {
    super();
    this.baseUrl = (options.baseUrl || location.origin).replace(/\/$/, "");
    this.storage = options.storage || localStorage;
    this.clientName = options.clientName || "confab-web";
    this.session = readJson(this.storage, STORE_KEY);
    this.outbox = this.session ? readJson(this.storage, outboxKey(this.session.user_id)) || [] : [];
    this.clockSkewMs = 0; // server clock − ours, from Welcome
    this.ws = null;
    this.state = "offline";
    this.nextRequestId = 1;
    this.pending = new Map(); // request_id → {resolve, reject, timer, multi}
    this.seen = new Map(); // conversation_id → Set of seqs reported in this page's life
    this.deliveredMax = new Map(); // conversation_id → highest seq received
    this.deliveredSent = new Map(); // conversation_id → highest delivered receipt sent
    this.receiptTimers = new Map();
    this.attempt = 0;
    this.reconnectTimer = null;
    this.heartbeatTimer = null;
    this.lastHeard = 0;
    this.wanted = false; // whether the app wants a connection
    this.welcome = null;
    this.synced = false;
    this.onBrowserOnline = () => {
      if (this.wanted && this.state !== "online") this.reconnectNow();
    };
    if (typeof window !== "undefined") window.addEventListener("online", this.onBrowserOnline);
  }

  /** Whether there are stored credentials (a reload can go straight to `connect`). */
  get loggedIn() {
    return Boolean(this.session && this.session.refresh_token);
  }

  get userId() {
    return this.session ? this.session.user_id : "";
  }

  get username() {
    return this.session ? this.session.username : "";
  }

  // ----- HTTP ------------------------------------------------------------------------

  async http(method, path, body, withToken = false) {
    const headers = {};
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (withToken) {
      await this.freshToken();
      if (!this.session) throw new ConfabError("unauthenticated", "not logged in");
      headers.Authorization = `Bearer ${this.session.access_token}`;
    }
    let response;
    try {
      response = await fetch(this.baseUrl + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      throw new ConfabError("unavailable", `network error: ${e.message}`);
    }
    const text = await response.text();
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      /* a non-JSON answer (proxy error page) */
    }
    if (!response.ok) {
      const err = (json && json.error) || {};
      throw new ConfabError(err.code || `http_${response.status}`, err.message || text);
    }
    return json;
  }

  /** Create an account. Resolves to the new user id. */
  async register(username, password) {
    const answer = await this.http("POST", "/v1/users", { username, password });
    return answer.user_id;
  }

  /**
   * Log in. The device id used last time for this username (on this browser) is reused,
   * so cursors carry over; otherwise the server registers a new device.
   */
  async login(username, password) {
    const devices = readJson(this.storage, "confab.devices") || {};
    const body = { username, password, device_name: "web" };
    if (devices[username]) body.device_id = devices[username];
    let answer;
    try {
      answer = await this.http("POST", "/v1/login", body);
    } catch (e) {
      if (e.code !== "not_found" || !body.device_id) throw e;
      delete body.device_id; // the remembered device is gone: register a new one
      answer = await this.http("POST", "/v1/login", body);
    }
    devices[username] = answer.device_id;
    writeJson(this.storage, "confab.devices", devices);
    this.resetSessionState();
    this.setSession({ ...answer, username });
    this.outbox = readJson(this.storage, outboxKey(answer.user_id)) || [];
    return this.session;
  }

  /**
   * Forget the session (the device id stays remembered for the next login). `keepOutbox`:
   * keep unacknowledged sends for the next login of this user (automatic logouts).
   */
  logout(keepOutbox = false) {
    this.disconnect();
    if (this.session && !keepOutbox) this.storage.removeItem(outboxKey(this.session.user_id));
    this.session = null;
    this.outbox = [];
    this.storage.removeItem(STORE_KEY);
    this.resetSessionState();
  }

  /** Drop what this page learned about the last user's conversations. */
  resetSessionState() {
    this.seen.clear();
    this.deliveredMax.clear();
    this.deliveredSent.clear();
    for (const timer of this.receiptTimers.values()) clearTimeout(timer);
    this.receiptTimers.clear();
  }

  setSession(session) {
    this.session = session;
    writeJson(this.storage, STORE_KEY, session);
  }

  /** Make sure the access token is valid for a while; refresh it otherwise. */
  async freshToken() {
    if (!this.session) throw new ConfabError("unauthenticated", "not logged in");
    const serverNow = Date.now() + this.clockSkewMs;
    if (seqOf(this.session.access_expires_ms) - serverNow > TOKEN_REFRESH_MARGIN_MS) return;
    if (!this.refreshing) {
      const session = this.session;
      this.refreshing = (async () => {
        try {
          const answer = await this.http("POST", "/v1/token/refresh", {
            refresh_token: session.refresh_token,
          });
          // Logged out (or in as someone else) meanwhile: this answer is stale.
          if (this.session !== session) throw new ConfabError("unauthenticated", "logged out");
          this.setSession({ ...session, ...answer });
        } finally {
          this.refreshing = null;
        }
      })();
    }
    await this.refreshing;
  }

  /** `GET /v1/users?username=` → {user_id, username}. */
  lookupUsername(username) {
    return this.http("GET", `/v1/users?username=${encodeURIComponent(username)}`, undefined, true);
  }

  /** `GET /v1/users/{id}` → {user_id, username}. */
  lookupUserId(userId) {
    return this.http("GET", `/v1/users/${encodeURIComponent(userId)}`, undefined, true);
  }

  // ----- the session -----------------------------------------------------------------

  /** Open the session and keep it open until `disconnect`. */
  connect() {
    this.wanted = true;
    if (!this.ws) this.open();
  }

  disconnect() {
    this.wanted = false;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    if (this.ws) this.ws.close(1000, "bye");
    this.teardown("disconnected");
  }

  reconnectNow() {
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    this.attempt = 0;
    if (this.ws) this.ws.close(1000, "reconnecting");
    this.teardown("reconnecting");
    this.open();
  }

  setState(state, extra = {}) {
    this.state = state;
    this.emit("state", { state, ...extra });
  }

  async open() {
    if (!this.wanted || this.ws) return;
    this.setState("connecting");
    try {
      await this.freshToken();
    } catch (e) {
      if (e.code === "unauthenticated") return this.loggedOut("session expired");
      return this.scheduleReconnect();
    }
    if (!this.wanted || this.ws) return;
    const url = this.baseUrl.replace(/^http/, "ws") + "/ws";
    let ws;
    try {
      ws = new WebSocket(url, SUBPROTOCOL);
    } catch {
      return this.scheduleReconnect();
    }
    this.ws = ws;
    this.synced = false;
    ws.onopen = () => {
      this.lastHeard = Date.now();
      if (!this.session) return;
      this.call({ type: "hello", token: this.session.access_token, client: this.clientName })
        .then((welcome) => this.onWelcome(welcome))
        .catch((e) => {
          // A refused Hello is followed by a close, which handles it; a Hello with no
          // answer (a dead path) is dropped here and retried.
          if (this.ws !== ws || e.code !== "unavailable") return;
          ws.close(4000, "no welcome");
          this.teardown("no welcome");
          this.scheduleReconnect();
        });
    };
    ws.onmessage = (event) => this.onFrame(event.data);
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.teardown(event.reason || `closed ${event.code}`);
      if (event.code === 4001) {
        // The token was refused: make the next attempt refresh it first.
        if (this.session) this.setSession({ ...this.session, access_expires_ms: "0" });
      }
      this.scheduleReconnect();
    };
    ws.onerror = () => {
      /* onclose follows */
    };
  }

  /** Drop the socket's state; pending requests fail (sends stay in the outbox). */
  teardown(reason) {
    clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = null;
    if (this.ws) {
      this.ws.onopen = this.ws.onmessage = this.ws.onclose = this.ws.onerror = null;
      this.ws = null;
    }
    this.welcome = null;
    this.synced = false;
    this.deliveredSent.clear();
    for (const [, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new ConfabError("unavailable", `connection lost: ${reason}`));
    }
    this.pending.clear();
    if (this.state !== "offline") this.setState("offline");
  }

  scheduleReconnect() {
    if (!this.wanted || this.reconnectTimer) return;
    const cap = Math.min(RECONNECT_MAX_MS, RECONNECT_BASE_MS * 2 ** this.attempt);
    const delay = Math.round(Math.random() * cap);
    this.attempt = Math.min(this.attempt + 1, 16);
    this.setState("offline", { retryInMs: delay });
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      this.open();
    }, delay);
  }

  loggedOut(reason) {
    this.logout(true);
    this.emit("loggedout", { reason });
  }

  onWelcome(welcome) {
    this.welcome = welcome;
    this.clockSkewMs = seqOf(welcome.server_time_ms) ? seqOf(welcome.server_time_ms) - Date.now() : 0;
    // Back off from scratch only once this connection proved stable, so a server that
    // closes right after Welcome is not hammered.
    const ws = this.ws;
    clearTimeout(this.stableTimer);
    this.stableTimer = setTimeout(() => {
      if (this.ws === ws) this.attempt = 0;
    }, STABLE_CONNECTION_MS);
    this.setState("online");
    this.emit("welcome", welcome);
    const interval = Math.max(1000, welcome.heartbeat_interval_ms || 30_000);
    clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = setInterval(() => this.heartbeat(interval), interval);
  }

  heartbeat(interval) {
    // Nothing heard for two intervals and a half: the path is dead even if the browser
    // has not noticed. Drop it and reconnect (catch-up fills the gap).
    if (Date.now() - this.lastHeard > interval * 2.5) {
      if (this.ws) this.ws.close(4000, "heartbeat lost");
      this.teardown("heartbeat lost");
      this.scheduleReconnect();
      return;
    }
    this.call({ type: "ping", nonce: String(Date.now()), client_time_ms: String(Date.now()) })
      .catch(() => {});
  }

  onFrame(data) {
    this.lastHeard = Date.now();
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    const body = frame.body || {};
    const waiting = frame.request_id !== "0" && this.pending.get(frame.request_id);
    if (waiting) {
      if (body.type === "error") {
        clearTimeout(waiting.timer);
        this.pending.delete(frame.request_id);
        waiting.reject(new ConfabError(body.code, body.message, body.retry_after_ms));
      } else if (waiting.multi) {
        waiting.answers.push(body);
        if (waiting.answers.length === waiting.multi) {
          clearTimeout(waiting.timer);
          this.pending.delete(frame.request_id);
          waiting.resolve(waiting.answers);
        }
      } else {
        clearTimeout(waiting.timer);
        this.pending.delete(frame.request_id);
        waiting.resolve(body);
      }
      return;
    }
    switch (body.type) {
      case "sync_batch":
        for (const m of body.messages || []) this.onMessage(m, false);
        for (const r of body.receipts || []) this.emit("receipts", r);
        if (!body.has_more) this.onSynced();
        break;
      case "deliver":
        this.onMessage(body.message, true);
        break;
      case "receipt_update":
        this.emit("receipts", body);
        break;
      case "presence_update":
        this.emit("presence", body);
        break;
      case "typing":
        this.emit("typing", body);
        break;
      default:
        break;
    }
  }

  onMessage(message, live) {
    const conversation = message.conversation_id;
    const seq = seqOf(message.seq);
    this.noteDelivered(conversation, seq);
    let seen = this.seen.get(conversation);
    if (!seen) this.seen.set(conversation, (seen = new Set()));
    if (seen.has(seq)) return; // at-least-once delivery: each (conversation, seq) once
    seen.add(seq);
    this.emit("message", { message, live });
  }

  onSynced() {
    this.synced = true;
    // Receipts sent on a connection that then dropped may never have arrived: repeat
    // them (they are monotone, a repeat is harmless).
    for (const [conversation, upTo] of this.deliveredMax) {
      if (upTo > (this.deliveredSent.get(conversation) || 0) && this.receipt(conversation, "delivered", upTo)) {
        this.deliveredSent.set(conversation, upTo);
      }
    }
    this.emit("synced", {});
    this.flushOutbox();
  }

  /** Tell the server this device has everything up to `seq` (coalesced). */
  noteDelivered(conversation, seq) {
    if (seq <= (this.deliveredMax.get(conversation) || 0)) return;
    this.deliveredMax.set(conversation, seq);
    if (this.receiptTimers.has(conversation)) return;
    this.receiptTimers.set(
      conversation,
      setTimeout(() => {
        this.receiptTimers.delete(conversation);
        const upTo = this.deliveredMax.get(conversation) || 0;
        if (upTo <= (this.deliveredSent.get(conversation) || 0)) return;
        if (this.receipt(conversation, "delivered", upTo)) this.deliveredSent.set(conversation, upTo);
      }, RECEIPT_DELAY_MS),
    );
  }

  /** Send a frame without waiting for an answer. False when not connected. */
  post(body) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify({ request_id: "0", body }));
    return true;
  }

  /**
   * Send a request; resolve with the answer's body (or, with `answers > 1`, an array of
   * that many answer bodies). Rejects with ConfabError on an `error` frame or a drop.
   */
  call(body, answers = 1) {
    return new Promise((resolve, reject) => {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
        reject(new ConfabError("unavailable", "not connected"));
        return;
      }
      const id = String(this.nextRequestId++);
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new ConfabError("unavailable", "request timed out"));
      }, REQUEST_TIMEOUT_MS);
      this.pending.set(id, {
        resolve,
        reject,
        timer,
        multi: answers > 1 ? answers : 0,
        answers: [],
      });
      this.ws.send(JSON.stringify({ request_id: id, body }));
    });
  }

  /** Requests that need a live session wait for it (up to the request timeout). */
  async ready() {
    if (this.state === "online" && this.synced) return;
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.removeEventListener("synced", done);
        reject(new ConfabError("unavailable", "not connected"));
      }, REQUEST_TIMEOUT_MS);
      const done = () => {
        clearTimeout(timer);
        this.removeEventListener("synced", done);
        resolve();
      };
      this.addEventListener("synced", done);
    });
  }

  // ----- requests --------------------------------------------------------------------

  async openDirect(peerUsername) {
    await this.ready();
    const answer = await this.call({ type: "open_direct", peer_username: peerUsername });
    return answer.conversation;
  }

  async conversations(limit = 200) {
    await this.ready();
    const answer = await this.call({ type: "conversation_list_request", limit });
    return answer.conversations || [];
  }

  /** A page of history, ascending: the newest page, or the one before `beforeSeq`. */
  async history(conversationId, beforeSeq = 0, limit = 50) {
    await this.ready();
    return this.call({
      type: "history_request",
      conversation_id: conversationId,
      before_seq: String(beforeSeq),
      after_seq: "0",
      limit,
    });
  }

  /** Move this device's delivered/read cursor. Returns false if not connected now. */
  receipt(conversationId, kind, upToSeq) {
    return this.post({
      type: "receipt",
      conversation_id: conversationId,
      kind,
      up_to_seq: String(upToSeq),
    });
  }

  /**
   * Queue a text message. Returns its idempotency key at once; the `acked` event follows
   * when it is durable (`sendfailed` if the server refuses it for good). It survives
   * drops and reloads until then.
   */
  send(conversationId, text) {
    const entry = { key: newIdempotencyKey(), conversation_id: conversationId, body: textToBase64(text) };
    this.outbox.push(entry);
    this.saveOutbox();
    this.flushOutbox();
    return entry.key;
  }

  saveOutbox() {
    if (!this.session) return;
    const entries = this.outbox.map(({ inFlight, ...rest }) => rest);
    writeJson(this.storage, outboxKey(this.session.user_id), entries);
  }

  /**
   * Send the oldest unacknowledged message of each conversation. One in flight per
   * conversation keeps the order the user typed in: sequence numbers are assigned in
   * the order sends reach the conversation's owner.
   */
  flushOutbox() {
    if (!this.synced) return;
    const busy = new Set();
    for (const entry of this.outbox) {
      if (busy.has(entry.conversation_id)) continue;
      busy.add(entry.conversation_id);
      if (!entry.inFlight) this.trySend(entry);
    }
  }

  trySend(entry) {
    entry.inFlight = true;
    this.call({
      type: "send",
      conversation_id: entry.conversation_id,
      idempotency_key: entry.key,
      kind: "chat",
      body: entry.body,
    })
      .then((ack) => {
        this.outbox = this.outbox.filter((e) => e.key !== entry.key);
        this.saveOutbox();
        // This device holds its own message: the delivered cursor may pass it, when it
        // is next in line (never across a message not received yet).
        const seq = seqOf(ack.seq);
        if (seq === (this.deliveredMax.get(entry.conversation_id) || 0) + 1) {
          this.noteDelivered(entry.conversation_id, seq);
        }
        this.emit("acked", { conversation_id: entry.conversation_id, key: entry.key, body: entry.body, ack });
        this.flushOutbox();
      })
      .catch((e) => {
        entry.inFlight = false;
        if (!FINAL_SEND_ERRORS.has(e.code)) {
          // Dropped connections retry after the reconnect's catch-up; a timeout, a rate
          // limit or a server-side failure on a live session retries here, with the
          // same key (the server stores it once).
          entry.retries = (entry.retries || 0) + 1;
          const backoff = Math.min(RECONNECT_MAX_MS, 500 * 2 ** Math.min(entry.retries, 5));
          setTimeout(() => this.flushOutbox(), Math.max(backoff, e.retryAfterMs || 0));
          return;
        }
        // Refused for good (forbidden, too_large, …): drop it and say so.
        this.outbox = this.outbox.filter((x) => x.key !== entry.key);
        this.saveOutbox();
        this.emit("sendfailed", {
          conversation_id: entry.conversation_id,
          key: entry.key,
          body: entry.body,
          error: e,
        });
        this.flushOutbox();
      });
  }

  /** Sends not acknowledged yet, oldest first: [{key, conversation_id, body}]. */
  unacknowledged(conversationId) {
    return this.outbox.filter((e) => e.conversation_id === conversationId);
  }

  typing(conversationId, active) {
    return this.post({ type: "typing", conversation_id: conversationId, active });
  }

  async presenceSubscribe(userIds) {
    await this.ready();
    return this.call({ type: "presence_subscribe", user_ids: userIds.map(String) });
  }

  setPresence(status) {
    return this.post({ type: "presence_set", status });
  }

  async groupCreate(name, memberUserIds) {
    await this.ready();
    return this.call({ type: "group_create", name, member_user_ids: memberUserIds.map(String) });
  }

  /** Group info and every member's receipts: [GroupInfo, ReceiptUpdate]. */
  async groupInfo(conversationId) {
    await this.ready();
    return this.call({ type: "group_info_request", conversation_id: conversationId }, 2);
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

function readJson(storage, key) {
  try {
    return JSON.parse(storage.getItem(key) || "null");
  } catch {
    return null;
  }
}

function writeJson(storage, key, value) {
  try {
    storage.setItem(key, JSON.stringify(value));
  } catch {
    /* storage full or disabled: the session still works for this page */
  }
}
