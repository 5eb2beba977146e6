"""Peak memory of ``myriad serve`` under the worst request each limit allows, and with its stores full (issue 29).

Starts ``myriad serve --lmm none --no-ui`` on a free 127.0.0.1 port (its own ``TMPDIR``), samples the server's
resident memory (psutil, every 5 ms) around each request, and writes ``benchmarks/results/serve_limits.json`` and
``.md``: per case the limit, the request, the answer, the server's memory before and at its peak, the seconds,
``/api/health``'s answer time afterwards and what was left in the temporary folder. Cases:

- the issue's request (eight flat 4096 px PNGs, 471 KiB) refused by ``--max-request-pixels``;
- the largest fit the pixel budget allows (four 2048 px images), with the cheapest expert and with PatchCore at 64 px;
- the largest inspection (one 4096 px image), whose session is then held;
- the session store filled with 2048 px inspections (in count or bytes, whichever binds first);
- 220 slow-header sockets against ``--max-connections`` and ``--header-timeout-s``.

    .venv/bin/python benchmarks/serve/limits.py [--sessions 128]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
MIB = 1024 * 1024
CHEAP = ["--expert", "colour-stats", "--expert-config", json.dumps({"colour-stats": {"size": 32}})]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png(array: Any) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


class Server:
    """A ``myriad serve`` subprocess on loopback with its own temporary folder, and its memory sampled."""

    def __init__(self, options: list[str], folder: Path) -> None:
        import psutil

        self.tmp = folder / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(self.tmp)}
        env.pop("MYRIAD_SERVE_TOKEN", None)
        self.log = open(folder / f"server-{self.port}.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "myriad", "serve", "--lmm", "none", "--no-ui", "--port", str(self.port),
             "--log-level", "warning", *options], stdout=self.log, stderr=subprocess.STDOUT, env=env,
        )
        self.process = psutil.Process(self.proc.pid)
        self.wait_ready()

    def wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited with {self.proc.returncode}")
            try:
                httpx.get(f"{self.url}/api/health", timeout=2)
                return
            except httpx.HTTPError:
                time.sleep(0.3)
        raise SystemExit("the server did not start")

    def left_in_tmp(self) -> list[str]:
        """What is in the server's temporary folder, torch's own compile cache (made once per process) left out."""
        return [p.name for p in self.tmp.iterdir() if not p.name.startswith("torchinductor_")]

    def rss(self) -> int:
        return self.process.memory_info().rss

    def health_seconds(self) -> float:
        import httpx

        start = time.monotonic()
        httpx.get(f"{self.url}/api/health", timeout=10).raise_for_status()
        return time.monotonic() - start

    def health(self) -> dict[str, Any]:
        import httpx

        return httpx.get(f"{self.url}/api/health", timeout=10).json()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


class Peak:
    """The server's peak resident memory while the block runs."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def __enter__(self) -> "Peak":
        self.before = self.peak = self.server.rss()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        self.start = time.monotonic()
        return self

    def _sample(self) -> None:
        while self.running:
            try:
                self.peak = max(self.peak, self.server.rss())
            except Exception:  # noqa: BLE001 - the process went away: stop sampling
                return
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.monotonic() - self.start
        self.running = False
        self.thread.join()


def measured(server: Server, case: str, limit: str, request: str, send: Any) -> dict[str, Any]:
    """Run ``send()`` (returns an httpx response or a dict of results) and record the server's memory around it."""
    with Peak(server) as peak:
        answer = send()
    row: dict[str, Any] = {"case": case, "limit": limit, "request": request}
    if hasattr(answer, "status_code"):
        row["status"] = answer.status_code
        row["detail"] = answer.json().get("detail", "") if answer.status_code >= 400 else ""
    else:
        row.update(answer)
    row.update({
        "rss_before_mib": round(peak.before / MIB), "rss_peak_mib": round(peak.peak / MIB),
        "grew_mib": round((peak.peak - peak.before) / MIB), "seconds": round(peak.seconds, 2),
        "health_after_s": round(server.health_seconds(), 3), "tmp_left": len(server.left_in_tmp()),
    })
    print(json.dumps(row), flush=True)
    return row


def fit_cases(folder: Path) -> list[dict[str, Any]]:
    import httpx
    import numpy as np

    from myriad.serve.limits import Limits

    flat = png(np.full((4096, 4096, 3), 127, dtype=np.uint8))
    flat_2048 = png(np.full((2048, 2048, 3), 127, dtype=np.uint8))
    y, x = np.indices((4096, 4096))
    pattern = png(np.stack([(x ^ y) & 255, (x + y) & 255, (x * 3) & 255], axis=-1).astype(np.uint8))  # under 20 MiB
    budget = Limits().max_request_pixels
    rows = []
    server = Server(CHEAP, folder)
    try:
        eight = [("files", (f"flat{i}.png", flat, "image/png")) for i in range(8)]
        rows.append(measured(server, "the issue's request, refused", f"--max-request-pixels {budget}",
                             f"fit, 8 flat 4096 px PNGs ({sum(len(f[1][1]) for f in eight) // 1024} KiB), colour-stats",
                             lambda: httpx.post(f"{server.url}/api/profiles/big", files=eight, timeout=600)))
        four = [("files", (f"flat{i}.png", flat_2048, "image/png")) for i in range(4)]
        rows.append(measured(server, "largest fit allowed", f"--max-request-pixels {budget}",
                             "fit, 4 flat 2048 px PNGs (the whole pixel budget), colour-stats",
                             lambda: httpx.post(f"{server.url}/api/profiles/big", files=four, timeout=600)))
    finally:
        server.stop()
    server = Server([*CHEAP, "--max-request-pixels", str(2 * budget)], folder)  # a profile of 4096 px images
    try:
        two = [("files", (f"flat{i}.png", flat, "image/png")) for i in range(2)]
        httpx.post(f"{server.url}/api/profiles/big", files=two, timeout=600).raise_for_status()
        rows.append(measured(server, "largest inspection allowed", "--max-pixels 16777216, one image",
                             "inspect, one patterned 4096 px PNG (its session is kept), colour-stats",
                             lambda: httpx.post(f"{server.url}/api/profiles/big/inspect",
                                                files=[("file", ("pattern.png", pattern, "image/png"))], timeout=600)))
        health = server.health()
        rows[-1]["held_after"] = {k: health[k] for k in ("profiles", "sessions", "profile_bytes", "session_bytes")}
    finally:
        server.stop()
    server = Server([], folder)  # PatchCore, as a client may choose it, at 64 px
    try:
        four = [("files", (f"flat{i}.png", flat_2048, "image/png")) for i in range(4)]
        config = {"expert": "patchcore", "config": json.dumps({"image_size": 64, "progress": False})}
        rows.append(measured(server, "largest fit allowed", f"--max-request-pixels {budget}",
                             "fit, 4 flat 2048 px PNGs (the whole pixel budget), patchcore at 64 px",
                             lambda: httpx.post(f"{server.url}/api/profiles/big", files=four, data=config, timeout=600)))
        eight = [("files", (f"flat{i}.png", flat, "image/png")) for i in range(8)]
        rows.append(measured(server, "the issue's request, refused", f"--max-request-pixels {budget}",
                             "fit, 8 flat 4096 px PNGs, patchcore at 64 px",
                             lambda: httpx.post(f"{server.url}/api/profiles/big", files=eight, data=config, timeout=600)))
    finally:
        server.stop()
    return rows


def store_case(folder: Path, sessions: int) -> dict[str, Any]:
    """Fill the session store with 2048 px inspections; memory and bytes held at the end."""
    import httpx
    import numpy as np

    image = png(np.random.default_rng(1).integers(0, 255, (2048, 2048, 3), dtype=np.uint8))
    normals = [png(np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8)) for i in range(3)]
    server = Server([*CHEAP, "--max-sessions", str(sessions)], folder)
    try:
        files = [("files", (f"n{i}.png", b, "image/png")) for i, b in enumerate(normals)]
        for name in ("a", "b"):
            httpx.post(f"{server.url}/api/profiles/{name}", files=files, timeout=120).raise_for_status()

        def fill() -> dict[str, Any]:
            statuses: dict[str, int] = {}
            for i in range(int(sessions * 1.25)):
                answer = httpx.post(f"{server.url}/api/profiles/a/inspect",
                                    files=[("file", (f"i{i}.png", image, "image/png"))], timeout=120)
                statuses[str(answer.status_code)] = statuses.get(str(answer.status_code), 0) + 1
            health = server.health()
            return {"status": statuses, "held_after": {k: health[k] for k in
                                                       ("profiles", "sessions", "profile_bytes", "session_bytes",
                                                        "max_memory_bytes")}}

        return measured(server, "session store full", f"--max-sessions {sessions}, --max-memory-mb 2048",
                        f"{int(sessions * 1.25)} inspections of 2048 px noisy PNGs, colour-stats", fill)
    finally:
        server.stop()


def slow_clients_case(folder: Path) -> dict[str, Any]:
    """220 sockets that send a header byte now and then, against the defaults but a 3 s header deadline."""
    server = Server(["--header-timeout-s", "3"], folder)
    try:
        def attack() -> dict[str, Any]:
            files_before = server.process.num_fds()
            slow = []
            for _ in range(220):
                sock = socket.create_connection(("127.0.0.1", server.port))
                sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: loc")
                slow.append(sock)
            worst, most = 0.0, 0
            for _ in range(5):
                worst = max(worst, server.health_seconds())
                most = max(most, server.process.num_fds())
                for sock in slow:
                    try:
                        sock.send(b"a")
                    except OSError:
                        pass
                time.sleep(0.5)
            time.sleep(3)
            answered: dict[str, int] = {}
            for sock in slow:
                sock.settimeout(2)
                try:
                    line = sock.recv(4096).split(b"\r\n")[0].decode() or "closed"
                except OSError:
                    line = "no answer"
                answered[line] = answered.get(line, 0) + 1
                sock.close()
            return {"status": answered, "open_files_before": files_before, "open_files_most": most,
                    "health_worst_s": round(worst, 3), "open_files_after": server.process.num_fds()}

        return measured(server, "slow-header clients", "--max-connections 128, --header-timeout-s 3",
                        "220 sockets, a header byte every 0.5 s", attack)
    finally:
        server.stop()


def write(rows: list[dict[str, Any]]) -> None:
    summary = {"host": f"{os.cpu_count()} CPUs", "server": "myriad serve --lmm none --no-ui, 127.0.0.1", "cases": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve_limits.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [
        "# The server under hostile load: peak memory per limit",
        "",
        "`benchmarks/serve/limits.py`: `myriad serve --lmm none --no-ui` on loopback, its resident memory sampled every "
        "5 ms (psutil) around each request. *grew*: peak minus the memory before the request. *health*: seconds "
        "`/api/health` took right after. *tmp*: files left in the server's temporary folder (torch's own "
        "`torchinductor_<user>` cache folder, made once per process, not counted).",
        "",
        "| case | limit | request | answer | before MiB | peak MiB | grew MiB | s | health s | tmp |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        answer = row.get("status")
        if row.get("detail"):
            answer = f"{answer}: {row['detail']}"
        lines.append(f"| {row['case']} | {row['limit']} | {row['request']} | {answer} | {row['rss_before_mib']} | "
                     f"{row['rss_peak_mib']} | {row['grew_mib']} | {row['seconds']} | {row['health_after_s']} | "
                     f"{row['tmp_left']} |")
    lines.append("")
    for row in rows:
        extra = {k: v for k, v in row.items() if k in ("held_after", "open_files_before", "open_files_most",
                                                       "open_files_after", "health_worst_s")}
        if extra:
            lines.append(f"- {row['case']} ({row['request']}): `{json.dumps(extra)}`")
    (RESULTS / "serve_limits.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=128, help="--max-sessions of the store-full case")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="myriad-limits-") as tmp:
        folder = Path(tmp)
        rows = fit_cases(folder)
        rows.append(store_case(folder, args.sessions))
        rows.append(slow_clients_case(folder))
    write(rows)


if __name__ == "__main__":
    main()
