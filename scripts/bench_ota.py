#!/usr/bin/env python3
"""OTA figures for docs/trust.md: time from command to active, inferences lost during swaps, time to roll back.

Method (loopback mosquitto started here, one real ``edgekit-agent run`` process with --trusted-keys, signed
bundles, labelled images fed into its watch directory at --rate per second the whole time):

1. start: from launching the agent with v1 until its ``meta`` is out; at the end --repeat restarts (SIGTERM,
   start again): what an update by restart costs, during which nothing is served;
2. --repeat OTA updates alternating v2 / v1 (``edgekit.fleet.deploy.deploy``; each a real change of bundle), each
   with a health window of --window seconds: transfer time, command → active (begin sent until the commit
   answer says the new bundle serves), the device's own switch time (interpreter swap), command → committed;
3. --repeat updates to a bundle that passes its self-test but fails the health window (labels rotated:
   accuracy collapses): the device's rollback time (``rollback.took_ms``) and when in the window it decided;
4. inferences lost: images written vs images served (moved to .processed) vs inferences reported ok in
   telemetry, plus images that failed (.failed), over all of the above.

Medians are reported with min/max; the side-by-side ratio is restart ÷ command → active.

Usage: .venv/bin/python scripts/bench_ota.py [--bundle DIR] [--repeat 5] [--window 4] [--rate 40] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # ota_support: the same helpers the OTA tests use


def build_bundle(out: Path) -> Path:
    from edgekit.build import build
    from edgekit.pipeline.data import write_digits

    dataset = write_digits(out / "digits").directory
    return build(dataset, ["raspberry-pi-4"], out / "bundles", epochs=2, seed=0).profiles[0].directory


def med(xs: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(xs), 3), "min": round(min(xs), 3), "max": round(max(xs), 3), "n": len(xs)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--bundle", type=Path, help="bundle directory to start from (default: build the digits demo, 2 epochs)"
    )
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--window", type=float, default=4.0, help="health window seconds")
    ap.add_argument("--rate", type=float, default=40.0, help="labelled images per second fed to the agent")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    from edgekit.fleet.deploy import deploy
    from edgekit.fleet.dev_broker import start_dev_broker
    from edgekit.package.keys import new_keypair

    from ota_support import AgentProc, Feeder, Observer, counted, make_variant, pending, served_ok, version_of

    work = Path(tempfile.mkdtemp(prefix="bench-ota-"))
    try:
        src = a.bundle or build_bundle(work / "build")
        key = new_keypair(work / "keys", "release")
        trusted = work / "trusted"
        trusted.mkdir()
        shutil.copyfile(key.public_path, trusted / key.public_path.name)
        labels = json.loads((src / "manifest.json").read_text())["labels"]
        variants = {}
        for name, version, lab in (
            ("v1", "1.0.0", None),
            ("v2", "2.0.0", None),
            ("bad", "2.0.0-bad", labels[1:] + labels[:1]),
        ):
            (work / name).mkdir()
            variants[name] = make_variant(src, work / name, version=version, key=key.private_path, labels=lab)
        archive_bytes = variants["v2"].stat().st_size
        good = {"window_s": a.window, "max_p99_ratio": 20.0, "max_accuracy_drop": 0.3}
        bad = {"window_s": a.window, "max_accuracy_drop": 0.3}

        with start_dev_broker(port=0, engine="mosquitto") as broker:
            obs = Observer(broker.url)
            agent = AgentProc("bench-ota", variants["v1"], broker.url, work, trusted)
            try:
                t = time.monotonic()
                agent.start(obs)
                cold = [time.monotonic() - t]
                updates, rollbacks = [], []
                with Feeder([agent.watch], rate_hz=a.rate) as feeder:
                    time.sleep(2.0)
                    for i in range(a.repeat):
                        target = "v2" if i % 2 == 0 else "v1"
                        (d,) = deploy(variants[target], [agent.device_id], broker.url, health=good, timeout=120).devices
                        if d.outcome != "committed":
                            raise SystemExit(f"update {i + 1} to {target} did not commit: {d.to_dict()}")
                        updates.append(d)
                        print(
                            f"update {i + 1} -> {target}: transfer {d.transfer_s:.3f} s, "
                            f"to active {d.activate_s:.3f} s "
                            f"(switch {d.commit['activated_ms']:.3f} ms), to committed {d.committed_s:.3f} s",
                            file=sys.stderr,
                        )
                    for i in range(a.repeat):
                        t = time.monotonic()
                        (d,) = deploy(variants["bad"], [agent.device_id], broker.url, health=bad, timeout=120).devices
                        if d.outcome != "rolled_back":
                            raise SystemExit(f"bad update {i + 1} did not roll back: {d.to_dict()}")
                        rollbacks.append((d, time.monotonic() - t))
                        print(
                            f"rollback {i + 1}: decided {d.rollback['after_s']:.3f} s into the window, "
                            f"took {d.rollback['took_ms']:.3f} ms",
                            file=sys.stderr,
                        )
                deadline = time.monotonic() + 30
                while pending(agent.watch) and time.monotonic() < deadline:
                    time.sleep(0.2)
                time.sleep(2.5)  # the last telemetry windows
                written = feeder.written[agent.watch]
                processed, failed = counted(agent.watch, ".processed"), counted(agent.watch, ".failed")
                reported = served_ok(obs, agent.device_id)
                restarts = []
                for _ in range(a.repeat):  # the alternative to an in-place swap: restart with the new bundle
                    agent.stop()
                    t = time.monotonic()
                    meta = agent.start(obs)
                    restarts.append(time.monotonic() - t)
                final_version = version_of(meta)
            finally:
                agent.stop()
                obs.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    result = {
        "archive_bytes": archive_bytes,
        "repeat": a.repeat,
        "health_window_s": a.window,
        "feed_rate_hz": a.rate,
        "first_start_s": med(cold),
        "restart_s": med(restarts),
        "transfer_s": med([d.transfer_s for d in updates]),
        "command_to_active_s": med([d.activate_s for d in updates]),
        "device_switch_ms": med([d.commit["activated_ms"] for d in updates]),
        "command_to_committed_s": med([d.committed_s for d in updates]),
        "rollback_took_ms": med([d.rollback["took_ms"] for d, _ in rollbacks]),
        "rollback_decided_after_s": med([d.rollback["after_s"] for d, _ in rollbacks]),
        "bad_deploy_total_s": med([s for _, s in rollbacks]),
        "images_written": written,
        "images_served": processed,
        "images_failed": failed,
        "inferences_reported_ok": reported,
        "inferences_lost": written - processed + failed,
        "swaps": 3 * a.repeat,  # each update switches once; each bad one switches and rolls back
        "version_after_restart": final_version,
    }
    result["ratio_restart_to_command_to_active"] = round(
        result["restart_s"]["median"] / result["command_to_active_s"]["median"], 2
    )
    if a.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"OTA on loopback mosquitto, one agent, archive {archive_bytes:,} B, "
        f"{a.repeat} updates + {a.repeat} rollbacks, "
        f"health window {a.window:g} s, {a.rate:g} labelled images/s (median [min..max]):"
    )
    for key in (
        "first_start_s",
        "restart_s",
        "transfer_s",
        "command_to_active_s",
        "device_switch_ms",
        "command_to_committed_s",
        "rollback_took_ms",
        "rollback_decided_after_s",
        "bad_deploy_total_s",
    ):
        v = result[key]
        print(f"  {key:28s} {v['median']:>10.3f}  [{v['min']:.3f} .. {v['max']:.3f}]")
    print(
        f"  restart / command->active     {result['ratio_restart_to_command_to_active']:>8.2f}x  "
        "(and a restart serves nothing meanwhile)"
    )
    print(
        f"  images written {written}, served {processed}, failed {failed}, reported ok {reported}: "
        f"{result['inferences_lost']} lost over {result['swaps']} swaps"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
