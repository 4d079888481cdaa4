"""A real Prometheus for tests: Debian's binary started on a free loopback port with a generated config and a
temporary storage directory (never the system service), queried over its HTTP API."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from brokers import free_port


def binary(name: str) -> str | None:
    """``prometheus`` or ``promtool``: on PATH or where Debian's package puts them; None if not installed."""
    return shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None)


class Prometheus:
    """Scrapes ``targets`` (``host:port``) every ``interval`` and evaluates ``rule_files`` as often."""

    def __init__(
        self, workdir: Path, targets: Sequence[str], rule_files: Sequence[Path] = (), interval: str = "1s"
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.targets, self.rule_files, self.interval = list(targets), list(rule_files), interval
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = self.workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self) -> Path:
        conf = self.workdir / "prometheus.yml"
        doc = {
            "global": {"scrape_interval": self.interval, "evaluation_interval": self.interval},
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [
                {"job_name": "edgekit", "scrape_timeout": self.interval, "static_configs": [{"targets": self.targets}]}
            ],
        }
        conf.write_text(json.dumps(doc, indent=1))  # JSON is YAML
        return conf

    def start(self, timeout: float = 30.0) -> Prometheus:
        exe = binary("prometheus")
        if exe is None:
            raise RuntimeError(
                "prometheus is not installed: run scripts/test.sh (it installs it) or apt-get install prometheus"
            )
        cmd = [
            exe,
            f"--config.file={self.write_config()}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(
            f"prometheus was not ready on {self.port} within {timeout} s: {self.log.read_text()[-2000:]}"
        )

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
        with urllib.request.urlopen(url, timeout=10) as r:
            doc = json.load(r)
        if doc.get("status") != "success":
            raise RuntimeError(f"{url}: {doc}")
        return doc["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's vector (or a scalar as one sample without labels)."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def values(self, expr: str, by: str) -> dict[str, float]:
        """``{label value: sample value}`` of an instant query."""
        return {s["metric"].get(by, ""): float(s["value"][1]) for s in self.query(expr)}

    def alerts(self) -> list[dict[str, Any]]:
        return self.api("alerts")["alerts"]

    def wait_for(self, pred: Callable[[], bool], timeout: float, step: float = 0.5) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return True
            time.sleep(step)
        return pred()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
