"""Bounded schemathesis fuzz run of the server's OpenAPI schema, on loopback: zero 5xx expected.

Starts ``myriad serve --lmm none --no-ui`` on a free 127.0.0.1 port (with a ``--data-root`` holding
one folder of normal images, and a token), runs schemathesis against ``/openapi.json`` with a fixed
seed, a bounded number of examples per operation and a wall-clock limit, then writes
``benchmarks/results/serve_fuzz.json`` and ``.md``: requests sent, answers by status, 5xx count,
failed checks, and whether the server logged any traceback. A behaviour check, not a timing.

    .venv/bin/pip install schemathesis
    .venv/bin/python benchmarks/serve/fuzz_api.py [--max-examples 30] [--time-limit 900] [--schemathesis PATH]

(``--schemathesis``: the command from another environment, e.g. ``/tmp/fuzz/bin/schemathesis``, so that the
project's environment stays as it is.)
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_normals(folder: Path) -> None:
    """Three small synthetic normal images, so that ``folder=good`` can really fit a profile."""
    from PIL import Image

    from myriad.testing import synthetic_images

    folder.mkdir(parents=True)
    for i, image in enumerate(synthetic_images(3, 64, seed=1)):
        Image.fromarray(image).save(folder / f"normal{i}.png")


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/api/health", timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise SystemExit("the server did not start")


def statuses(ndjson: Path) -> tuple[collections.Counter, int]:
    """Answers by HTTP status, and the number of failed checks, from schemathesis' NDJSON events."""
    counts: collections.Counter = collections.Counter()
    failures = 0

    def walk(node: object) -> None:
        nonlocal failures
        if isinstance(node, dict):
            response = node.get("response")
            if isinstance(response, dict) and isinstance(response.get("status_code"), int):
                counts[response["status_code"]] += 1
            if node.get("status") == "FAILURE" and "name" in node:
                failures += 1
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for line in ndjson.read_text().splitlines():
        if line.strip():
            walk(json.loads(line))
    return counts, failures


def _version(command: str) -> str:
    """schemathesis' version, as its command reports it."""
    out = subprocess.run([command, "--version"], capture_output=True, text=True, check=False).stdout
    return out.strip().split()[-1] if out.strip() else "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=30, help="test cases per API operation and phase")
    parser.add_argument("--time-limit", type=float, default=900, help="seconds for the whole schemathesis run")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--schemathesis", default=str(Path(sys.executable).with_name("schemathesis")),
                        help="the schemathesis command (default: the one beside this Python)")
    args = parser.parse_args()

    token = secrets.token_urlsafe(16)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="myriad-fuzz-") as tmp:
        tmp_path = Path(tmp)
        write_normals(tmp_path / "data" / "good")
        log_path = tmp_path / "server.log"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MYRIAD_SERVE_TOKEN": token}
        with open(log_path, "w") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "myriad", "serve", "--host", "127.0.0.1", "--port", str(port), "--lmm", "none",
                 "--no-ui", "--data-root", str(tmp_path / "data"), "--log-level", "warning"],
                stdout=log, stderr=subprocess.STDOUT, env=env,
            )
        try:
            wait_ready(url, server)
            command = [
                args.schemathesis, "run", f"{url}/openapi.json",
                "--checks", CHECKS, "--max-examples", str(args.max_examples), "--seed", str(args.seed),
                "--phases", "examples,coverage,fuzzing", "--header", f"Authorization: Bearer {token}",
                "--request-timeout", "60", "--generation-database", "none", "--workers", "1",
                "--report", "ndjson", "--report-dir", str(tmp_path / "report"), "--no-color",
            ]
            start = time.monotonic()
            try:
                run = subprocess.run(command, capture_output=True, text=True, timeout=args.time_limit)
                output, exit_code, timed_out = run.stdout + run.stderr, run.returncode, False
            except subprocess.TimeoutExpired as exc:
                output = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
                exit_code, timed_out = None, True
            elapsed = time.monotonic() - start
        finally:
            server.terminate()
            server.wait(timeout=30)
        server_log = log_path.read_text()
        reports = sorted((tmp_path / "report").glob("*.ndjson"))
        counts, failures = statuses(reports[0]) if reports else (collections.Counter(), 0)

    five_xx = sum(n for code, n in counts.items() if code >= 500)
    summary = {
        "tool": f"schemathesis {_version(args.schemathesis)}",
        "target": "myriad serve --lmm none --no-ui --data-root <3 normal images> (token required), 127.0.0.1",
        "checks": CHECKS.split(","),
        "phases": ["examples", "coverage", "fuzzing"],
        "max_examples": args.max_examples,
        "seed": args.seed,
        "time_limit_s": args.time_limit,
        "timed_out": timed_out,
        "schemathesis_exit_code": exit_code,
        "requests": sum(counts.values()),
        "by_status": {str(k): counts[k] for k in sorted(counts)},
        "server_errors_5xx": five_xx,
        "failed_checks": failures,
        "server_log_tracebacks": server_log.count("Traceback"),
        "elapsed_s_rounded": round(elapsed),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve_fuzz.json").write_text(json.dumps(summary, indent=2) + "\n")
    tail = "\n".join(output.strip().splitlines()[-40:])
    rows = "\n".join(f"| {code} | {n} |" for code, n in summary["by_status"].items())
    (RESULTS / "serve_fuzz.md").write_text(
        f"# Fuzzing the server's OpenAPI schema\n\n"
        f"`benchmarks/serve/fuzz_api.py`: {summary['tool']} against {summary['target']}; phases "
        f"{', '.join(summary['phases'])}; at most {args.max_examples} examples per operation, seed {args.seed}, "
        f"time limit {args.time_limit:g} s{' (reached)' if timed_out else ''}.\n\n"
        f"**{summary['requests']} requests, {five_xx} answers 5xx, {summary['server_log_tracebacks']} tracebacks in the "
        f"server log, {failures} failed checks** (checks: {', '.join(summary['checks'])}).\n\n"
        f"| status | answers |\n|---|---|\n{rows}\n\n"
        f"schemathesis' own summary (exit code {exit_code}):\n\n```\n{tail}\n```\n"
    )
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
