"""Constant-rate (open-loop) HTTP/1.1 load generator with latency measured from the schedule.

wrk is closed-loop: when the server slows down, wrk sends less, and the queueing a real
client population would have built up never shows in its percentiles (coordinated
omission). Here request ``i`` is due at ``t0 + i / rate`` whatever happened before, and its
latency runs from that due time to the last byte of the response. If every connection is
busy when a request falls due it waits, and the wait counts: it is queueing.

Each keep-alive connection is a thread doing blocking ``send``/``recv`` (the GIL is released
in both) and sleeping with ``time.sleep`` (nanosleep, tens of microseconds late at most)
rather than an asyncio timer (epoll rounds timeouts up to whole milliseconds, which would
add up to a millisecond of false latency). The threads take due times from one shared
counter, so whichever connection is free sends the next request.

Python here: ~20 us of CPU per request, fine for the 500-2,000 req/s this is for (wrk
measures saturation). Run it on another core than the server (``taskset``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import socket
import threading
import time
from collections.abc import Callable

__all__ = ["percentile", "run"]


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q`` (0-100) percentile of already sorted values (nearest rank)."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(q / 100.0 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def _read_response(sock: socket.socket, buf: bytearray) -> int:
    """Read one HTTP/1.1 response (Content-Length framed) from ``sock``; its status code."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            break
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    head = bytes(buf[:end]).lower()
    status = int(head[9:12])
    length = 0
    i = head.find(b"\r\ncontent-length:")
    if i >= 0:
        j = head.find(b"\r\n", i + 2)
        length = int(head[i + 17 : j if j >= 0 else len(head)])
    total = end + 4 + length
    while len(buf) < total:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    del buf[:total]
    return status


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

    ``make_request(rnd)`` returns one complete HTTP/1.1 request (keep-alive).
    """
    total = int(rate * duration)
    counter = itertools.count()
    t0 = time.perf_counter() + 0.2
    stop_at = t0 + duration + timeout
    lock = threading.Lock()
    latencies: list[float] = []
    service: list[float] = []
    statuses: dict[int, int] = {}
    errors: list[str] = []
    late_sends = [0]

    def worker(n: int) -> None:
        rnd = random.Random(seed * 1000 + n)
        mine: list[float] = []
        served: list[float] = []
        codes: dict[int, int] = {}
        buf = bytearray()
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        late = 0
        try:
            while True:
                i = next(counter)
                if i >= total:
                    break
                due = t0 + i / rate
                payload = make_request(rnd)
                wait = due - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                sent = time.perf_counter()
                if sent - due > 0.001:
                    late += 1
                if sent > stop_at:
                    break
                sock.sendall(payload)
                code = _read_response(sock, buf)
                done = time.perf_counter()
                mine.append(done - due)
                served.append(done - sent)
                codes[code] = codes.get(code, 0) + 1
        except (OSError, ValueError) as exc:
            with lock:
                errors.append(type(exc).__name__)
        finally:
            sock.close()
            with lock:
                latencies.extend(mine)
                service.extend(served)
                late_sends[0] += late
                for code, count in codes.items():
                    statuses[code] = statuses.get(code, 0) + count

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + 2 * timeout + 5)
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
        "errors": len(errors),
        "sent_over_1ms_late": late_sends[0],
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
