"""Loopback networking for tests: a free port, and a proxy in front of the fake server."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading


def free_port() -> int:
    """A loopback port nobody listens on (bound then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class Proxy:
    """A loopback proxy in threads in front of a plain-HTTP backend port.

    ``tls``: it terminates TLS with that server context (``handshakes`` and
    ``failed_handshakes`` count the attempts). ``prefix``: it serves the backend
    under that path, as a reverse proxy would: requests are parsed, the prefix is
    stripped (``forwarded`` lists their targets) and any other target gets a 404
    (``refused``). Without either, bytes pass through unchanged.
    """

    def __init__(
        self, backend_port: int, *, tls: ssl.SSLContext | None = None, prefix: str = ""
    ) -> None:
        self.backend_port = backend_port
        self.tls = tls
        self.prefix = prefix.rstrip("/").encode()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        if self.prefix:
            self.url += f"{prefix.rstrip('/')}/"
        self.handshakes = 0
        self.failed_handshakes = 0
        self.forwarded: list[bytes] = []
        self.refused: list[bytes] = []
        self._stopping = False
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping = True
        # close() alone does not wake a thread blocked in accept() on Linux
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self._thread.join(5)

    def _accept(self) -> None:
        while not self._stopping:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        if self.tls is not None:
            self.handshakes += 1
            client.settimeout(10)
            try:
                client = self.tls.wrap_socket(client, server_side=True)
            except (ssl.SSLError, OSError):
                self.failed_handshakes += 1
                client.close()
                return
            client.settimeout(None)
        backend = socket.create_connection(("127.0.0.1", self.backend_port))
        back = threading.Thread(target=self._pump, args=(backend, client), daemon=True)
        back.start()
        try:
            if self.prefix:
                self._forward_requests(client, backend)
            else:
                self._pump(client, backend)
        finally:
            with contextlib.suppress(OSError):
                backend.shutdown(socket.SHUT_RDWR)
            back.join(10)
            client.close()
            backend.close()

    def _forward_requests(self, client: socket.socket, backend: socket.socket) -> None:
        """HTTP/1.1 requests (head, Content-Length body) from ``client``, prefix stripped."""
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = client.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                lines = head.split(b"\r\n")
                method, target, version = lines[0].split(b" ")
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buffer) < length:
                    buffer += client.recv(65536)
                body, buffer = buffer[:length], buffer[length:]
                if not target.startswith(self.prefix + b"/"):
                    self.refused.append(target)
                    client.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    continue
                self.forwarded.append(target)
                lines[0] = b" ".join([method, target[len(self.prefix) :], version])
                backend.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        except OSError:
            return

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
