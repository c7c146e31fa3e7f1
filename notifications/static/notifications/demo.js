// The demo page's client: protocol v1, exactly as the clients in the field speak it.
// Everything received is shown with textContent, never parsed as HTML.
(function () {
  "use strict";
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(`${scheme}//${window.location.host}/`);
  const status = document.getElementById("status");
  const log = document.getElementById("log");
  const recipient = document.getElementById("recipient");
  const buttons = document.querySelectorAll("form button");
  let greeted = false;

  // Nothing can be sent before the socket is open and greeted.
  buttons.forEach((button) => { button.disabled = true; });

  function idFromHash() {
    try {
      return decodeURIComponent(window.location.hash.slice(1));
    } catch (error) {
      return window.location.hash.slice(1);  // not percent-encoded UTF-8: take it as typed
    }
  }

  function register(id) {
    socket.send(JSON.stringify({ recipient_uuid: id, message: "connected" }));
    status.textContent = `registered as ${id}`;
    status.dataset.registered = id;
  }

  socket.addEventListener("message", (event) => {
    if (!greeted) {
      greeted = true;  // the first frame is the server's greeting
      status.textContent = "connected";
      buttons.forEach((button) => { button.disabled = false; });
      const fromHash = idFromHash();
      if (fromHash) {
        recipient.value = fromHash;
        register(fromHash);
      }
      return;
    }
    const item = document.createElement("li");
    item.textContent = event.data;
    log.appendChild(item);
  });
  socket.addEventListener("close", () => {
    status.textContent = "disconnected";
    buttons.forEach((button) => { button.disabled = true; });
  });

  document.getElementById("register-form").addEventListener("submit", (event) => {
    event.preventDefault();
    register(recipient.value);
  });
  document.getElementById("send-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const to = document.getElementById("to").value;
    const message = document.getElementById("message").value;
    socket.send(JSON.stringify({ recipient_uuid: to, message: message }));
  });
})();
