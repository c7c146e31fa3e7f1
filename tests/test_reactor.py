"""The app's Twisted reactor: what a connection is given to write goes out at once, and nothing else changes.

Each probe runs in a Python process of its own: a Twisted reactor is
installed once per process. The probes listen on loopback with plain Twisted
protocols and read with plain blocking sockets.
"""

from __future__ import annotations

import json

from harness.servers import Python

# Run with the project's own launch order: the app's reactor first, then daphne, which keeps it.
DAPHNE_KEEPS_IT = """
from notifications import reactor as app_reactor
installed = app_reactor.install()
import daphne.server
from twisted.internet import reactor
print(daphne.server.reactor is installed, reactor is installed, type(installed).__name__)
"""

# A server protocol writes "hello" as the client connects, then 8 MB (more than a socket takes at
# once) and "tail", then closes. The client reads "hello" while the reactor is still inside
# connectionMade: only a write sent at once can be read then.
WRITES = """
import json, socket, threading
from notifications import reactor as app_reactor
reactor = app_reactor.install()
from twisted.internet import protocol

BIG = bytes(range(256)) * (8 * 4096)
result = {}

class Writer(protocol.Protocol):
    def connectionMade(self):
        self.transport.write(b"hello")
        client.settimeout(2)
        try:
            result["read_before_the_reactor_turned"] = client.recv(5).decode()
        except socket.timeout:
            result["read_before_the_reactor_turned"] = None
        client.settimeout(30)
        threading.Thread(target=read_rest).start()
        self.transport.write(BIG)
        self.transport.write(b"tail")
        self.transport.loseConnection()

    def connectionLost(self, reason):
        result["lost"] = reason.type.__name__

def read_rest():
    chunks = []
    while chunk := client.recv(1 << 20):
        chunks.append(chunk)
    rest = b"".join(chunks)
    result["rest_length"] = len(rest)
    result["rest_intact"] = rest == BIG + b"tail"
    reactor.callFromThread(reactor.stop)

factory = protocol.Factory.forProtocol(Writer)
port = reactor.listenTCP(0, factory, interface="127.0.0.1")
client = socket.create_connection(("127.0.0.1", port.getHost().port))
reactor.callLater(30, reactor.stop)
reactor.run()
print(json.dumps(result, sort_keys=True))
"""

# The client resets the connection, then the server writes to it: the write raises nothing, and
# the connection ends as Twisted ends one whose peer is gone.
RESET = """
import json, socket, struct
from notifications import reactor as app_reactor
reactor = app_reactor.install()
from twisted.internet import protocol

result = {}

class Writer(protocol.Protocol):
    def connectionMade(self):
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # a reset, not a polite close
        try:
            self.transport.write(b"to nobody")
            self.transport.write(b"again")
        except Exception as exc:
            result["write_raised"] = type(exc).__name__

    def connectionLost(self, reason):
        result["lost"] = reason.type.__name__
        reactor.stop()

port = reactor.listenTCP(0, protocol.Factory.forProtocol(Writer), interface="127.0.0.1")
client = socket.create_connection(("127.0.0.1", port.getHost().port))
reactor.callLater(30, reactor.stop)
reactor.run()
print(json.dumps(result, sort_keys=True))
"""


def test_daphne_keeps_the_reactor_the_launcher_installed_before_it(run_python: Python) -> None:
    done = run_python("-c", DAPHNE_KEEPS_IT, env={})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True", "Reactor"]


def test_a_write_goes_out_at_once_and_a_large_one_still_arrives_whole_and_in_order(run_python: Python) -> None:
    done = run_python("-c", WRITES, env={}, timeout=90)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        # Twisted's own reactor would only send it on the loop's next turn: recv would time out.
        "read_before_the_reactor_turned": "hello",
        # 8 MB do not fit in a socket at once: the rest goes through Twisted's buffer, behind what was sent.
        "rest_length": 8 * 4096 * 256 + 4,
        "rest_intact": True,
        "lost": "ConnectionDone",
    }


def test_a_write_to_a_connection_its_peer_reset_raises_nothing_and_the_connection_ends(run_python: Python) -> None:
    done = run_python("-c", RESET, env={}, timeout=90)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert "write_raised" not in result
    assert result["lost"] in {"ConnectionLost", "ConnectionDone"}
