/*
 * notify-client.js: a dependency-free browser client for the Notification Center (protocol v2, and v1 servers).
 * No build step: copy the file, or load it from a running server at /static/notifications/notify-client.js.
 *
 *   const client = new NotifyClient("ws://localhost:8765/", {
 *     ids: ["test-uuid"],                  // registered now and again, resuming, after every reconnect;
 *                                          // in signed mode with a token: [{id: "test-uuid", token: "..."}]
 *     getToken: (id) => fetchToken(id),    // signed mode: a fresh token for id (a string, or a promise
 *                                          // of one), asked before every registration but the first
 *                                          // of an id given with a token; null: register without one
 *     onMessage: (text, info) => {},       // each notification: the exact text sent, and
 *                                          // info = {id, position, replayed}: the id it was sent to, its
 *                                          // position (an opaque string, or null), and replayed: true when
 *                                          // it was sent before this registration (missed, now caught up)
 *     onGap: (id) => {},                   // some notifications of id could not be recovered: re-read
 *                                          // the application's state (what the notifications were about)
 *     onRefused: (id, code) => {},         // the server refused to register id: "limit", "unavailable",
 *                                          // "token-required", "token-invalid", "token-expired";
 *                                          // or getToken failed: "token-unavailable" (retried)
 *     onState: (state, detail) => {},      // "connecting", "connected", "reconnecting", "closed";
 *                                          // when reconnecting, detail.delay: ms until the next try,
 *                                          // detail.code: the close code that ended the connection
 *   });
 *   client.register("another-id");         // up to 16 ids per connection (the server's limit)
 *   client.register("third-id", token);    // with a token for its first registration (signed mode)
 *   client.send("someone-else", "hello");  // false when not connected (nothing is queued)
 *   client.close();                        // for good: no reconnect
 *
 * Resuming: the client registers every id with protocol v2 frames and keeps
 * the position of the last notification of each id, in memory and in the
 * page's sessionStorage (key "notify-client " + JSON of [server URL, id]), so
 * that after a reconnect or a reload of the page it registers with "since"
 * and the server replays, in order and once, what was sent meanwhile, or
 * says it cannot: then onGap(id). Where sessionStorage is unavailable (some
 * privacy modes) positions live in memory only: a reload then starts afresh.
 * A server that speaks only protocol v1 answers nothing to a registration
 * and sends raw text: the client works as before (info.id and info.position
 * are then null). send() sends protocol v1 frames (no reply).
 *
 * Signed registrations: a server in signed mode registers an id only with a
 * token that the application's server made for it (a view of the page's own
 * site hands it out), and tokens expire. A token given with an id is used for
 * its first registration; every registration after that (each reconnect, a
 * resume) sends the token that getToken(id) gives then, so that a page open
 * for days keeps registering. When the server answers "token-expired" the
 * client asks getToken once more and registers again before giving up
 * (onRefused). When getToken fails (throws, rejects, gives neither a string
 * nor null) it is onRefused(id, "token-unavailable"), and getToken is asked
 * again after a delay (minDelay, doubling up to maxDelay) while connected.
 * Tokens are kept in memory only: never in sessionStorage, never logged.
 *
 * When the connection closes the client reconnects on its own: after
 * 0.5 s, 1 s, 2 s, ... up to 30 s (minDelay, maxDelay), each delay randomised
 * between half and all of it so that thousands of pages do not come back at
 * the same instant; within restartDelay (1 s) when the server closed with
 * 4012 (restarting, or continuity lost: resume at once); and only after
 * slowDelay (3 s) or more, doubling, when it closed with 4008 (a limit
 * broken) or 4013 (it cannot register now). When the browser comes back
 * online it tries at once instead of waiting out a network backoff.
 * The server's greeting is not a notification and is not passed to onMessage.
 * Notifications are untrusted text: show them with textContent, never innerHTML.
 */
(function (global) {
  "use strict";

  const GREETING = "..:: Hello from the Notification Center ::..";
  const REGISTER = "connected"; // the message text that the protocol reads as a registration
  const RESTARTING = 4012; // reconnect soon and resume
  const SLOW_DOWN = new Set([4008, 4013]); // a limit broken; cannot register now: back off for seconds
  const STORAGE_PREFIX = "notify-client ";
  const TOKEN_EXPIRED = "token-expired"; // a refusal that a fresh token from getToken may cure
  const TOKEN_UNAVAILABLE = "token-unavailable"; // getToken failed: the client's own code, never the server's

  // sessionStorage, or null where the page may not use it (reading the property itself can throw).
  function sessionStore() {
    try {
      return global.sessionStorage || null;
    } catch (error) {
      return null;
    }
  }

  class NotifyClient {
    constructor(
      url,
      {
        ids = [],
        getToken = null,
        onMessage = () => {},
        onGap = () => {},
        onRefused = () => {},
        onState = () => {},
        minDelay = 500,
        maxDelay = 30000,
        restartDelay = 1000,
        slowDelay = 3000,
      } = {},
    ) {
      const parsed = new URL(url); // throws a TypeError on an invalid address
      if (parsed.protocol !== "ws:" && parsed.protocol !== "wss:") {
        throw new TypeError(`not a WebSocket address (ws:// or wss://): ${url}`);
      }
      this.url = parsed.href;
      this.ids = new Set();
      this.tokens = new Map(); // id -> the token given with it, for its first registration (memory only)
      for (const entry of ids) {
        const id = typeof entry === "string" ? entry : entry.id;
        this.ids.add(id);
        if (typeof entry !== "string" && typeof entry.token === "string") this.tokens.set(id, entry.token);
      }
      this.getToken = getToken;
      this.positions = new Map(); // id -> the last position seen (a string); read from sessionStorage once
      this.onMessage = onMessage;
      this.onGap = onGap;
      this.onRefused = onRefused;
      this.onState = onState;
      this.minDelay = minDelay;
      this.maxDelay = maxDelay;
      this.restartDelay = restartDelay;
      this.slowDelay = slowDelay;
      this.attempt = 0; // reconnects since the last connection that lived a while
      this.slowAttempt = 0; // of which after 4008 or 4013
      this.closed = false;
      this.timer = null;
      this.waitingForNetwork = false; // the pending retry may be cut short by the "online" event
      // Back online (Wi-Fi again, out of sleep): no need to wait out the backoff.
      this.onOnline = () => {
        if (this.timer === null || !this.waitingForNetwork) return;
        clearTimeout(this.timer);
        this.timer = null;
        this.open("reconnecting");
      };
      global.addEventListener?.("online", this.onOnline);
      this.open("connecting");
    }

    open(state) {
      this.setState(state);
      const socket = new WebSocket(this.url);
      const asked = new Set(); // the ids registered (v2) on this socket
      const renewed = new Set(); // the ids registered again on this socket after a "token-expired"
      let first = true;
      let speaks = null; // the protocol version the server speaks on this socket (2: it answered a registration)
      let openedAt = 0;
      this.socket = socket;
      this.asked = asked;
      this.renewed = renewed;
      socket.onopen = () => {
        openedAt = Date.now();
        this.ids.forEach((id) => this.registerOn(socket, id, asked));
        this.setState("connected");
      };
      socket.onmessage = (event) => {
        if (this.socket !== socket || this.closed) return;
        const greeting = first && event.data === GREETING;
        first = false;
        if (greeting) return;
        const frame = parse(event.data);
        // A v2 server's first frame to a connection that registered is a reply to a registration, or a
        // broadcast (the same for either server: its text). A v1-only server's is a notification: from
        // then on every frame is a notification's raw text, even one that looks like a v2 frame.
        if (speaks === null && asked.size > 0) {
          if (isReply(frame, asked)) speaks = 2;
          else if (!isBroadcast(frame)) speaks = 1;
        }
        this.handle(speaks === 2 || (speaks === null && isBroadcast(frame)) ? frame : null, event.data);
      };
      socket.onclose = (event) => {
        if (this.socket !== socket || this.closed) return;
        // A connection that lived a while starts the backoff afresh; one refused at once keeps backing off.
        if (openedAt && Date.now() - openedAt > 5000) {
          this.attempt = 0;
          this.slowAttempt = 0;
        }
        const delay = this.delayAfter(event.code);
        this.waitingForNetwork = event.code !== RESTARTING && !SLOW_DOWN.has(event.code);
        this.setState("reconnecting", { attempt: this.attempt, delay, code: event.code });
        this.timer = setTimeout(() => {
          this.timer = null;
          this.open("reconnecting");
        }, delay);
      };
    }

    // The ms to wait before reconnecting after a close with `code`.
    delayAfter(code) {
      const jitter = (ceiling) => ceiling / 2 + (Math.random() * ceiling) / 2;
      if (code === RESTARTING) return Math.random() * this.restartDelay;
      if (SLOW_DOWN.has(code)) {
        // Between slowDelay and twice it, doubling after each further 4008 or 4013, up to maxDelay/2 ... maxDelay.
        const base = Math.min(Math.max(this.maxDelay / 2, this.slowDelay), this.slowDelay * 2 ** this.slowAttempt);
        this.slowAttempt += 1;
        this.attempt += 1;
        return 2 * jitter(base);
      }
      const ceiling = Math.min(this.maxDelay, this.minDelay * 2 ** this.attempt);
      this.attempt += 1;
      return jitter(ceiling);
    }

    // A frame: `frame` is the parsed JSON object of a v2 server's frame, or null (raw text: a v1 server).
    handle(frame, text) {
      if (frame === null || typeof frame.type !== "string") {
        this.onMessage(text, { id: null, position: null, replayed: false });
        return;
      }
      const id = typeof frame.recipient_uuid === "string" ? frame.recipient_uuid : null;
      const position = typeof frame.position === "string" ? frame.position : null;
      switch (frame.type) {
        case "registered":
          if (id === null) return;
          // recovered true: what follows (replayed) brings the position up to date; else start from the newest.
          if (frame.recovered !== true) this.remember(id, position);
          if (frame.recovered === false) this.onGap(id);
          return;
        case "message":
          if (typeof frame.message !== "string") break;
          if (id !== null && position !== null && this.ids.has(id)) this.remember(id, position);
          this.onMessage(frame.message, { id, position, replayed: frame.replayed === true });
          return;
        case "refused":
          if (id === null) return;
          // An expired token: once per id and connection, a fresh one from getToken, then give up.
          if (frame.code === TOKEN_EXPIRED && this.getToken !== null && this.ids.has(id) && !this.renewed.has(id)) {
            this.renewed.add(id);
            this.registerOn(this.socket, id, this.asked, { renew: true });
            return;
          }
          this.onRefused(id, frame.code);
          return;
        case "sent": // the reply to a v2 send; this client sends v1 frames
          return;
      }
      this.onMessage(text, { id: null, position: null, replayed: false });
    }

    // The last position of `id`: in memory, else from sessionStorage (a reload), else null.
    positionOf(id) {
      if (!this.positions.has(id)) {
        let stored = null;
        try {
          stored = sessionStore()?.getItem(this.storageKey(id)) ?? null;
        } catch (error) {
          // unavailable: memory only
        }
        this.positions.set(id, stored);
      }
      return this.positions.get(id);
    }

    remember(id, position) {
      this.positions.set(id, position);
      try {
        const store = sessionStore();
        if (store === null) return;
        if (position === null) store.removeItem(this.storageKey(id));
        else store.setItem(this.storageKey(id), position);
      } catch (error) {
        // full or unavailable: memory only
      }
    }

    storageKey(id) {
      return STORAGE_PREFIX + JSON.stringify([this.url, id]);
    }

    setState(state, detail = {}) {
      this.state = state;
      this.onState(state, detail);
    }

    // Registers `id` on `socket`: with the token given with it the first time, else with getToken's (renew:
    // getToken's even then), or without one. getToken may answer later: by then `socket` may be gone.
    registerOn(socket, id, asked, { renew = false, failures = 0 } = {}) {
      const given = this.tokens.get(id);
      if (this.getToken === null || (given !== undefined && !renew)) {
        if (this.getToken !== null) this.tokens.delete(id); // once: later registrations take fresh ones
        this.sendRegistration(socket, id, asked, given ?? null);
        return;
      }
      this.tokens.delete(id);
      const current = () => this.socket === socket && !this.closed && socket.readyState === WebSocket.OPEN;
      const failed = () => {
        if (!current() || !this.ids.has(id)) return;
        if (failures === 0) this.onRefused(id, TOKEN_UNAVAILABLE);
        const delay = Math.min(this.maxDelay, this.minDelay * 2 ** failures);
        setTimeout(() => {
          if (current() && this.ids.has(id)) this.registerOn(socket, id, asked, { renew, failures: failures + 1 });
        }, delay / 2 + (Math.random() * delay) / 2);
      };
      let token;
      try {
        token = this.getToken(id);
      } catch (error) {
        failed();
        return;
      }
      Promise.resolve(token).then((value) => {
        if (value !== null && value !== undefined && typeof value !== "string") failed();
        else if (current()) this.sendRegistration(socket, id, asked, value ?? null);
      }, failed);
    }

    sendRegistration(socket, id, asked, token) {
      const frame = { recipient_uuid: id, message: REGISTER, v: 2 };
      const since = this.positionOf(id);
      if (since !== null) frame.since = since;
      if (token !== null) frame.token = token;
      asked.add(id);
      socket.send(JSON.stringify(frame));
    }

    register(id, token) {
      if (typeof token === "string") this.tokens.set(id, token);
      if (this.ids.has(id)) return;
      this.ids.add(id);
      if (this.state === "connected") this.registerOn(this.socket, id, this.asked);
    }

    send(recipient, message) {
      if (message === REGISTER) throw new Error(`the text "${REGISTER}" is read by the server as a registration`);
      if (this.state !== "connected" || this.socket.readyState !== WebSocket.OPEN) return false;
      this.socket.send(JSON.stringify({ recipient_uuid: recipient, message: message }));
      return true;
    }

    close() {
      if (this.closed) return;
      this.closed = true;
      clearTimeout(this.timer);
      this.timer = null;
      global.removeEventListener?.("online", this.onOnline);
      if (this.socket) this.socket.close();
      this.setState("closed");
    }
  }

  // A frame's JSON object, or null (not JSON, not an object).
  function parse(data) {
    if (typeof data !== "string" || data[0] !== "{") return null;
    try {
      const value = JSON.parse(data);
      return value !== null && typeof value === "object" && !Array.isArray(value) ? value : null;
    } catch (error) {
      return null;
    }
  }

  // Whether a frame is a v2 server's answer to a registration this socket made (a v1 server never sends one).
  function isReply(frame, asked) {
    return (
      frame !== null && (frame.type === "registered" || frame.type === "refused") && asked.has(frame.recipient_uuid)
    );
  }

  // Whether a frame is a v2 broadcast (to every registered connection, of no id).
  function isBroadcast(frame) {
    return (
      frame !== null &&
      frame.type === "message" &&
      frame.recipient_uuid === null &&
      frame.position === null &&
      typeof frame.message === "string"
    );
  }

  global.NotifyClient = NotifyClient;
})(globalThis);
