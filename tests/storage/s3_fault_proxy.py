"""A small HTTP proxy in front of an S3 endpoint (moto or Ceph RGW) that misbehaves on request.

Each client request is read whole (head and body), then either forwarded to the
upstream on a fresh connection and its answer relayed back, or met with a fault:

    "slowdown"       503 SlowDown, as S3 answers when throttling
    "internal"       500 InternalError
    "denied"         403 AccessDenied (a permanent error)
    "stall"          no answer for `stall` seconds, then the connection is closed
    "drop_upload"    half the request body reaches the upstream, then both connections close
    "drop_response"  the upstream performs the request, the client never hears the answer

    proxy.inject("slowdown", method="PUT", times=3)

Every connection carries one request (`Connection: close` both ways), which keeps
the framing trivial.  proxy.requests records (method, path, what was done).
"""

import socket
import threading
import time
from dataclasses import dataclass
from typing import List, Optional, Tuple

_ERRORS = {
    "slowdown": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    "internal": (500, "Internal Server Error", "InternalError", "We encountered an internal error."),
    "denied": (403, "Forbidden", "AccessDenied", "Access Denied"),
}


@dataclass
class Injection:
    action: str
    method: Optional[str] = None      # only requests with this method
    path_contains: str = ""           # ... and this in their path
    times: int = 1

    def matches(self, method: str, path: str) -> bool:
        return self.times > 0 and self.method in (None, method) and self.path_contains in path


def _read_until(sock: socket.socket, buf: bytearray, marker: bytes) -> Optional[int]:
    while marker not in buf:
        data = sock.recv(65536)
        if not data:
            return None
        buf += data
    return buf.index(marker) + len(marker)


def _read_exactly(sock: socket.socket, buf: bytearray, n: int) -> bool:
    while len(buf) < n:
        data = sock.recv(65536)
        if not data:
            return False
        buf += data
    return True


def _read_chunked(sock: socket.socket, buf: bytearray, start: int) -> Optional[int]:
    """The end of a chunked body that begins at buf[start:] (trailers included)."""
    pos = start
    while True:
        end = _read_until_at(sock, buf, pos)
        if end is None:
            return None
        size = int(bytes(buf[pos:end - 2]).split(b";")[0], 16)
        if size == 0:                           # trailers, then an empty line
            while True:
                line_end = _read_until_at(sock, buf, end)
                if line_end is None:
                    return None
                if line_end - end == 2:
                    return line_end
                end = line_end
        if not _read_exactly(sock, buf, end + size + 2):
            return None
        pos = end + size + 2


def _read_until_at(sock: socket.socket, buf: bytearray, pos: int) -> Optional[int]:
    while buf.find(b"\r\n", pos) < 0:
        data = sock.recv(65536)
        if not data:
            return None
        buf += data
    return buf.find(b"\r\n", pos) + 2


def _with_connection_close(head: bytes, drop=(b"connection", b"keep-alive")) -> bytes:
    lines = head.split(b"\r\n")
    kept = [ln for ln in lines[1:] if ln and ln.split(b":", 1)[0].strip().lower() not in drop]
    return b"\r\n".join([lines[0], *kept, b"Connection: close", b"", b""])


class FaultProxy:
    def __init__(self, upstream_url: str, stall: float = 3.0):
        hostport = upstream_url.split("://", 1)[1].rstrip("/")
        host, port = hostport.rsplit(":", 1)
        self.upstream: Tuple[str, int] = (host, int(port))
        self.stall = stall
        self.injections: List[Injection] = []
        self.requests: List[Tuple[str, str, str]] = []
        self._lock = threading.Lock()
        self._closing = False
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def inject(self, action: str, method: Optional[str] = None, path_contains: str = "", times: int = 1) -> None:
        if action not in (*_ERRORS, "stall", "drop_upload", "drop_response"):
            raise ValueError(action)
        with self._lock:
            self.injections.append(Injection(action, method, path_contains, times))

    def reset(self) -> None:
        """Forget injections and recorded requests."""
        with self._lock:
            self.injections.clear()
            self.requests.clear()

    def count(self, method: Optional[str] = None, action: Optional[str] = None) -> int:
        with self._lock:
            return sum(1 for m, _, a in self.requests if method in (None, m) and action in (None, a))

    def close(self) -> None:
        self._closing = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closing:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _decide(self, method: str, path: str) -> str:
        with self._lock:
            action = "forward"
            for inj in self.injections:
                if inj.matches(method, path):
                    inj.times -= 1
                    action = inj.action
                    break
            self.requests.append((method, path, action))
            return action

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            buf = bytearray()
            head_end = _read_until(conn, buf, b"\r\n\r\n")
            if head_end is None:
                return
            head = bytes(buf[:head_end])
            method, path = head.split(b" ", 2)[:2]
            headers = {}
            for line in head.split(b"\r\n")[1:]:
                if b":" in line:
                    k, v = line.split(b":", 1)
                    headers[k.strip().lower()] = v.strip()
            if headers.get(b"expect", b"").lower() == b"100-continue":
                conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                head = _with_connection_close(head, drop=(b"connection", b"keep-alive", b"expect"))
            else:
                head = _with_connection_close(head)
            if b"content-length" in headers:
                end = head_end + int(headers[b"content-length"])
                if not _read_exactly(conn, buf, end):
                    return
            elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
                end = _read_chunked(conn, buf, head_end)
                if end is None:
                    return
            else:
                end = head_end
            body = bytes(buf[head_end:end])
            action = self._decide(method.decode(), path.decode())
            if action in _ERRORS:
                conn.sendall(self._error(*_ERRORS[action]))
            elif action == "stall":
                time.sleep(self.stall)
            elif action == "drop_upload":
                with socket.create_connection(self.upstream) as up:
                    up.sendall(head + body[:len(body) // 2])
            else:
                answer = self._forward(head + body)
                if action == "forward":
                    conn.sendall(answer)

    def _forward(self, request: bytes) -> bytes:
        with socket.create_connection(self.upstream) as up:
            up.sendall(request)
            chunks = []
            while True:
                data = up.recv(65536)
                if not data:
                    break
                chunks.append(data)
        answer = b"".join(chunks)
        head_end = answer.find(b"\r\n\r\n") + 4
        return _with_connection_close(answer[:head_end]) + answer[head_end:]

    @staticmethod
    def _error(status: int, reason: str, code: str, message: str) -> bytes:
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                f"<Message>{message}</Message><RequestId>proxy</RequestId></Error>").encode()
        return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
