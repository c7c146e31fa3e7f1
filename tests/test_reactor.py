"""The app's Twisted reactor: what a connection is given to write goes out without watching its socket first.

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

# A server protocol writes "hel" and "lo" as the client connects; once the client has read them, 8 MB
# (more than a socket takes at once) and "tail", then it closes. The loop's add_writer is counted: the
# socket is watched for writability only when Twisted's own doWrite has work (the rest, the close).
WRITES = """
import json, socket, threading
from notifications import reactor as app_reactor
reactor = app_reactor.install()
from twisted.internet import protocol

BIG = bytes(range(256)) * (8 * 4096)
result = {}
watched = []
loop = reactor._asyncioEventloop
add_writer = loop.add_writer

def counting_add_writer(fd, *args):
    watched.append(fd)
    return add_writer(fd, *args)

loop.add_writer = counting_add_writer

class Writer(protocol.Protocol):
    def connectionMade(self):
        global server
        server = self
        self.transport.write(b"hel")
        self.transport.write(b"lo")
        threading.Thread(target=read).start()

    def send_the_rest(self):
        global fd
        fd = self.transport.fileno()
        result["watched_for_hello"] = fd in watched
        self.transport.write(BIG)
        self.transport.write(b"tail")
        self.transport.loseConnection()

    def connectionLost(self, reason):
        result["watched_for_the_rest"] = fd in watched
        result["lost"] = reason.type.__name__

def read():
    first = b""
    while len(first) < 5 and (chunk := client.recv(5 - len(first))):
        first += chunk
    result["first"] = first.decode()
    reactor.callFromThread(server.send_the_rest)
    chunks = []
    while chunk := client.recv(1 << 20):
        chunks.append(chunk)
    rest = b"".join(chunks)
    result["rest_length"] = len(rest)
    result["rest_intact"] = rest == BIG + b"tail"
    reactor.callFromThread(reactor.stop)

port = reactor.listenTCP(0, protocol.Factory.forProtocol(Writer), interface="127.0.0.1")
client = socket.create_connection(("127.0.0.1", port.getHost().port))
client.settimeout(30)
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


# The server closes each connection as it connects, having written nothing (the first) or a little (the
# second): each client reads what was written, then the end of the stream.
CLOSES = """
import json, socket
from notifications import reactor as app_reactor
reactor = app_reactor.install()
from twisted.internet import protocol

result = {"read": [], "lost": []}

class Closer(protocol.Protocol):
    def connectionMade(self):
        if self.factory.say:
            self.transport.write(self.factory.say)
        self.transport.loseConnection()

    def connectionLost(self, reason):
        result["lost"].append(reason.type.__name__)
        if len(result["lost"]) == 2:
            reactor.stop()

def read_all(client):
    data = b""
    while chunk := client.recv(1024):
        data += chunk
    return data.decode()

def connect(say):
    factory = protocol.Factory.forProtocol(Closer)
    factory.say = say
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    client.settimeout(30)
    return client

clients = [connect(b""), connect(b"bye")]
reactor.callLater(30, reactor.stop)
reactor.run()
result["read"] = [read_all(client) for client in clients]
print(json.dumps(result, sort_keys=True))
"""


# The client sends "ping"; the server answers with what it read, and notes the legacy logging context
# ("system") its dataReceived ran in.
READS = """
import json, socket
from notifications import reactor as app_reactor
reactor = app_reactor.install()
from twisted.internet import protocol
from twisted.python import context, log

result = {}

class Echo(protocol.Protocol):
    def dataReceived(self, data):
        result["system"] = context.get(log.ILogContext)["system"]
        self.transport.write(data.upper())

port = reactor.listenTCP(0, protocol.Factory.forProtocol(Echo), interface="127.0.0.1")
client = socket.create_connection(("127.0.0.1", port.getHost().port))
client.settimeout(30)
client.sendall(b"ping")

def answer():
    result["answer"] = client.recv(4).decode()
    reactor.callFromThread(reactor.stop)

reactor.callInThread(answer)
reactor.callLater(30, reactor.stop)
reactor.run()
print(json.dumps(result, sort_keys=True))
"""


def test_daphne_keeps_the_reactor_the_launcher_installed_before_it(run_python: Python) -> None:
    done = run_python("-c", DAPHNE_KEEPS_IT, env={})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True", "Reactor"]


def test_small_writes_go_out_without_watching_the_socket_and_a_large_one_still_arrives_whole(
    run_python: Python,
) -> None:
    done = run_python("-c", WRITES, env={}, timeout=90)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "first": "hello",
        # Twisted's own reactor watches the socket for every write, and sends on the loop's next turn.
        "watched_for_hello": False,
        # 8 MB (more than a socket takes at once) and a close asked for: Twisted's own doWrite sends the rest.
        "watched_for_the_rest": True,
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


def test_a_connection_closed_with_nothing_or_a_little_left_to_send_closes_after_sending_it(run_python: Python) -> None:
    done = run_python("-c", CLOSES, env={}, timeout=90)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"read": ["", "bye"], "lost": ["ConnectionDone", "ConnectionDone"]}


def test_a_connection_reads_without_twisteds_legacy_logging_context(run_python: Python) -> None:
    done = run_python("-c", READS, env={}, timeout=90)
    assert done.returncode == 0, done.stderr
    # Under Twisted's own reactor the read runs in the connection's context: "Echo,0,127.0.0.1".
    assert json.loads(done.stdout) == {"answer": "PING", "system": "-"}
