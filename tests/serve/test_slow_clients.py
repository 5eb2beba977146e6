"""Issue 29, replayed against a real ``myriad serve`` (uvicorn) on loopback: slow headers, stalled and oversized
chunked uploads. The server runs with 256 open files at most, as a small machine's default would give it."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .test_cli_serve import free_port

psutil = pytest.importorskip("psutil")

MAX_CONNECTIONS = 64
OPTIONS = ["--max-connections", str(MAX_CONNECTIONS), "--header-timeout-s", "2", "--body-timeout-s", "1",
           "--max-upload-mb", "1"]
MULTIPART_HEAD = b'--xyz\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'


def _small_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``(url, port, process, temporary folder, log path)`` of a server started with :data:`OPTIONS`."""
    tmp = tmp_path_factory.mktemp("server-tmp")
    log = tmp_path_factory.mktemp("server-log") / "server.log"
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp)}
    env.pop("MYRIAD_SERVE_TOKEN", None)
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "myriad", "serve", "--lmm", "none", "--no-ui", "--port", str(port), "--log-level",
             "warning", *OPTIONS], stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=_small_fd_limit,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/health", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
    yield url, port, proc, tmp, log
    proc.terminate()
    proc.wait(timeout=20)


def health_seconds(url: str) -> float:
    start = time.monotonic()
    with urllib.request.urlopen(f"{url}/api/health", timeout=5) as response:
        assert response.status == 200
    return time.monotonic() - start


def files_under(pid: int, folder: Path) -> list[str]:
    """Files the process holds open under ``folder``, deleted ones included (spooled uploads are unlinked at once)."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(folder)):
            found.append(target)
    return found


def first_line_and_detail(sock: socket.socket, timeout: float = 5.0) -> tuple[bytes, str]:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        piece = sock.recv(65536)
        if not piece:
            break
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0], json.loads(body)["detail"]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files through /proc")
def test_slow_header_clients_neither_exhaust_files_nor_lock_others_out(server):
    """220 sockets sending a header byte now and then used to make /api/health time out ("Too many open files")."""
    url, port, proc, _, log = server
    process = psutil.Process(proc.pid)
    before = process.num_fds()
    slow = []
    for _ in range(220):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: loc")
        slow.append(sock)
    worst, most_files = 0.0, 0
    for _ in range(3):
        worst = max(worst, health_seconds(url))
        most_files = max(most_files, process.num_fds())
        for sock in slow:
            try:
                sock.send(b"a")
            except OSError:
                pass
        time.sleep(0.3)
    assert worst < 1.0, worst
    assert most_files <= before + MAX_CONNECTIONS + 2, (before, most_files)
    time.sleep(2.5)  # past --header-timeout-s: every slow socket has been answered and closed
    answers = {}
    for sock in slow:
        line, detail = first_line_and_detail(sock, 2)
        answers[line] = detail
        sock.close()
    assert set(answers) == {b"HTTP/1.1 503 Service Unavailable", b"HTTP/1.1 408 Request Timeout"}
    assert "--header-timeout-s" in answers[b"HTTP/1.1 408 Request Timeout"]
    assert "--max-connections" in answers[b"HTTP/1.1 503 Service Unavailable"]
    assert process.num_fds() <= before + 2 and health_seconds(url) < 1.0
    assert "Too many open files" not in log.read_text()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files through /proc")
def test_stalled_uploads_are_timed_out_and_their_files_removed(server):
    """Three stalled chunked uploads used to keep their spooled temporary files until the client closed."""
    url, port, proc, tmp, _ = server
    stalled = []
    for _ in range(3):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"POST /api/profiles/x HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; "
                     b"boundary=xyz\r\nTransfer-Encoding: chunked\r\n\r\n")
        sock.sendall(b"%x\r\n%s\r\n" % (len(MULTIPART_HEAD), MULTIPART_HEAD))
        chunk = b"x" * 65536
        for _ in range(32):  # 2 MiB: past the 1 MiB the multipart parser keeps in memory
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        stalled.append(sock)
    time.sleep(0.4)
    assert len(files_under(proc.pid, tmp)) == 3  # spooled to the temporary folder, then the client stalls
    for sock in stalled:
        line, detail = first_line_and_detail(sock)
        assert line == b"HTTP/1.1 408 Request Timeout" and "--body-timeout-s" in detail
        sock.close()
    time.sleep(0.3)
    assert files_under(proc.pid, tmp) == [] and list(tmp.iterdir()) == []
    assert health_seconds(url) < 1.0


def test_a_chunked_upload_to_the_inspect_route_is_refused_at_one_images_limit(server):
    url, port, *_ = server
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /api/profiles/p/inspect HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; "
                 b"boundary=xyz\r\nTransfer-Encoding: chunked\r\n\r\n")
    sock.sendall(b"%x\r\n%s\r\n" % (len(MULTIPART_HEAD), MULTIPART_HEAD))
    chunk, sent = b"x" * 65536, 0
    sock.settimeout(0.0)
    while sent < 64 * 1024 * 1024:
        try:
            if sock.recv(1, socket.MSG_PEEK):
                break  # answered
        except BlockingIOError:
            pass
        try:
            sock.setblocking(True)
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
        except OSError:
            break
        finally:
            sock.setblocking(False)
    sock.setblocking(True)
    line, detail = first_line_and_detail(sock)
    sock.close()
    assert line == b"HTTP/1.1 413 Request Entity Too Large" and "for this route (one image: --max-upload-mb" in detail
    assert sent < 32 * 1024 * 1024  # the answer came long before the fit route's 65 MiB (kernel buffers aside)
    assert health_seconds(url) < 1.0
