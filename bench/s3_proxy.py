"""A counting, delaying HTTP proxy in front of an S3 endpoint, for benchmarks: point S3_ENDPOINT_URL at it
(path-style addressing, as S3Storage uses) and it counts every request by kind and by the first folder of its
key, and can add a fixed delay to each, as a store farther away would. Nothing in the product knows it is there.

Requests and answers go through byte for byte (headers as sent, Host included, so SigV4 signatures stay
valid), bodies streamed both ways, never held; only Expect is answered here rather than passed on. Parsing no
more than the framing keeps the proxy's own cost small (it shares the cores with what it measures). It runs
on threads of the process that starts it, one per client connection:

    with S3Proxy("http://127.0.0.1:8333", delay_s=0.02) as proxy:
        ... S3_ENDPOINT_URL=proxy.url ...
        proxy.counts()   # {"GET photos": 1000, "PUT jobs": 12, "LIST": 3, ...}
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import Counter
from urllib.parse import unquote, urlsplit

PIECE = 256 * 1024


def request_kind(method: str, target: str, ranged: bool) -> str:
    """What an S3 request is, for counting: GET (a whole object), GET range, LIST, HEAD, PUT, PUT part,
    POST (multipart start and completion, batch delete), DELETE; then the first folder of its key
    ("GET range photos"), none for a request on the bucket itself."""
    split = urlsplit(target)
    parts = unquote(split.path).lstrip("/").split("/", 2)  # bucket, first folder, rest
    on_bucket = len(parts) < 2 or not parts[1]
    if method == "GET" and on_bucket:
        return "LIST"
    kind = method
    if method == "GET" and ranged:
        kind = "GET range"
    elif method == "PUT" and "partNumber=" in split.query:
        kind = "PUT part"
    return kind if on_bucket else f"{kind} {parts[1]}"


class _Stream:
    """A socket read through a buffer: heads up to their blank line, bodies forwarded as they arrive."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    def _fill(self) -> bool:
        data = self.sock.recv(PIECE)
        self.buffer += data
        return bool(data)

    def head(self) -> bytes | None:
        """Everything up to and including the blank line after the headers; None if the peer closed first."""
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            if not self._fill():
                return None
        head = bytes(self.buffer[:end + 4])
        del self.buffer[:end + 4]
        return head

    def line(self) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            if not self._fill():
                raise ConnectionError("closed in the middle of a chunked body")
        line = bytes(self.buffer[:end + 2])
        del self.buffer[:end + 2]
        return line

    def copy(self, length: int, out: socket.socket) -> None:
        """Send the next `length` bytes on to out."""
        while length > 0:
            if not self.buffer and not self._fill():
                raise ConnectionError("closed in the middle of a body")
            piece = bytes(self.buffer[:length])
            del self.buffer[:len(piece)]
            out.sendall(piece)
            length -= len(piece)

    def copy_chunked(self, out: socket.socket) -> None:
        """Send a chunked body on, framing included, through its last chunk and trailers."""
        while True:
            size_line = self.line()
            out.sendall(size_line)
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (trailer := self.line()) != b"\r\n":
                    out.sendall(trailer)
                out.sendall(trailer)
                return
            self.copy(size + 2, out)  # the data and its CRLF

    def copy_to_close(self, out: socket.socket) -> None:
        if self.buffer:
            out.sendall(bytes(self.buffer))
            self.buffer.clear()
        while data := self.sock.recv(PIECE):
            out.sendall(data)


def _headers(head: bytes) -> tuple[list[bytes], dict[bytes, bytes]]:
    """The head's lines and its headers by lower-case name."""
    lines = head[:-4].split(b"\r\n")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip()
    return lines, fields


class S3Proxy:
    """The proxy on 127.0.0.1 (a free port), forwarding to `upstream`; counts and delay_s can be read and
    changed while it runs."""

    def __init__(self, upstream: str, delay_s: float = 0.0) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port or 80)
        self.delay_s = delay_s
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._closing = False
        self._thread = threading.Thread(target=self._accept, name="s3-proxy", daemon=True)

    def counts(self) -> dict[str, int]:
        """Requests so far by kind and folder (see request_kind)."""
        with self._lock:
            return dict(self._counts)

    def __enter__(self) -> S3Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(10)

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), name="s3-proxy-connection", daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        # Heads and bodies go out in separate writes: with Nagle's algorithm on, each small second write
        # waits for the peer's delayed ACK, 40 ms a request.
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        upstream: socket.socket | None = None
        incoming = _Stream(client)
        try:
            while (head := incoming.head()) is not None:
                lines, fields = _headers(head)
                method, target = lines[0].split(b" ")[:2]
                method, target = method.decode(), target.decode()
                with self._lock:
                    self._counts[request_kind(method, target, b"range" in fields)] += 1
                if fields.get(b"expect", b"").lower() == b"100-continue":
                    # Answered here; the body then follows straight on to the server.
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                    head = b"\r\n".join(line for line in lines if not line.lower().startswith(b"expect:")) \
                        + b"\r\n\r\n"
                if self.delay_s:
                    time.sleep(self.delay_s)
                if upstream is None:
                    upstream = socket.create_connection(self.upstream)
                    upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    answers = _Stream(upstream)
                upstream.sendall(head)
                if b"chunked" in fields.get(b"transfer-encoding", b"").lower():
                    incoming.copy_chunked(upstream)
                else:
                    incoming.copy(int(fields.get(b"content-length", b"0")), upstream)
                keep = self._answer(method, answers, client)
                if not keep:
                    upstream.close()
                    upstream = None
                if fields.get(b"connection", b"").lower() == b"close":
                    break
        except (OSError, ValueError):
            pass  # a connection closed or broken on either side: the client sees it and retries
        finally:
            client.close()
            if upstream is not None:
                upstream.close()

    def _answer(self, method: str, answers: _Stream, client: socket.socket) -> bool:
        """Send the server's answer on to the client; whether the server's connection stays open."""
        while True:
            head = answers.head()
            if head is None:
                raise ConnectionError("the server closed without answering")
            lines, fields = _headers(head)
            status = int(lines[0].split(b" ")[1])
            client.sendall(head)
            if status >= 200:
                break  # an interim answer (1xx) is followed by the real one
        keep = fields.get(b"connection", b"").lower() != b"close"
        if method == "HEAD" or status in (204, 304):
            pass
        elif b"chunked" in fields.get(b"transfer-encoding", b"").lower():
            answers.copy_chunked(client)
        elif b"content-length" in fields:
            answers.copy(int(fields[b"content-length"]), client)
        else:  # a body that ends when the server closes
            answers.copy_to_close(client)
            keep = False
        return keep
