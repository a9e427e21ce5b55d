"""Local stand-ins for Zendesk's and Freshdesk's ticket APIs that hold requests to the documented shapes.

Each serves the few endpoints the connectors call, on 127.0.0.1 and a free port, in a thread:
it authenticates as the vendor documents, refuses (400) and records as a ``problem`` any request
whose method, path, content type or body is not what the vendor's reference describes, applies
valid updates to in-memory tickets, and can be told to answer the next requests with a status and
``Retry-After`` (rate limiting, maintenance). Requests are recorded with their arrival time.

Shapes follow:
* Zendesk: https://developer.zendesk.com/api-reference/ticketing/tickets/tickets/ (Show, Update
  Ticket: a ``ticket`` object; ``tags`` replaces the list; ``comment`` with ``body`` and
  ``public``; ``safe_update`` + ``updated_stamp`` -> 409 on a collision), .../ticket_comments/
  (List Comments, ``sort_order``), rate limits (429 + ``Retry-After``), API token auth
  (``{email}/token:{token}`` Basic) or OAuth (Bearer).
* Freshdesk: https://developers.freshdesk.com/api/ (View/Update a Ticket: priority 1-4,
  ``fr_due_by`` not after ``due_by``; List All Conversations; Add Note: ``body``, ``private``;
  API key as Basic user; 429 + ``Retry-After``).
"""

from __future__ import annotations

import base64
import http.server
import json
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from router.devstack.infra import free_port


@dataclass
class Seen:
    at: float
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    status: int = 0


@dataclass
class _Fault:
    status: int
    times: int
    retry_after: str | None
    only: str | None = None
    """Only requests whose method+path contains this."""


class FakeHelpdesk:
    """The common machinery: server thread, tickets, request log, problems, scripted faults."""

    vendor = "helpdesk"

    def __init__(self) -> None:
        self.port = free_port()
        self.tickets: dict[int, dict[str, Any]] = {}
        self.notes: dict[int, list[dict[str, Any]]] = {}
        self.seen: list[Seen] = []
        self.problems: list[str] = []
        self._faults: list[_Fault] = []
        self.delay_s = 0.0
        """Time each answer takes after the request took effect (a slow helpdesk: write-backs stay in flight)."""
        self.delay_only = ""
        """Only requests whose method+path contains this are slow."""
        self._lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeHelpdesk:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def fault(self, status: int, times: int = 1, retry_after: str | None = None, only: str | None = None) -> None:
        """Answer the next ``times`` requests (matching ``only``) with ``status`` and ``Retry-After``."""
        with self._lock:
            self._faults.append(_Fault(status, times, retry_after, only))

    def heal(self) -> None:
        """Drop the scripted faults not yet used up: the helpdesk answers normally again."""
        with self._lock:
            self._faults.clear()

    def requests(self, method: str | None = None, contains: str = "") -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if (method is None or s.method == method) and contains in s.path]

    # -- to implement per vendor ------------------------------------------------------------------

    def authorised(self, header: str | None) -> bool:
        raise NotImplementedError

    def route(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        raise NotImplementedError

    def problem(self, text: str) -> tuple[int, Any]:
        self.problems.append(text)
        return 400, {"error": "InvalidRequest", "description": text}

    # -- the HTTP side ----------------------------------------------------------------------------

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _serve(self) -> None:
                parsed = urllib.parse.urlsplit(self.path)
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                seen = Seen(time.time(), self.command, parsed.path, urllib.parse.parse_qs(parsed.query), None)
                headers: dict[str, str] = {}
                with fake._lock:
                    fake.seen.append(seen)
                    status, answer = 0, None
                    fault = next(
                        (
                            f
                            for f in fake._faults
                            if f.times > 0 and (f.only is None or f.only in f"{self.command} {parsed.path}")
                        ),
                        None,
                    )
                    if fault is not None:
                        fault.times -= 1
                        status, answer = fault.status, {"error": "scripted", "description": "try later"}
                        if fault.retry_after is not None:
                            headers["Retry-After"] = fault.retry_after
                    elif not fake.authorised(self.headers.get("Authorization")):
                        status, answer = 401, {"error": "Couldn't authenticate you"}
                    else:
                        body: Any = None
                        if raw:
                            if not (self.headers.get("Content-Type") or "").startswith("application/json"):
                                status, answer = fake.problem(f"{self.command} {parsed.path}: body not sent as JSON")
                            else:
                                try:
                                    body = json.loads(raw)
                                except ValueError:
                                    status, answer = fake.problem(f"{self.command} {parsed.path}: malformed JSON")
                        seen.body = body
                        if not status:
                            status, answer = fake.route(self.command, parsed.path, seen.query, body)
                    seen.status = status
                if fake.delay_s and fake.delay_only in f"{self.command} {parsed.path}":
                    # after the request took effect: a client that dies now never hears that it did
                    time.sleep(fake.delay_s)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def _basic(header: str | None) -> tuple[str, str] | None:
    if not header or not header.startswith("Basic "):
        return None
    user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    return user, password


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_TICKET = re.compile(r"^/api/v2/tickets/(\d+)(/comments|/conversations|/notes)?$")
_ZD_PRIORITIES = {"urgent", "high", "normal", "low"}
_ZD_UPDATE_KEYS = {"priority", "group_id", "tags", "custom_fields", "comment", "safe_update", "updated_stamp"}


class FakeZendesk(FakeHelpdesk):
    vendor = "zendesk"

    def __init__(self, email: str, token: str) -> None:
        super().__init__()
        self.credentials = (f"{email}/token", token)

    def add_ticket(self, number: int, tags: list[str] | None = None) -> None:
        stamp = f"2026-01-01T00:00:{len(self.tickets):02d}Z"
        self.tickets[number] = {"id": number, "tags": tags or [], "updated_at": stamp, "priority": None,
                                "group_id": None, "custom_fields": []}  # fmt: skip
        self.notes[number] = []

    def authorised(self, header: str | None) -> bool:
        return _basic(header) == self.credentials

    def route(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        m = _TICKET.match(path)
        if m is None:
            return self.problem(f"{method} {path}: not an endpoint the connector should call")
        number, sub = int(m.group(1)), m.group(2)
        t = self.tickets.get(number)
        if t is None:
            return 404, {"error": "RecordNotFound", "description": "Not found"}
        if method == "GET" and sub == "/comments":
            if query.get("sort_order", ["asc"])[0] not in ("asc", "desc"):
                return self.problem("List Comments: sort_order must be asc or desc")
            comments = list(self.notes[number])
            if query.get("sort_order") == ["desc"]:
                comments.reverse()
            return 200, {"comments": comments, "next_page": None, "previous_page": None, "count": len(comments)}
        if method == "GET" and sub is None:
            return 200, {"ticket": t}
        if method == "PUT" and sub is None:
            return self._update(number, t, body)
        return self.problem(f"{method} {path}: not an endpoint the connector should call")

    def _update(self, number: int, t: dict[str, Any], body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict) or set(body) != {"ticket"} or not isinstance(body["ticket"], dict):
            return self.problem('Update Ticket: the body is {"ticket": {...}}')
        u = body["ticket"]
        if unknown := set(u) - _ZD_UPDATE_KEYS:
            return self.problem(f"Update Ticket: unexpected properties {sorted(unknown)}")
        if "priority" in u and u["priority"] not in _ZD_PRIORITIES:
            return self.problem("Update Ticket: priority must be urgent, high, normal or low")
        if "group_id" in u and not isinstance(u["group_id"], int):
            return self.problem("Update Ticket: group_id is an integer")
        if "tags" in u and not (
            isinstance(u["tags"], list) and all(isinstance(x, str) and x and " " not in x for x in u["tags"])
        ):
            return self.problem("Update Ticket: tags is a list of strings without spaces")
        for f in u.get("custom_fields", []):
            if not (isinstance(f, dict) and set(f) == {"id", "value"} and isinstance(f["id"], int)):
                return self.problem("Update Ticket: custom_fields is a list of {id, value}")
        c = u.get("comment")
        if c is not None and not (
            isinstance(c, dict) and isinstance(c.get("body"), str) and c["body"] and isinstance(c.get("public"), bool)
        ):
            return self.problem("Update Ticket: comment is {body, public}")
        if u.get("safe_update") and u.get("updated_stamp") != t["updated_at"]:
            return 409, {
                "error": "UpdateConflict",
                "description": "Safe Update prevented the update due to outdated ticket data.",
            }
        for key in ("priority", "group_id", "tags"):
            if key in u:
                t[key] = u[key]
        if "custom_fields" in u:
            t["custom_fields"] = u["custom_fields"]
        if c is not None:
            self.notes[number].append({"id": len(self.notes[number]) + 1, "body": c["body"], "plain_body": c["body"],
                                       "public": c["public"], "created_at": _now()})  # fmt: skip
        t["updated_at"] = _now() + f"#{len(self.seen)}"
        return 200, {"ticket": t, "audit": {"events": []}}


_FD_UPDATE_KEYS = {"priority", "group_id", "fr_due_by", "due_by", "tags", "custom_fields"}
_ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


class FakeFreshdesk(FakeHelpdesk):
    vendor = "freshdesk"

    def __init__(self, api_key: str) -> None:
        super().__init__()
        self.api_key = api_key

    def add_ticket(self, number: int, tags: list[str] | None = None, due_by: str = "2099-01-01T00:00:00Z") -> None:
        self.tickets[number] = {"id": number, "tags": tags or [], "priority": 1, "group_id": None,
                                "due_by": due_by, "fr_due_by": None, "custom_fields": {}}  # fmt: skip
        self.notes[number] = []

    def authorised(self, header: str | None) -> bool:
        basic = _basic(header)
        return basic is not None and basic[0] == self.api_key

    def route(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        m = _TICKET.match(path)
        if m is None:
            return self.problem(f"{method} {path}: not an endpoint the connector should call")
        number, sub = int(m.group(1)), m.group(2)
        t = self.tickets.get(number)
        if t is None:
            return 404, {"code": "access_denied", "message": "ticket not found"}
        if method == "GET" and sub == "/conversations":
            per_page = int(query.get("per_page", ["30"])[0])
            page = int(query.get("page", ["1"])[0])
            if not 1 <= per_page <= 100:
                return self.problem("List All Conversations: per_page is 1-100")
            return 200, self.notes[number][(page - 1) * per_page : page * per_page]
        if method == "GET" and sub is None:
            return 200, t
        if method == "PUT" and sub is None:
            return self._update(t, body)
        if method == "POST" and sub == "/notes":
            if not (isinstance(body, dict) and isinstance(body.get("body"), str) and body["body"]
                    and isinstance(body.get("private"), bool) and set(body) <= {"body", "private", "incoming", "notify_emails", "user_id"}):  # fmt: skip
                return self.problem("Add Note: {body, private}")
            text = re.sub(r"<br>", "\n", body["body"])
            note = {"id": len(self.notes[number]) + 1, "body": body["body"], "body_text": text,
                    "private": body["private"], "ticket_id": number, "incoming": False}  # fmt: skip
            self.notes[number].append(note)
            return 201, note
        return self.problem(f"{method} {path}: not an endpoint the connector should call")

    def _update(self, t: dict[str, Any], u: Any) -> tuple[int, Any]:
        if not isinstance(u, dict) or set(u) - _FD_UPDATE_KEYS:
            return self.problem("Update a Ticket: unexpected properties")
        if "priority" in u and u["priority"] not in (1, 2, 3, 4):
            return self.problem("Update a Ticket: priority is 1-4")
        for key in ("fr_due_by", "due_by"):
            if key in u and not (isinstance(u[key], str) and _ISO.match(u[key])):
                return self.problem(f"Update a Ticket: {key} is an ISO 8601 time")
        fr, due = u.get("fr_due_by", t["fr_due_by"]), u.get("due_by", t["due_by"])
        if fr and due and fr > due:
            return 400, {"description": "Validation failed",
                         "errors": [{"field": "fr_due_by", "message": "must be before due_by", "code": "invalid_value"}]}  # fmt: skip
        if "tags" in u and not (isinstance(u["tags"], list) and all(isinstance(x, str) for x in u["tags"])):
            return self.problem("Update a Ticket: tags is a list of strings")
        if "custom_fields" in u and not isinstance(u["custom_fields"], dict):
            return self.problem("Update a Ticket: custom_fields is an object")
        t.update(u)
        return 200, t
