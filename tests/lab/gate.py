"""A fault-injecting TCP gate: put it between a client and a server and
decide, while the test runs, what the connections through it suffer.

    gate = Gate(0, node.port("lmtp"))      # listen on a free port
    config["...port"] = gate.port          # the client connects to the gate
    gate.refuse()                          # new connections: refused (RST)
    gate.black_hole()                      # new connections: accepted, silent
    gate.cut_after(500, after=b"DATA\\r\\n")  # drop a connection mid-DATA
    gate.pass_through()                    # back to normal
    gate.close()

Switches (each applies from the moment it is called):

  pass_through()  forward both ways (the default); re-opens the listening
                  socket after refuse(); disarms cut_after(); thaws frozen
                  connections. Connections already black-holed stay so.
  refuse()        stop listening: a new connection is refused (the kernel
                  answers RST), and so is every connection still waiting in
                  the accept backlog. Established connections go on.
  black_hole()    accept new connections but forward nothing, either way,
                  and never close them (until the client does, or close()):
                  a server that accepted and froze. The target is not even
                  connected to.
  freeze()        established (and new) connections stop forwarding either
                  way; bytes wait (in the kernel's buffers) until thaw()
                  or pass_through(): a peer that stalls mid-conversation.
  cut_after(n, after=None, direction="up")
                  every connection, open or new, forwards N more bytes in
                  DIRECTION ("up": client -> server, "down": server ->
                  client), then is closed both ways (the gate's sockets to
                  client and server are both shut down and closed). With
                  AFTER, the count starts only once that byte string has
                  gone through in DIRECTION (say b"DATA\\r\\n": N bytes into
                  the message). reset=True closes with an RST instead of a
                  FIN.
  stall_after(n, after=None, direction="up")
                  the same count, but then the connection hangs instead of
                  closing: nothing more is forwarded either way (and
                  nothing read), the sockets stay open -- a peer that froze
                  mid-transfer. A stalled connection stays so until
                  cut_all() or close() (pass_through() only disarms
                  connections not yet stalled).
  cut_all()       close every established connection now, both ways.

What went through is recorded: ``connections`` (one Connection per accepted
client: ``up``/``down`` byte counts, the bytes themselves up to
``record_limit`` per direction, ``cut``, ``stalled``, ``black_holed``,
``closed``),
``accepted`` and the totals ``bytes_up``/``bytes_down``. wait_for_connections()
and Connection.wait_closed() help tests synchronise.

Thread-based, stdlib only. Every gate is registered with procs for cleanup
(close() at interpreter exit); close() is idempotent.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from typing import Optional

from . import procs

_CHUNK = 65536


class Connection:
    """One client connection through the gate (all fields read-only for
    tests)."""

    def __init__(self, index: int, peer: tuple, record_limit: int):
        self.index = index
        self.peer = peer                    # the client's (host, port)
        self.opened = time.monotonic()
        self.up = 0                         # bytes client -> server forwarded
        self.down = 0                       # bytes server -> client forwarded
        self.up_data = bytearray()          # up to record_limit of them
        self.down_data = bytearray()
        self.black_holed = False
        self.cut = False                    # closed by cut_after()/cut_all()
        self.stalled = False                # hung by stall_after()
        self.upstream_failed: Optional[str] = None  # could not reach the target
        self._record_limit = record_limit
        self._closed = threading.Event()
        self.client: Optional[socket.socket] = None
        self.server: Optional[socket.socket] = None
        self._lock = threading.Lock()
        # cut_after() state for this connection: remaining bytes (None: not
        # armed), the direction, the trigger not yet seen, the tail of what
        # went through (to find a trigger split across reads).
        self._cut_left: Optional[int] = None
        self._cut_direction = "up"
        self._cut_after: bytes = b""
        self._cut_reset = False
        self._cut_action = "cut"
        self._tail = b""

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def wait_closed(self, timeout: float = 10.0) -> bool:
        return self._closed.wait(timeout)

    def __repr__(self):
        state = "closed" if self.closed else "open"
        extra = " black-holed" if self.black_holed else ""
        extra += " cut" if self.cut else ""
        extra += " stalled" if self.stalled else ""
        return f"<Connection #{self.index} {state}{extra} up={self.up} down={self.down}>"

    def _record(self, direction: str, data: bytes) -> None:
        if direction == "up":
            self.up += len(data)
            if len(self.up_data) < self._record_limit:
                self.up_data += data[:self._record_limit - len(self.up_data)]
        else:
            self.down += len(data)
            if len(self.down_data) < self._record_limit:
                self.down_data += data[:self._record_limit - len(self.down_data)]

    def _arm_cut(self, n: int, after: Optional[bytes], direction: str, reset: bool,
                 action: str) -> None:
        with self._lock:
            if self.stalled:
                return
            self._cut_left = n
            self._cut_direction = direction
            self._cut_after = after or b""
            self._cut_reset = reset
            self._cut_action = action
            self._tail = b""

    def _disarm_cut(self) -> None:
        with self._lock:
            self._cut_left = None

    def _allowance(self, direction: str, data: bytes) -> Optional[int]:
        """How many bytes of DATA may go through before the cut (None: all
        of them, no cut in this chunk)."""
        with self._lock:
            if self._cut_left is None or direction != self._cut_direction:
                return None
            start = 0
            if self._cut_after:
                seen = self._tail + data
                at = seen.find(self._cut_after)
                if at < 0:
                    self._tail = seen[-(len(self._cut_after) - 1):] if len(self._cut_after) > 1 \
                        else b""
                    return None
                # The trigger ends at this offset of DATA.
                start = max(0, at + len(self._cut_after) - len(self._tail))
                self._cut_after = b""
                self._tail = b""
            if len(data) - start <= self._cut_left:
                self._cut_left -= len(data) - start
                return None
            return start + self._cut_left

    def _shutdown(self, reset: bool = False) -> None:
        """Close both sockets: with a FIN each way, or (RESET) an RST. The
        shutdown() first also wakes our own threads blocked in recv() on
        them (a bare close() would not)."""
        for s in (self.client, self.server):
            if s is None:
                continue
            try:
                if reset:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    s.shutdown(socket.SHUT_RD)
                else:
                    s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass
        self._closed.set()


class Gate:
    """A TCP forwarder LISTEN_HOST:LISTEN_PORT -> TARGET_HOST:TARGET_PORT
    with switches for faults (see the module docstring). LISTEN_PORT 0
    picks a free port (procs.free_port); ``port`` is the one in use."""

    def __init__(self, listen_port: int, target_port: int, *,
                 target_host: str = "127.0.0.1", listen_host: str = "127.0.0.1",
                 connect_timeout: float = 5.0, record_limit: int = 16 << 20,
                 name: str = "gate", latency: float = 0.0):
        self.listen_host = listen_host
        self.port = listen_port or procs.free_port(listen_host)
        self.target = (target_host, int(target_port))
        self.connect_timeout = connect_timeout
        self.record_limit = record_limit
        self.name = name
        # Seconds every chunk is held in each direction (a network that far
        # away); pipelined traffic is not serialised by it.
        self.latency = latency
        self.connections: list[Connection] = []
        self._lock = threading.Lock()
        self._mode = "pass"            # pass | black_hole (for new connections)
        self._frozen = threading.Event()
        self._thawed = threading.Condition(self._lock)
        # (n, after, direction, reset, action) armed on new connections
        self._cut: Optional[tuple] = None
        self._closing = False
        self._listener: Optional[socket.socket] = None
        self._accept_thread: Optional[threading.Thread] = None
        self._listen()
        procs.register_cleanup(self.close)

    def __repr__(self):
        return (f"<Gate {self.name} {self.listen_host}:{self.port} -> "
                f"{self.target[0]}:{self.target[1]} mode={self.mode}>")

    # -- the switches

    @property
    def mode(self) -> str:
        """"pass", "refuse", "black_hole" or "frozen"."""
        with self._lock:
            if self._listener is None:
                return "refuse"
            if self._frozen.is_set():
                return "frozen"
            return self._mode

    def pass_through(self) -> None:
        with self._lock:
            self._mode = "pass"
            self._cut = None
            self._frozen.clear()
            self._thawed.notify_all()
            conns = list(self.connections)
        for c in conns:
            c._disarm_cut()
        self._listen()

    def refuse(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            thread = self._accept_thread
        if listener is not None:
            _close_listener(listener)
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)

    def black_hole(self) -> None:
        with self._lock:
            self._mode = "black_hole"
        self._listen()

    def freeze(self) -> None:
        self._frozen.set()

    def thaw(self) -> None:
        with self._lock:
            self._frozen.clear()
            self._thawed.notify_all()

    def cut_after(self, n: int, *, after: Optional[bytes] = None, direction: str = "up",
                  reset: bool = False) -> None:
        self._arm(n, after, direction, reset, "cut")

    def stall_after(self, n: int, *, after: Optional[bytes] = None,
                    direction: str = "up") -> None:
        self._arm(n, after, direction, False, "stall")

    def _arm(self, n: int, after: Optional[bytes], direction: str, reset: bool,
             action: str) -> None:
        if direction not in ("up", "down"):
            raise ValueError("direction must be 'up' or 'down'")
        if n < 0:
            raise ValueError("n must be >= 0")
        with self._lock:
            self._cut = (n, after, direction, reset, action)
            conns = [c for c in self.connections if not c.closed]
        for c in conns:
            c._arm_cut(n, after, direction, reset, action)

    def cut_all(self, *, reset: bool = False) -> int:
        """Close every open connection now; how many there were."""
        with self._lock:
            conns = [c for c in self.connections if not c.closed]
        for c in conns:
            c.cut = True
            c._shutdown(reset)
        return len(conns)

    # -- what went through

    @property
    def accepted(self) -> int:
        with self._lock:
            return len(self.connections)

    @property
    def bytes_up(self) -> int:
        with self._lock:
            return sum(c.up for c in self.connections)

    @property
    def bytes_down(self) -> int:
        with self._lock:
            return sum(c.down for c in self.connections)

    def open_connections(self) -> list[Connection]:
        with self._lock:
            return [c for c in self.connections if not c.closed]

    def wait_for_connections(self, count: int, timeout: float = 10.0) -> list[Connection]:
        """Wait until COUNT connections in all have been accepted."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if len(self.connections) >= count:
                    return list(self.connections)
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self!r}: {count} connections not accepted after "
                                   f"{timeout}s ({self.accepted} were)")
            time.sleep(0.01)

    # -- lifecycle

    def close(self) -> None:
        """Stop listening and close every connection. Idempotent."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            self._frozen.clear()
            self._thawed.notify_all()
        procs.unregister_cleanup(self.close)
        self.refuse()
        with self._lock:
            conns = list(self.connections)
        for c in conns:
            c._shutdown()

    def __enter__(self) -> "Gate":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals

    def _listen(self) -> None:
        with self._lock:
            if self._listener is not None or self._closing:
                return
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((self.listen_host, self.port))
                s.listen(128)
            except OSError:
                s.close()
                raise
            self._listener = s
            thread = threading.Thread(target=self._accept_loop, args=(s,),
                                      name=f"{self.name}-accept", daemon=True)
            self._accept_thread = thread
        thread.start()

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                client, peer = listener.accept()
            except OSError:
                return  # refuse() or close() shut the listener
            with self._lock:
                if self._closing or self._listener is not listener:
                    # Raced with refuse(): as if it had never been accepted.
                    _reset(client)
                    continue
                conn = Connection(len(self.connections), peer, self.record_limit)
                conn.client = client
                self.connections.append(conn)
                mode = self._mode
                cut = self._cut
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if cut is not None:
                conn._arm_cut(*cut)
            if mode == "black_hole":
                conn.black_holed = True
                threading.Thread(target=self._hold, args=(conn,), daemon=True,
                                 name=f"{self.name}-hole-{conn.index}").start()
            else:
                threading.Thread(target=self._connect, args=(conn,), daemon=True,
                                 name=f"{self.name}-conn-{conn.index}").start()

    def _hold(self, conn: Connection) -> None:
        """A black-holed connection: read and drop what the client sends
        (so it never blocks on a full window and learns nothing) until it
        closes or the gate does."""
        try:
            while True:
                data = conn.client.recv(_CHUNK)
                if not data:
                    break
        except OSError:
            pass
        conn._shutdown()

    def _connect(self, conn: Connection) -> None:
        try:
            server = socket.create_connection(self.target, timeout=self.connect_timeout)
        except OSError as e:
            conn.upstream_failed = str(e)
            conn._shutdown(reset=True)
            return
        server.settimeout(None)
        server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.server = server
        if conn.closed:  # cut_all() or close() meanwhile
            conn._shutdown()
            return
        up = threading.Thread(target=self._pump, args=(conn, "up"), daemon=True,
                              name=f"{self.name}-up-{conn.index}")
        up.start()
        self._pump(conn, "down")
        up.join()
        conn._shutdown()  # both ways ended

    def _wait_thawed(self, conn: Connection) -> None:
        """Returns once this connection may forward: not frozen, not
        stalled (or closed)."""
        with self._lock:
            while ((self._frozen.is_set() or conn.stalled) and not self._closing
                   and not conn.closed):
                self._thawed.wait(0.1)

    def _pump(self, conn: Connection, direction: str) -> None:
        """Forward one direction until EOF (passed on as a half-close),
        an error or a cut (both closed)."""
        src, dst = (conn.client, conn.server) if direction == "up" else (conn.server, conn.client)
        if self.latency > 0:
            dst = _DelayLine(dst, self.latency)
        try:
            while True:
                self._wait_thawed(conn)
                data = src.recv(_CHUNK)
                if not data:
                    try:
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    return
                self._wait_thawed(conn)
                if conn.closed:
                    return
                allowed = conn._allowance(direction, data)
                if allowed is not None:
                    if allowed:
                        dst.sendall(data[:allowed])
                        conn._record(direction, data[:allowed])
                    if conn._cut_action == "stall":
                        conn.stalled = True  # both pumps wait until it is closed
                        self._wait_thawed(conn)
                        return
                    conn.cut = True
                    conn._shutdown(conn._cut_reset)
                    return
                dst.sendall(data)
                conn._record(direction, data)
        except OSError:
            conn._shutdown()


class _DelayLine:
    """Stands in for a socket's sendall/shutdown: each chunk goes out
    LATENCY seconds after it was handed over, in order, from a thread of its
    own (so the reader keeps reading: latency, not a rate limit)."""

    def __init__(self, sock: socket.socket, latency: float):
        import queue
        self.sock = sock
        self.latency = latency
        self.queue: "queue.Queue" = queue.Queue()
        threading.Thread(target=self._run, daemon=True).start()

    def sendall(self, data: bytes) -> None:
        self.queue.put((time.monotonic() + self.latency, data))

    def shutdown(self, how: int) -> None:
        self.queue.put((time.monotonic() + self.latency, how))

    def _run(self) -> None:
        while True:
            due, item = self.queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                if isinstance(item, int):
                    self.sock.shutdown(item)
                    return
                self.sock.sendall(item)
            except OSError:
                return


def _close_listener(s: socket.socket) -> None:
    """Stop listening: shutdown() wakes a thread blocked in accept() (on
    Linux), close() releases the port; connections still in the backlog get
    an RST."""
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass


def _reset(s: socket.socket) -> None:
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass


__all__ = ["Gate", "Connection"]
