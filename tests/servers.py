"""Real servers on 127.0.0.1 for the tests: an S3-speaking one (moto's standalone server) and a weights mirror.

The S3 code under test reaches it the way a user reaches MinIO or any S3-compatible store: through
`AWS_ENDPOINT_URL` and the usual credential variables, which s3fs (our reads and reports) and pyarrow
(Ray Train's and Ray Data's storage) both honour. Jobs started as subprocesses inherit them, and so do
the local Ray clusters those jobs start.
"""

from __future__ import annotations

import contextlib
import http.server
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator

from tests.cluster import free_port

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


class S3Server:
    """moto's server in a subprocess; `env` points S3 clients at it."""

    def __init__(self) -> None:
        port = free_port()
        self.endpoint = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2)  # noqa: S310 - loopback
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto's S3 server did not start on {self.endpoint}") from None
                time.sleep(0.2)
        self.env = {"AWS_ENDPOINT_URL": self.endpoint, **CREDENTIALS}

    @property
    def fs(self):
        """An s3fs filesystem on this server, independent of the environment."""
        import s3fs

        return s3fs.S3FileSystem(
            endpoint_url=self.endpoint, key=CREDENTIALS["AWS_ACCESS_KEY_ID"], secret=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            skip_instance_cache=True,
        )

    def bucket(self, name: str) -> str:
        """Creates a bucket; returns its URI."""
        self.fs.mkdir(name)
        return f"s3://{name}"

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)


@contextlib.contextmanager
def weights_server(payload: bytes) -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on 127.0.0.1 serving one weights file (an internal mirror); counts the downloads."""
    downloads = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            downloads.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/resnet50_tiny.pth", downloads
    finally:
        server.shutdown()
