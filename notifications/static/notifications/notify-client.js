/*
 * notify-client.js: a dependency-free browser client for the Notification Center (protocol v1).
 * No build step: copy the file, or load it from a running server at /static/notifications/notify-client.js.
 *
 *   const client = new NotifyClient("ws://localhost:8765/", {
 *     ids: ["test-uuid"],                              // registered now and again after every reconnect
 *     onMessage: (text) => console.log(text),          // each notification: the exact text sent
 *     onState: (state, detail) => console.log(state),  // "connecting", "connected", "reconnecting", "closed";
 *                                                      // when reconnecting, detail.delay: ms until the next try
 *   });
 *   client.register("another-id");                     // up to 16 ids per connection
 *   client.send("someone-else", "hello");              // false when not connected (nothing is queued)
 *   client.close();                                    // for good: no reconnect
 *
 * When the connection closes (a server restart, a network change that the
 * browser notices) the client reconnects on its own after 0.5 s, 1 s, 2 s, ...
 * up to 30 s, each delay randomised between half and all of it so that
 * thousands of pages do not come back at the same instant, and registers its
 * ids again. When the browser comes back online it tries at once instead of
 * waiting out the delay. The server's
 * greeting is not a notification and is not passed to onMessage.
 * Notifications are untrusted text: show them with textContent, never innerHTML.
 */
(function (global) {
  "use strict";

  const GREETING = "..:: Hello from the Notification Center ::..";
  const REGISTER = "connected"; // the message text that protocol v1 reads as a registration

  class NotifyClient {
    constructor(url, { ids = [], onMessage = () => {}, onState = () => {}, minDelay = 500, maxDelay = 30000 } = {}) {
      const parsed = new URL(url); // throws a TypeError on an invalid address
      if (parsed.protocol !== "ws:" && parsed.protocol !== "wss:") {
        throw new TypeError(`not a WebSocket address (ws:// or wss://): ${url}`);
      }
      this.url = parsed.href;
      this.ids = new Set(ids);
      this.onMessage = onMessage;
      this.onState = onState;
      this.minDelay = minDelay;
      this.maxDelay = maxDelay;
      this.attempt = 0;
      this.closed = false;
      this.timer = null;
      // Back online (Wi-Fi again, out of sleep): no need to wait out the backoff.
      this.onOnline = () => {
        if (this.timer === null) return;
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
      let first = true;
      let openedAt = 0;
      this.socket = socket;
      socket.onopen = () => {
        openedAt = Date.now();
        this.ids.forEach((id) => this.registerOn(socket, id));
        this.setState("connected");
      };
      socket.onmessage = (event) => {
        const greeting = first && event.data === GREETING;
        first = false;
        if (!greeting) this.onMessage(event.data);
      };
      socket.onclose = () => {
        if (this.socket !== socket || this.closed) return;
        // A connection that lived a while starts the backoff afresh; one refused at once keeps backing off.
        if (openedAt && Date.now() - openedAt > 5000) this.attempt = 0;
        const ceiling = Math.min(this.maxDelay, this.minDelay * 2 ** this.attempt);
        const delay = ceiling / 2 + (Math.random() * ceiling) / 2;
        this.attempt += 1;
        this.setState("reconnecting", { attempt: this.attempt, delay });
        this.timer = setTimeout(() => {
          this.timer = null;
          this.open("reconnecting");
        }, delay);
      };
    }

    setState(state, detail = {}) {
      this.state = state;
      this.onState(state, detail);
    }

    registerOn(socket, id) {
      socket.send(JSON.stringify({ recipient_uuid: id, message: REGISTER }));
    }

    register(id) {
      if (this.ids.has(id)) return;
      this.ids.add(id);
      if (this.state === "connected") this.registerOn(this.socket, id);
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

  global.NotifyClient = NotifyClient;
})(globalThis);
