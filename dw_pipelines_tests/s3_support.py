"""A real S3-protocol server on loopback for the object-storage tests and the benchmark.

`start_moto_server` runs moto's standalone server (`python -m moto.server`, the `moto_server`
CLI) as a subprocess on a free port of 127.0.0.1: the worker talks to it over HTTP with the AWS
SDK inside pyarrow, exactly as it would talk to MinIO or AWS S3.

`MotoS3.enforce_iam` turns on moto's IAM enforcement: from then on every request must be signed
by an IAM user's key and is allowed or denied by that user's policies, so an access-denied object
is a genuine 403 from the server (a `Deny` statement in the worker's policy), not a mock.

`FaultProxy` is a small HTTP proxy on loopback between the worker and moto. It forwards requests
byte for byte (the SigV4 signature covers the Host header, which it keeps) and, for the requests
a test picks, answers like an overloaded S3 instead (503 SlowDown) or stalls past the client's
timeout. It also records every request (method, path, Range header) so tests can check that
objects are read with ranged GETs.
"""

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
from botocore.config import Config

REGION = "us-east-1"
REPO_ROOT = Path(__file__).resolve().parent.parent
LANDING_POLICY = REPO_ROOT / "deploy" / "aws" / "landing-read-policy.json"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class IamUser:
    name: str
    access_key_id: str
    secret_access_key: str


@dataclass
class MotoS3:
    """A running `moto.server` subprocess."""

    process: subprocess.Popen
    endpoint: str  # http://127.0.0.1:PORT
    users: dict[str, IamUser] = field(default_factory=dict)

    def client(self, user: IamUser | None = None, endpoint: str | None = None):
        """A boto3 S3 client; with `user`, signed with that IAM user's key."""
        key_id, secret = (
            ("testing", "testing")
            if user is None
            else (
                user.access_key_id,
                user.secret_access_key,
            )
        )
        return boto3.client(
            "s3",
            endpoint_url=endpoint or self.endpoint,
            region_name=REGION,
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            config=Config(retries={"max_attempts": 1}),
        )

    def iam(self):
        return boto3.client(
            "iam",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def create_user(self, name: str, policy: dict) -> IamUser:
        """An IAM user with an inline policy and an access key (before `enforce_iam`)."""
        iam = self.iam()
        iam.create_user(UserName=name)
        iam.put_user_policy(
            UserName=name, PolicyName=f"{name}-policy", PolicyDocument=json.dumps(policy)
        )
        key = iam.create_access_key(UserName=name)["AccessKey"]
        user = IamUser(name, key["AccessKeyId"], key["SecretAccessKey"])
        self.users[name] = user
        return user

    def enforce_iam(self) -> None:
        """From now on every request is authenticated and authorised against IAM."""
        request = urllib.request.Request(
            f"{self.endpoint}/moto-api/reset-auth",
            data=b"0",
            method="POST",
            # Not a form: moto reads the raw body as the count of unauthenticated requests left.
            headers={"Content-Type": "application/octet-stream"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_moto_server(log_path: Path | None = None, attempts: int = 3) -> MotoS3:
    """Start `python -m moto.server` on a free loopback port and wait until it answers."""
    last_error = ""
    for _ in range(attempts):
        port = free_port()
        log = open(log_path or os.devnull, "ab")  # handed to the child, closed below
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            # moto's own settings come from its environment: keep the test's AWS_* out of it.
            env={k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        )
        log.close()
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                    return MotoS3(process, endpoint)
            except OSError as exc:
                last_error = str(exc)
                time.sleep(0.1)
        process.kill()
        process.wait()
        last_error = f"exit code {process.returncode}: {last_error}"
    raise RuntimeError(f"moto server did not start: {last_error}")


def landing_policy(bucket: str, prefix: str) -> dict:
    """The documented least-privilege policy (deploy/aws/landing-read-policy.json) for one
    bucket and prefix: the tests grant the worker exactly what the docs tell operators to grant."""
    text = LANDING_POLICY.read_text(encoding="utf-8")
    return json.loads(
        text.replace("LANDING_BUCKET", bucket).replace("LANDING_PREFIX", prefix.strip("/"))
    )


# ---------------------------------------------------------------------------------- the proxy


@dataclass
class Fault:
    """Answer the next `times` requests whose path contains `match` with a fault."""

    match: str
    kind: str  # "slowdown": 503 SlowDown | "stall": hold the response for `seconds`
    times: int
    method: str | None = None  # only this HTTP method (None: any)
    seconds: float = 0.0
    hits: int = 0


_SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message>"
    b"<RequestId>dwtestproxy</RequestId></Error>"
)


@dataclass
class Seen:
    method: str
    path: str
    range: str | None
    status: int


class FaultProxy:
    """Forwards to `upstream`; injects the faults in `self.faults`; logs requests in `seen`."""

    def __init__(self, upstream: str):
        self.upstream = upstream.removeprefix("http://")
        self.faults: list[Fault] = []
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def _handle(self) -> None:
                proxy._forward(self)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self.seen.clear()

    def requests_for(self, path_part: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if path_part in s.path]

    def close(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()

    def _fault_for(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.match in path and fault.hits < fault.times:
                    if fault.method is None or fault.method == method:
                        fault.hits += 1
                        return fault
        return None

    def _record(self, handler: BaseHTTPRequestHandler, status: int) -> None:
        with self._lock:
            self.seen.append(
                Seen(handler.command, handler.path, handler.headers.get("Range"), status)
            )

    def _forward(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        fault = self._fault_for(handler.command, handler.path)
        if fault is not None and fault.kind == "slowdown":
            self._record(handler, 503)
            handler.send_response(503, "Slow Down")
            handler.send_header("Content-Type", "application/xml")
            handler.send_header("Content-Length", str(len(_SLOW_DOWN)))
            handler.end_headers()
            if handler.command != "HEAD":
                handler.wfile.write(_SLOW_DOWN)
            return
        if fault is not None and fault.kind == "stall":
            self._record(handler, 0)
            # Say nothing for longer than the client's request timeout, then hang up.
            self._stop.wait(fault.seconds)
            handler.close_connection = True
            return
        upstream = http.client.HTTPConnection(self.upstream, timeout=60)
        try:
            headers = {k: v for k, v in handler.headers.items()}
            upstream.request(handler.command, handler.path, body=body, headers=headers)
            response = upstream.getresponse()
            payload = response.read()
        finally:
            upstream.close()
        self._record(handler, response.status)
        handler.send_response(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() in ("transfer-encoding", "connection"):
                continue
            # A HEAD answer carries the object's length with no body: pass it on as it is.
            if name.lower() == "content-length" and handler.command != "HEAD":
                continue
            handler.send_header(name, value)
        if handler.command != "HEAD":
            handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(payload)


@contextmanager
def fault_proxy(upstream: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream)
    try:
        yield proxy
    finally:
        proxy.close()
