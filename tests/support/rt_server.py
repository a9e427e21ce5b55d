"""A private Request Tracker 5 instance for a test session (Debian's request-tracker5).

Everything lives in one directory: its own ``RT_SiteConfig.pm`` (through ``RT_SITE_CONFIG`` and an
empty ``RT_SITE_CONFIG_DIR``, so nothing under /etc/request-tracker5 is read), a fresh SQLite
database from ``rt-setup-database --action init``, its own Mason, session and var directories, and
``rt-server`` (Starlet) on 127.0.0.1 and a free port. The packaged database is not touched.

``BcryptCost 4``: RT re-checks a bcrypt hash on every Basic- or token-authenticated request, which
costs ~250 ms of CPU at RT's default cost 12; it is set before the database is created, so root's
password and the tokens are cheap. Outgoing mail goes to ``var/*.mbox`` (``MailCommand mbox``).
Stdlib only; installed by ``deploy/install-rt.sh``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

RT_HOME = Path("/usr/share/request-tracker5")
RT_LIB = RT_HOME / "lib"
RT_SERVER = RT_HOME / "libexec" / "rt-server"
RT_SETUP_DATABASE = Path("/usr/sbin/rt-setup-database-5")
ROOT_USER, ROOT_PASSWORD = "root", "password"  # RT's initialdata default for root

_SITE_CONFIG = """\
Set($rtname, 'router-test-{port}');
Set($Organization, 'router.test');
Set($CorrespondAddress, 'rt@router.test');
Set($CommentAddress, 'rt-comment@router.test');
Set($WebDomain, '127.0.0.1');
Set($WebPort, {port});
Set($WebPath, '');
Set($DatabaseType, 'SQLite');
Set($DatabaseName, {db});
Set($Timezone, 'UTC');
Set($LogToSyslog, undef);
Set($LogToSTDERR, 'warning');
Set($MailCommand, 'mbox');
Set($BcryptCost, 4);
$RT::VarPath = {var};
$RT::MasonDataDir = {mason};
$RT::MasonSessionDir = {sessions};
1;
"""


class RTError(RuntimeError):
    pass


def rt_installed() -> bool:
    return RT_SERVER.is_file() and RT_SETUP_DATABASE.is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _perl_str(value: object) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


class RTServer:
    """A private RT: :meth:`start` creates it, :meth:`stop`/:meth:`start_server` take it down and up
    again on the same port and database, :meth:`close` removes it."""

    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir = workdir
        self.port = port
        self.db_path = workdir / "rt.sqlite"
        self.config_path = workdir / "RT_SiteConfig.pm"
        self.log_path = workdir / "rt-server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def rest2_url(self) -> str:
        return self.base_url + "/REST/2.0"

    @property
    def basic_auth(self) -> str:
        return "Basic " + base64.b64encode(f"{ROOT_USER}:{ROOT_PASSWORD}".encode()).decode()

    @classmethod
    def start(cls, *, initialdata: Sequence[Path] = (), timeout: float = 120.0) -> RTServer:
        """A fresh instance with ``initialdata`` loaded, serving REST2."""
        if not rt_installed():
            raise RTError(f"RT is not installed ({RT_SERVER} missing): run deploy/install-rt.sh")
        server = cls(Path(tempfile.mkdtemp(prefix="rt-test-")), _free_port())
        try:
            server._write_config()
            server._run([str(RT_SETUP_DATABASE), "--action", "init"], 180)
            for path in initialdata:
                out = server._run(
                    [str(RT_SETUP_DATABASE), "--action", "insert", "--datafile", str(Path(path).resolve())], 120
                )
                if "[error]" in out or "[critical]" in out:
                    raise RTError(f"initialdata {path} reported errors:\n{out}")
            server.start_server(timeout)
            server.warm_up()
        except BaseException:
            server.close()
            raise
        return server

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RT_DB_")}
        env["RT_SITE_CONFIG"] = str(self.config_path)
        env["RT_SITE_CONFIG_DIR"] = str(self.workdir / "RT_SiteConfig.d")  # empty: hides /etc's snippets
        return env

    def _write_config(self) -> None:
        for d in ("var", "mason", "sessions", "RT_SiteConfig.d"):
            (self.workdir / d).mkdir(exist_ok=True)
        text = _SITE_CONFIG
        for key, value in {
            "port": str(self.port),
            "db": _perl_str(self.db_path),
            "var": _perl_str(self.workdir / "var"),
            "mason": _perl_str(self.workdir / "mason"),
            "sessions": _perl_str(self.workdir / "sessions"),
        }.items():
            text = text.replace("{" + key + "}", value)
        self.config_path.write_text(text)

    def _run(self, args: list[str], timeout: float) -> str:
        try:
            done = subprocess.run(
                args, env=self._env(), cwd=self.workdir, timeout=timeout, capture_output=True, text=True, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise RTError(f"{args[0]} timed out after {timeout}s") from exc
        if done.returncode != 0:
            raise RTError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        return done.stdout + done.stderr

    def create_token(self, description: str = "router tests") -> str:
        """An auth token of root (``Authorization: token ...``), made with RT's Perl API (REST2 has no endpoint)."""
        program = (
            "use strict; use warnings; use RT; RT::LoadConfig(); RT::Init();\n"
            "my $root = RT::User->new(RT->SystemUser); $root->Load('root');\n"
            "my $t = RT::AuthToken->new(RT::CurrentUser->new($root));\n"
            f"my ($id, $msg, $auth) = $t->Create(Owner => $root->Id, Description => {_perl_str(description)});\n"
            'die "token: $msg\\n" unless $id; print "TOKEN=$auth\\n";'
        )
        for line in self._run(["perl", f"-I{RT_LIB}", "-e", program], 60).splitlines():
            if line.startswith("TOKEN="):
                return line.removeprefix("TOKEN=").strip()
        raise RTError("no token in the output")

    def start_server(self, timeout: float = 120.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(RT_SERVER), "--host", "127.0.0.1", "--port", str(self.port), "--max-workers", "2"],
            env=self._env(),
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stop() ends master and workers
        )
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                self.stop()
                raise RTError(f"RT REST2 did not come up; log:\n{tail}")
            time.sleep(0.1)

    def warm_up(self, rounds: int = 2) -> None:
        """Take every REST2 path the connector uses once per Starlet worker: a production RT has served
        requests before, a fresh one compiles its Mason components on first use (hundreds of ms)."""
        for _ in range(rounds):
            created = self._call("POST", "/ticket", {"Queue": "Support", "Subject": "warm-up", "Content": "x"})
            number = created["id"]
            self._call("GET", "/tickets?query=id%20%3E%200&orderby=id&per_page=1&fields=Queue,Requestor")
            self._call("GET", f"/ticket/{number}/history?fields=Type,Data")
            self._call("PUT", f"/ticket/{number}", {"Priority": 1, "Due": "2030-01-01 00:00:00"})
            self._call("POST", f"/ticket/{number}/comment", {"Content": "warm-up", "ContentType": "text/plain"})
            self._call("PUT", f"/ticket/{number}", {"Status": "deleted"})

    def _call(self, method: str, path: str, body: object = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.rest2_url + path,
            data=data,
            method=method,
            headers={"Authorization": self.basic_auth, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as r:
            return json.loads(r.read() or b"null")

    def ping(self) -> bool:
        """REST2 answers an authenticated ``GET /REST/2.0/rt``."""
        request = urllib.request.Request(self.rest2_url + "/rt", headers={"Authorization": self.basic_auth})
        try:
            with urllib.request.urlopen(request, timeout=2) as r:
                doc: Any = json.loads(r.read())
                return r.status == 200 and "Version" in doc
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def stop(self) -> None:
        """End rt-server (master and Starlet workers) by its process group. Not SIGINT: Debian's
        rt-server then chowns /var/lib/request-tracker5."""
        proc, self.proc = self.proc, None
        if proc is not None:
            for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(wait)
                except subprocess.TimeoutExpired:
                    continue
                deadline = time.monotonic() + wait
                while time.monotonic() < deadline and _group_alive(proc.pid):
                    time.sleep(0.05)
                if not _group_alive(proc.pid):
                    break
        if self._log is not None:
            self._log.close()
            self._log = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
