"""Constant-rate (open-loop) HTTP/1.1 load generator with latency measured from the schedule.

wrk is closed-loop: when the server slows down, wrk sends less, and the queueing a real
client population would have built up never shows in its percentiles (coordinated
omission). Here request ``i`` is due at ``t0 + i / rate`` whatever happened before, and its
latency runs from that due time to the last byte of the response. If every connection is
busy when a request falls due it waits, and the wait counts: it is queueing.

Two threads and a pool of keep-alive connections: a sender that sleeps with ``time.sleep``
(nanosleep: tens of microseconds late at most, where an asyncio timer would round up to a
whole millisecond and add that as false latency) and writes each request when it falls due
on an idle connection, and a receiver on epoll that times responses and gives a freed
connection the oldest request still waiting. A thread per connection would be simpler, but
dozens of threads convoy on the GIL and the generator then measures itself.

Python here: ~15 us of CPU per request, fine for the 500-2,000 req/s this is for (wrk
measures saturation). Run it on another core than the server (``taskset``).
"""

from __future__ import annotations

import argparse
import json
import random
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable

__all__ = ["percentile", "run"]


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q`` (0-100) percentile of already sorted values (nearest rank)."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(q / 100.0 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def _parse(buf: bytearray) -> tuple[int, int] | None:
    """(status, bytes) of the first complete HTTP/1.1 response in ``buf`` (Content-Length framed)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).lower()
    length = 0
    i = head.find(b"\r\ncontent-length:")
    if i >= 0:
        j = head.find(b"\r\n", i + 2)
        length = int(head[i + 17 : j if j >= 0 else len(head)])
    total = end + 4 + length
    if len(buf) < total:
        return None
    return int(head[9:12]), total


class _Conn:
    __slots__ = ("buf", "due", "sent", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.due = 0.0
        self.sent = 0.0


def run(
    host: str,
    port: int,
    rate: float,
    duration: float,
    make_request: Callable[[random.Random], bytes],
    *,
    connections: int = 64,
    timeout: float = 5.0,
    seed: int = 1,
) -> dict[str, float]:
    """Offer ``rate`` requests/s for ``duration`` seconds; figures in microseconds (and req/s).

    ``make_request(rnd)`` returns one complete HTTP/1.1 request (keep-alive); all are built
    before the clock starts. Two threads: the sender sleeps until each due time and writes the
    request on an idle connection (or queues it when none is idle); the receiver waits on
    epoll, times each response and hands its connection the oldest queued request.
    """
    total = int(rate * duration)
    rnd = random.Random(seed)
    payloads = [make_request(rnd) for _ in range(total)]
    conns = []
    for _ in range(connections):
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conns.append(_Conn(sock))
    poller = select.epoll()
    by_fd = {c.sock.fileno(): c for c in conns}
    for fd in by_fd:
        poller.register(fd, select.EPOLLIN)
    idle: deque[_Conn] = deque(conns)
    pending: deque[tuple[float, int]] = deque()
    lock = threading.Lock()
    late = [0]
    t0 = time.perf_counter() + 0.1

    def start(conn: _Conn, due: float, i: int) -> None:  # with the lock held
        conn.due = due
        conn.sent = now = time.perf_counter()
        if now - due > 0.001:
            late[0] += 1
        conn.sock.sendall(payloads[i])

    def sender() -> None:
        for i in range(total):
            due = t0 + i / rate
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            with lock:
                if idle:
                    start(idle.popleft(), due, i)
                else:
                    pending.append((due, i))

    latencies: list[float] = []
    service: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    thread = threading.Thread(target=sender, name="open-loop-sender", daemon=True)
    thread.start()
    deadline = t0 + duration + timeout
    try:
        while len(latencies) < total and time.perf_counter() < deadline:
            for fd, _ in poller.poll(0.05):
                conn = by_fd[fd]
                try:
                    data = conn.sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    errors += 1
                    poller.unregister(fd)
                    continue
                conn.buf += data
                while (parsed := _parse(conn.buf)) is not None:
                    code, used = parsed
                    del conn.buf[:used]
                    done = time.perf_counter()
                    latencies.append(done - conn.due)
                    service.append(done - conn.sent)
                    statuses[code] = statuses.get(code, 0) + 1
                    with lock:
                        if pending:
                            due, i = pending.popleft()
                            start(conn, due, i)
                        else:
                            idle.append(conn)
    finally:
        thread.join(timeout)
        poller.close()
        for c in conns:
            c.sock.close()
    elapsed = time.perf_counter() - t0
    latencies.sort()
    service.sort()
    us = 1e6
    ok = statuses.get(200, 0)
    return {
        "offered_rps": rate,
        "duration_s": duration,
        "scheduled": total,
        "completed": len(latencies),
        "achieved_rps": len(latencies) / max(elapsed, 1e-9),
        "ok": ok,
        "non_200": sum(statuses.values()) - ok,
        "errors": errors + total - len(latencies),
        "sent_over_1ms_late": late[0],
        "p50_us": percentile(latencies, 50) * us,
        "p90_us": percentile(latencies, 90) * us,
        "p99_us": percentile(latencies, 99) * us,
        "p999_us": percentile(latencies, 99.9) * us,
        "max_us": (latencies[-1] if latencies else float("nan")) * us,
        "service_p50_us": percentile(service, 50) * us,
        "service_p99_us": percentile(service, 99) * us,
    }


def classify_request(
    host: str, customers: int, path: str = "/v1/classify", api_key: str = "router-dev-key"
) -> Callable[[random.Random], bytes]:
    """Request factory: POST ``path`` with a classify body for a random customer."""
    channels = ("ticket", "email", "phone", "chat", "web")
    categories = ("technical", "billing", "account", "cancellation", "sales", "general")
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {api_key}\r\n"
        "Content-Type: application/json\r\nContent-Length: {n}\r\n\r\n"
    )

    def make(rnd: random.Random) -> bytes:
        body = (
            f'{{"customer":{{"customer_id":"C{rnd.randrange(customers):07d}"}},'
            f'"channel":"{rnd.choice(channels)}","category":"{rnd.choice(categories)}"}}'
        ).encode()
        return head.replace("{n}", str(len(body))).encode() + body

    return make


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url-host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--path", default="/v1/classify")
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    if args.url_host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("load generators here only target the local machine")
    result = run(
        args.url_host,
        args.port,
        args.rate,
        args.duration,
        classify_request(args.url_host, args.customers, args.path),
        connections=args.connections,
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
