"""The ``edgekit-agent`` command: verify, benchmark and run a bundle on the device.

Subcommands are a table (``COMMANDS``): name → ("module:Class", help). Each class has
``add_arguments(parser)`` and ``run(args) -> ExitStatus``; its module is imported when the parser is built
(``run``, the MQTT agent, lives in :mod:`edgekit_agent.cli.run`). Output is plain text (no rich: the
device installs only numpy, Pillow and paho-mqtt); ``--json`` prints JSON on stdout.
An :class:`EdgekitError` becomes one ``error:`` line on stderr and its exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgekit_agent import __version__
from edgekit_agent.contract.errors import BundleError, EdgekitError, ExitStatus, InputError, exit_status_for

# name -> (target, one-line help). Order is the order of `edgekit-agent --help`.
COMMANDS: dict[str, tuple[str, str]] = {
    "verify": ("edgekit_agent.cli.app:Verify", "check a bundle's hashes (and signature) and run its self-test"),
    "bench": (
        "edgekit_agent.cli.app:Bench",
        "benchmark a bundle's model (benchmark_model style): latency, memory, runtime",
    ),
    "infer": (
        "edgekit_agent.cli.app:Infer",
        "classify input files (images, .wav, .csv) with a bundle: prediction, confidence, latency",
    ),
    "run": ("edgekit_agent.cli.run:Run", "serve a bundle and report telemetry over MQTT"),
}


# --- plain-text output -----------------------------------------------------------------------------------


def _numeric(v: str) -> bool:
    try:
        float(v.replace(",", ""))
    except ValueError:
        return False
    return True


def format_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> str:
    """A plain-text table: columns padded to their widest cell; a column of numbers is right-aligned."""
    cells = [[str(c) for c in row] + [""] * (len(columns) - len(row)) for row in rows]
    widths = [max([len(col)] + [len(r[i]) for r in cells]) for i, col in enumerate(columns)]
    right = [bool(cells) and all(_numeric(r[i]) or r[i] in ("", "-") for r in cells) for i in range(len(columns))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right)).rstrip()

    text = [title] if title else []
    text += [line(list(columns)), "  ".join("-" * w for w in widths)]
    text += [line(r) for r in cells]
    return "\n".join(text)


def print_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> None:
    print(format_table(columns, rows, title))


def print_json(data: Any) -> None:
    """Machine-readable output on stdout (nothing else goes to stdout with --json)."""
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def note(message: str) -> None:
    """Progress and remarks go to stderr so stdout stays clean for --json."""
    print(message, file=sys.stderr, flush=True)


# --- shared options and bundle opening --------------------------------------------------------------------


# --allow-unsigned means the same for every command: accept a bundle without manifest.sig, still checking a
# signed one against --trusted-keys (--require-signature wins). What differs is each command's default for an
# unsigned bundle, which its help states: a serving agent refuses one, the local tools serve nobody and check a
# signature only when asked to.
_UNSIGNED_LOCAL = "without it, an unsigned bundle is refused only with --trusted-keys or --require-signature"
_UNSIGNED_SERVING = "without it, run serves only bundles signed by a key in --trusted-keys"


def add_trust_arguments(parser: argparse.ArgumentParser, *, serving: bool) -> None:
    """The self-test and signature options of every command that loads a bundle. An unset flag is None, so
    ``run`` can tell it from a value in its config file (a given flag wins)."""
    given = {"action": "store_const", "const": True, "default": None}
    parser.add_argument(
        "--skip-selftest", help="skip the golden-sample self-test: outputs are not checked against the build", **given
    )
    parser.add_argument(
        "--trusted-keys",
        type=Path,
        metavar="DIR",
        help="directory of trusted *.pub keys: the bundle must be signed by one",
    )
    parser.add_argument("--require-signature", help="refuse unsigned bundles", **given)
    parser.add_argument(
        "--allow-unsigned",
        help="accept a bundle without a signature (a signed one is still checked against --trusted-keys); "
        + (_UNSIGNED_SERVING if serving else _UNSIGNED_LOCAL),
        **given,
    )


def add_bundle_arguments(parser: argparse.ArgumentParser) -> None:
    """BUNDLE plus the self-test and signature options of the local commands (verify, bench, infer)."""
    parser.add_argument("bundle", metavar="BUNDLE", type=Path, help="bundle directory or .tar.gz archive")
    add_trust_arguments(parser, serving=False)


def _count(minimum: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}")
        return value

    return parse


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=_count(1),
        metavar="N",
        help="interpreter threads (default: the bundle's profile, at most this machine's cores)",
    )
    parser.add_argument("--no-xnnpack", action="store_true", help="builtin kernels only (no XNNPACK delegate)")
    parser.add_argument(
        "--runtime",
        choices=("litert", "tflite_runtime", "tensorflow"),
        help="force an interpreter (default: the first that imports)",
    )


@contextmanager
def opened_bundle(args: argparse.Namespace) -> Iterator[Any]:
    """Load (and verify) ``args.bundle``; an archive is extracted into a temporary directory removed afterwards.

    Errors name the extracted copy (``WORK/NAME.XXXX/NAME``), which is gone by the time the user reads
    them: they are rewritten to name the archive the user gave (a member as ``ARCHIVE/member``).
    """
    from edgekit_agent.bundle.load import load_bundle

    with tempfile.TemporaryDirectory(prefix="edgekit-agent-") as work:
        extracted = re.compile(re.escape(work) + r"(?:/[^/\s]+){0,2}")
        try:
            yield load_bundle(
                args.bundle,
                trusted_keys=args.trusted_keys,
                require_signature=bool(args.require_signature),
                allow_unsigned=bool(args.allow_unsigned),
                workdir=Path(work),
            )
        except EdgekitError as exc:
            exc.args = tuple(extracted.sub(str(args.bundle), a) if isinstance(a, str) else a for a in exc.args)
            raise


# LiteRT (2.3) prints this from native code to file descriptor 2 whenever it builds an interpreter,
# whatever TF_CPP_MIN_LOG_LEVEL says: on a device it would open the output of every command.
NATIVE_NOTICES = frozenset({b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU."})


@contextmanager
def native_notices_dropped() -> Iterator[None]:
    """Send file descriptor 2 to a temporary file while native code runs, then pass on every line of it
    except :data:`NATIVE_NOTICES`: a real error or warning still shows. After a hard crash the file is
    left behind in the temporary directory (``edgekit-agent-native-*.log``)."""
    sys.stderr.flush()
    log = tempfile.NamedTemporaryFile(prefix="edgekit-agent-native-", suffix=".log", delete=False)
    terminal = os.dup(2)
    os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(terminal, 2)
        os.close(terminal)
        log.seek(0)
        kept = [line for line in log.read().splitlines(keepends=True) if line.rstrip() not in NATIVE_NOTICES]
        log.close()
        os.unlink(log.name)
        if kept:
            os.write(2, b"".join(kept))


def _build_runtime(bundle: Any, args: argparse.Namespace) -> Any:
    delegate = "none" if getattr(args, "no_xnnpack", False) else None
    return bundle.open_runtime(
        num_threads=getattr(args, "threads", None), delegate=delegate, engine=getattr(args, "runtime", None)
    )


def open_runtime(bundle: Any, args: argparse.Namespace) -> Any:
    with native_notices_dropped():
        return _build_runtime(bundle, args)


def selftest_or_skip(bundle: Any, runtime: Any, args: argparse.Namespace) -> Any:
    """The self-test result, or None with a note when --skip-selftest was given."""
    if args.skip_selftest:
        note("warning: self-test skipped (--skip-selftest): outputs are not checked against the workstation's")
        return None
    from edgekit_agent.bundle.selftest import run_selftest

    return run_selftest(bundle, runtime)


# --- subcommands ------------------------------------------------------------------------------------------


class Verify:
    """Check a bundle: every file's size and sha256, the model's structure, the signature when asked, and
    the self-test on the golden samples. Exit status 5 when the bundle is refused."""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_bundle_arguments(parser)
        add_runtime_arguments(parser)
        parser.add_argument("--json", action="store_true", help="print the result as JSON")

    @staticmethod
    def run(args: argparse.Namespace) -> ExitStatus:
        try:
            return Verify._verify(args)
        except BundleError as exc:
            # A refused directory still gets its per-file report (which files differ), then the error line.
            checks = Verify._file_report(args.bundle)
            if args.json:
                print_json(
                    {"ok": False, "error": str(exc), "files": [_check_dict(c) for c in checks] if checks else None}
                )
            elif checks:
                print_table(
                    ("file", "bytes", "sha256", "status", "detail"), (_check_row(c) + (c.detail,) for c in checks)
                )
            raise

    @staticmethod
    def _file_report(path: Path) -> list[Any] | None:
        from edgekit_agent.bundle.archive import verify_files
        from edgekit_agent.contract.manifest import MANIFEST_NAME, Manifest

        try:
            return verify_files(path, Manifest.load(path / MANIFEST_NAME)) if path.is_dir() else None
        except (EdgekitError, OSError):
            return None

    @staticmethod
    def _verify(args: argparse.Namespace) -> ExitStatus:
        from edgekit_agent.bundle.archive import verify_files

        with opened_bundle(args) as bundle:
            checks = verify_files(bundle.directory, bundle.manifest)
            runtime = open_runtime(bundle, args)
            try:
                result = selftest_or_skip(bundle, runtime, args)
            finally:
                runtime.close()
            m = bundle.manifest
            if args.json:
                print_json(
                    {
                        "bundle": {
                            "name": m.name,
                            "version": m.version,
                            "profile": m.profile_name,
                            "path": str(args.bundle),
                        },
                        "files": [_check_dict(c) for c in checks],
                        "signed_by": bundle.signed_by,
                        "runtime": runtime.info.to_dict(),
                        "selftest": result.to_dict() if result else None,
                        "ok": True,
                    }
                )
                return ExitStatus.OK
            print(f"bundle {m.name} {m.version} for {m.profile_name} ({args.bundle})")
            print_table(("file", "bytes", "sha256", "status"), (_check_row(c) for c in checks))
            signature = (
                "signed by key " + bundle.signed_by
                if bundle.signed_by
                else "not checked (unsigned or no --trusted-keys)"
            )
            print(f"signature: {signature}")
            info = runtime.info
            print(f"runtime: {info.engine} {info.version}, delegate {info.delegate}, {info.num_threads} threads")
            print(result.summary() if result else "self-test: skipped")
            print("verified: ok")
        return ExitStatus.OK


def _check_dict(c: Any) -> dict[str, Any]:
    return {"name": c.name, "status": str(c.status), "bytes": c.bytes, "sha256": c.sha256, "detail": c.detail}


def _check_row(c: Any) -> tuple[Any, ...]:
    return (c.name, "-" if c.bytes is None else c.bytes, (c.sha256 or "-")[:16], c.status)


class Bench:
    """Benchmark the bundle's model like TFLite's benchmark_model: init time, first inference, warm-up
    average, steady-state count/min/max/mean/std/p50/p90/p99 and memory, with the runtime that ran it."""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_bundle_arguments(parser)
        add_runtime_arguments(parser)
        parser.add_argument("--runs", type=_count(1), default=100, metavar="N", help="steady-state runs (default 100)")
        parser.add_argument("--warmup", type=_count(0), default=5, metavar="N", help="warm-up runs (default 5)")
        parser.add_argument(
            "--min-seconds", type=float, default=0.0, metavar="S", help="keep running until S seconds have passed"
        )
        parser.add_argument("--json", action="store_true", help="print the report as JSON")

    @staticmethod
    def run(args: argparse.Namespace) -> ExitStatus:
        from edgekit_agent.infer.benchmark import run_benchmark

        with opened_bundle(args) as bundle:
            with native_notices_dropped():  # outside the timing: its temporary file costs ~0.5 ms
                t0 = time.perf_counter_ns()
                runtime = _build_runtime(bundle, args)
                init_ms = (time.perf_counter_ns() - t0) / 1e6
            try:
                result = selftest_or_skip(bundle, runtime, args)
                m = bundle.manifest
                report = run_benchmark(
                    runtime,
                    warmup_runs=args.warmup,
                    num_runs=args.runs,
                    min_seconds=args.min_seconds,
                    init_ms=init_ms,
                    model_sha256=m.model.sha256,
                    model_name=f"{m.name} {m.version} ({m.profile_name})",
                )
            finally:
                runtime.close()
        if args.json:
            print_json({**report.to_dict(), "selftest": result.to_dict() if result else None})
        else:
            print_table(("quantity", "value"), report.rows(), title=f"benchmark of {args.bundle}")
            print(result.summary() if result else "self-test: skipped")
        return ExitStatus.OK


class Infer:
    """Classify input files with a bundle (images, WAV clips or CSV recordings, as the bundle takes): top-1
    label, confidence and latency (preprocess + invoke). An unreadable file is reported on its row; the exit
    status is then 3."""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_bundle_arguments(parser)
        add_runtime_arguments(parser)
        parser.add_argument(
            "files",
            metavar="FILE",
            type=Path,
            nargs="+",
            help="input files: images (PNG, JPEG, …) for an image bundle, .wav for audio, .csv for sensors",
        )
        parser.add_argument("--json", action="store_true", help="print the results as JSON")

    @staticmethod
    def run(args: argparse.Namespace) -> ExitStatus:
        from edgekit_agent.infer.classify import top1

        results: list[dict[str, Any]] = []
        with opened_bundle(args) as bundle:
            runtime = open_runtime(bundle, args)
            try:
                selftest_or_skip(bundle, runtime, args)
                pre = bundle.preprocessor()
                for file in args.files:
                    t0 = time.perf_counter_ns()
                    try:
                        x = pre(file)
                    except InputError as exc:
                        results.append({"file": str(file), "error": str(exc)})
                        continue
                    t1 = time.perf_counter_ns()
                    raw = runtime.invoke(x)
                    t2 = time.perf_counter_ns()
                    p = top1(raw, bundle.manifest)
                    results.append(
                        {
                            **p.to_dict(),
                            "file": str(file),
                            "preprocess_ms": (t1 - t0) / 1e6,
                            "invoke_ms": (t2 - t1) / 1e6,
                        }
                    )
            finally:
                runtime.close()
        failed = any("error" in r for r in results)
        if args.json:
            print_json(results)
        else:
            rows = [
                (
                    r["file"],
                    r["label"] or "(no label)",
                    f"{r['confidence']:.3f}",
                    f"{r['preprocess_ms']:.3f}",
                    f"{r['invoke_ms']:.3f}",
                )
                if "error" not in r
                else (r["file"], "-", "-", "-", "-")
                for r in results
            ]
            print_table(("file", "prediction", "confidence", "preprocess ms", "invoke ms"), rows)
        for r in results:
            if "error" in r:
                note(f"error: {r['error']}")
        return ExitStatus.BAD_INPUT if failed else ExitStatus.OK


# --- entry point ------------------------------------------------------------------------------------------


def _resolve(target: str) -> Any:
    """The command class named by ``target`` ("module:Class")."""
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgekit-agent",
        description="The edgekit device agent: verify, benchmark and serve a model bundle (no TensorFlow needed).",
    )
    parser.add_argument("--version", action="version", version=f"edgekit-agent {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (target, help_text) in COMMANDS.items():
        command = _resolve(target)
        p = sub.add_parser(name, help=help_text, description=(command.__doc__ or help_text).strip())
        command.add_arguments(p)
        p.set_defaults(_run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return int(ExitStatus.USAGE)
    try:
        return int(args._run(args))
    except EdgekitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return int(exc.exit_status)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return int(ExitStatus.INTERRUPTED)
    except BrokenPipeError:
        return int(ExitStatus.ERROR)
    except Exception as exc:  # noqa: BLE001 - one clear line instead of a traceback; --debug shows it
        if args.debug:
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)", file=sys.stderr)
        return int(exit_status_for(exc))


if __name__ == "__main__":
    sys.exit(main())
