"""The serving loop: a verified bundle, a watched directory and MQTT commands in; predictions and telemetry out.

``Agent(bundle, settings)`` can be used two ways:

- as a library (benchmarks, notebooks): :meth:`Agent.serve_tensor` / :meth:`Agent.serve_file` return a
  :class:`~edgekit_agent.infer.classify.Prediction` and record telemetry; nothing else runs;
- as the device agent: :meth:`Agent.run` opens the outbox and command store in ``data_dir``, connects the
  MQTT link, self-tests the bundle, publishes the retained ``meta``, then serves the watched directory
  and the ``cmd/*`` commands and closes a telemetry window every ``window_s`` until :meth:`request_stop`
  (SIGTERM/SIGINT in the CLI), when it flushes the last window and publishes the shutdown status.

Threads: the caller's (waits), the watcher, the window timer, the link worker, paho's loop and the
command worker. The interpreter is not thread-safe, so one lock guards set-input/invoke/get-output;
telemetry recording happens after that lock is released.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit_agent import __version__
from edgekit_agent.contract.errors import BusyError, EdgekitError, InputError, SelfTestError
from edgekit_agent.contract.limits import MAX_COMMAND_BYTES
from edgekit_agent.contract.topics import Schema, Topics
from edgekit_agent.infer.classify import Binary, MultiLabel, Prediction, TopOne, top_one, truth_index
from edgekit_agent.infer.preprocess import float_mean, quantize
from edgekit_agent.mqtt.commands import CommandProcessor, CommandStore
from edgekit_agent.mqtt.link import Link
from edgekit_agent.mqtt.outbox import Outbox
from edgekit_agent.ota.manager import OtaManager
from edgekit_agent.ota.target import RecorderFactory, Serving
from edgekit_agent.serve import sysinfo
from edgekit_agent.serve.config import AgentSettings
from edgekit_agent.serve.handlers import builtin_commands
from edgekit_agent.serve.journal import JournalRow, TelemetryJournal
from edgekit_agent.serve.telemetry import WindowRecorder
from edgekit_agent.serve.watcher import DirectoryWaker

if TYPE_CHECKING:
    from edgekit_agent.bundle.load import Bundle
    from edgekit_agent.bundle.selftest import SelfTestResult
    from edgekit_agent.contract.manifest import Manifest
    from edgekit_agent.infer.runtime import Runtime

log = logging.getLogger(__name__)

PROCESSED_DIR = ".processed"
FAILED_DIR = ".failed"
SETTLE_S = 0.05  # a file modified more recently may still be being written: next scan
MAX_SCAN = 256  # files per scan, so a flood of files cannot starve the window timer
# Watched files served per journal transaction, and the most time spent serving them while a window close waits.
JOURNAL_BATCH = 32
JOURNAL_BATCH_S = 0.05
_NAN = math.nan
_clock = time.perf_counter_ns
SMALL_INPUT = 128  # input mean as a sum of bytes up to this many int8/uint8 elements (numpy's sum above)
_INT8_SHIFT = bytes((u + 128) & 0xFF for u in range(256))  # an int8's byte → its value + 128
_new = tuple.__new__


def _hot_path(
    runtime: Runtime, decide: TopOne | Binary | MultiLabel, recorder: WindowRecorder, m: Manifest
) -> tuple[Any, ...]:
    """What :meth:`Agent.serve_tensor` needs per inference, looked up once per bundle, interpreter and recorder and
    swapped in one step (one tuple): the interpreter's bound set/invoke/get and tensor indices, the head's
    decision, the recorder's bound ``record``, the class names by index and the multi-label head (or None)."""
    interp = runtime.interpreter
    n_out = max(2, math.prod(m.outputs[0].shape))  # a sigmoid head's one output decides between 2 classes
    names = tuple(m.labels[i] if i < len(m.labels) else str(i) for i in range(max(n_out, len(m.labels))))
    return (
        interp.set_tensor,
        interp.invoke,
        interp.get_tensor,
        interp.get_input_details()[0]["index"],
        interp.get_output_details()[0]["index"],
        decide.index_confidence,
        recorder.record,
        names,
        decide if isinstance(decide, MultiLabel) else None,
    )


def _bundle_info(bundle: Bundle) -> dict[str, Any]:
    m = bundle.manifest
    return {
        "name": m.name,
        "version": m.version,
        "sha256": m.model.sha256,
        "profile": m.profile_name,
        "signed_by": getattr(bundle, "signed_by", None),
        "head": m.head.kind,  # multilabel: class counts are per label, accuracy is the exact-match rate
    }


class _Stale(Exception):
    """Another bundle became active between preprocessing and the interpreter lock: preprocess again."""


class Agent:
    """One bundle served on one device (see the module docstring); OTA updates it as an
    :class:`~edgekit_agent.ota.target.UpdateTarget`."""

    #: Builds the telemetry recorder of each activated bundle (OTA swaps in one that also keeps a health tally).
    recorder_factory: RecorderFactory = WindowRecorder

    def __init__(self, bundle: Bundle, settings: AgentSettings, *, runtime: Runtime | None = None) -> None:
        self.settings = settings
        self.boot_id = uuid.uuid4().hex[:16]
        self.topics = Topics(settings.device_id)
        self.started_mono = time.monotonic()
        self._rt_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._seen: set[tuple[str, int, int]] = set()  # processed='keep': files already served
        self._made: set[str] = set()  # .processed/.failed folders made by this run (one mkdir each, not per file)
        self._waker: DirectoryWaker | None = None  # once start() watches a directory
        self._settle_at = math.inf  # when the first file skipped as still being written settles (time.time())
        self.outbox: Outbox | None = None
        # Watched images are journaled before they are moved (serve/journal.py). The window lock makes "serve,
        # journal, move" one step for a window close; the put lock keeps other sequenced puts out of a close.
        self.journal: TelemetryJournal | None = None
        self._window_lock = threading.RLock()
        self._put_lock = threading.RLock()
        self._journal_down = False  # the journal could not be written (logged once per episode)
        self._switched_upto: int | None = None  # journal rows of the recorder an OTA switch just replaced
        self.link: Link | None = None
        self.commands: CommandProcessor | None = None
        self.selftest: SelfTestResult | None = None
        self.fatal: EdgekitError | None = None
        self.ota: OtaManager | None = None  # once start() ran
        self._gen = 0
        self._disk_full = False  # as last reported (disk_full / disk_ok events)
        self._install(bundle, runtime or bundle.open_runtime(num_threads=settings.num_threads), None)

    # --- the model ------------------------------------------------------------------------------------------
    def activate(self, bundle: Bundle, runtime: Runtime, selftest: SelfTestResult | None = None) -> Serving:
        """Make ``bundle`` (already verified) with its ``runtime`` the one being served, with a new telemetry
        recorder and ``selftest`` as its self-test result; returns what it replaced (whose runtime stays open:
        an OTA rollback puts it back).

        Everything is built first (the preprocessor can still refuse the bundle: nothing has changed then) and
        swapped in one step under the interpreter lock; the generation counter moves last, so a request that
        read the new generation sees only the new bundle's state (see :meth:`_serve_floats`)."""
        with self._window_lock:
            replaced = self._install(bundle, runtime, selftest)
            self._switched_upto = self.journal.last_id() if self.journal else None
        assert replaced is not None  # the constructor installed the first bundle
        return replaced

    def _install(self, bundle: Bundle, runtime: Runtime, selftest: SelfTestResult | None) -> Serving | None:
        """:meth:`activate`; returns None on the constructor's call, when nothing was served yet."""
        m = bundle.manifest
        preprocessor = bundle.preprocessor()
        in_t = m.inputs[0]
        decide = top_one(m)  # the manifest's head: the largest of N outputs, or one sigmoid output
        recorder = self._new_recorder(bundle, runtime)
        with self._rt_lock:
            replaced = Serving(self.bundle, self.runtime, self.recorder, self.selftest) if self._gen else None
            self.bundle, self.manifest, self.runtime, self.preprocessor, self.recorder = (
                bundle,
                m,
                runtime,
                preprocessor,
                recorder,
            )
            self.selftest = selftest
            self.labels = m.labels
            self.label_index = truth_index(m)  # a label set's bit mask for a multi-label head
            self._in_tensor = in_t
            self._in_scale, self._in_zero = float(in_t.scale or 0.0), int(in_t.zero_point)
            self._decide = decide
            self._n_tensor = 0
            self._hot = _hot_path(runtime, decide, recorder, m)
            self._gen += 1
        return replaced

    def _new_recorder(self, bundle: Bundle, runtime: Runtime) -> WindowRecorder:
        m = bundle.manifest
        return self.recorder_factory(
            m.labels,
            m.reference,
            bundle=_bundle_info(bundle),
            runtime=runtime.info.to_dict(),
            multilabel=m.head.kind == "multilabel",
        )

    def use_recorder(self, factory: RecorderFactory) -> None:
        """Build every bundle's telemetry recorder with ``factory`` from now on, the current one's too (what it
        recorded so far is dropped: OTA calls this before serving starts)."""
        self.recorder_factory = factory
        with self._rt_lock:
            self.recorder = self._new_recorder(self.bundle, self.runtime)
            self._hot = _hot_path(self.runtime, self._decide, self.recorder, self.manifest)

    def swap_runtime(self, runtime: Runtime, bundle: Bundle | None = None) -> bool:
        """Serve the same bundle with another interpreter (e.g. other threads); the old one is closed.

        With ``bundle`` (the one ``runtime`` was opened for), nothing happens when another bundle became
        active meanwhile (an OTA switch or rollback): ``runtime`` is closed and False returned."""
        with self._rt_lock:
            if bundle is not None and bundle is not self.bundle:
                old = None
            else:
                hot = _hot_path(runtime, self._decide, self.recorder, self.manifest)
                old, self.runtime, self._hot = self.runtime, runtime, hot
                self.recorder.runtime = runtime.info.to_dict()
        if old is None:
            runtime.close()
            return False
        old.close()
        return True

    def bundle_info(self) -> dict[str, Any]:
        return _bundle_info(self.bundle)

    # --- serving (the hot path) -------------------------------------------------------------------------------
    def serve_tensor(
        self,
        x: np.ndarray,
        *,
        label: int = -1,
        input_mean: float | None = None,
        _t0: int | None = None,
        _gen: int | None = None,
    ) -> Prediction:
        """Infer one ready input tensor (the model's input shape and dtype) and record telemetry.

        ``label`` ≥ 0 is the true class (feeds accuracy). ``input_mean`` is the mean of the float input
        before quantisation; when None it is derived from ``x`` on every ``drift_every``-th call.
        """
        t1 = _clock()
        try:
            with self._rt_lock:
                if _gen is not None and _gen != self._gen:
                    raise _Stale
                set_tensor, invoke, get_tensor, in_index, out_index, decide, record, names, multi = self._hot
                set_tensor(in_index, x)
                invoke()
                out = get_tensor(out_index)
                t2 = _clock()
                # Under the lock too: an OTA switch right after invoke() must not pair this output with the
                # next bundle's output scale, labels or telemetry window (all of them are in ``_hot``).
                index, confidence = decide(out)
        except _Stale:
            raise
        except ValueError as exc:  # set_tensor: wrong shape or dtype
            self.recorder.record_error("INPUT_INVALID")
            raise InputError(
                f"input tensor {getattr(x, 'dtype', '?')}{list(getattr(x, 'shape', []))} does not fit the model "
                f"({self.runtime.input_dtype}{list(self.runtime.input_shape)}): {exc}"
            ) from None
        except Exception:
            self.recorder.record_error("RUNTIME")
            raise
        if input_mean is None:
            n = self._n_tensor = self._n_tensor + 1
            input_mean = _NAN if n % self.settings.drift_every else self._input_mean(x)
        t3 = _clock()
        t0 = t1 if _t0 is None else _t0
        record(t3 - t0, t1 - t0, t2 - t1, index, confidence, label, input_mean)
        if multi is not None:
            return multi.prediction(out, index, confidence, (t3 - t0) / 1e6, (t1 - t0) / 1e6, (t2 - t1) / 1e6)
        # tuple.__new__ is what Prediction(...) calls, less one Python frame (see the named tuple's docstring)
        return _new(
            Prediction, (index, names[index], confidence, (t3 - t0) / 1e6, (t1 - t0) / 1e6, (t2 - t1) / 1e6, None, None)
        )

    def _input_mean(self, x: np.ndarray) -> float:
        """The mean of the float input ``x`` quantises (the drift statistic), on 1 in ``drift_every`` tensors.

        An integer sum is 3-4x cheaper than ndarray.mean() (which converts to float64 first); int32 cannot
        overflow below 2**24 int8/uint8 elements. Up to :data:`SMALL_INPUT` bytes, the sum of the bytes (int8
        shifted to 0..255) is 3x cheaper still than numpy's; both sums are exact, so the mean is the same."""
        if x.dtype.itemsize == 1 and x.dtype.kind in "iu" and x.size <= SMALL_INPUT:
            raw = x.tobytes()
            q = (sum(raw.translate(_INT8_SHIFT)) - 128 * x.size if x.dtype.kind == "i" else sum(raw)) / x.size
        elif x.dtype.kind in "iu":
            q = int(x.sum(dtype=np.int32 if x.size < 1 << 24 else np.int64)) / x.size
        else:
            q = float(x.mean())
        return (q - self._in_zero) * self._in_scale if self._in_scale else q

    def serve_file(self, source: str | Path | bytes, *, label: int = -1, label_name: str | None = None) -> Prediction:
        """Preprocess an input file (path or its bytes: an image, a WAV clip or a CSV recording, as the active
        bundle takes) per the manifest and serve it.

        ``label_name`` (one of the bundle's labels) is resolved against the bundle that serves the file, which
        an OTA switch may change while it is being preprocessed; ``label`` is a class index of the current one."""
        return self._serve_floats(lambda pre: pre.floats(source), label, label_name)

    def serve_samples(self, samples: Any, *, label_name: str | None = None) -> Prediction:
        """Serve raw samples: a mono waveform at the bundle's rate (audio), rows × channels (sensors) or pixel rows
        (images), through the bundle's preprocessor as a file's would be (InputError when they do not fit)."""
        return self._serve_floats(lambda pre: pre.from_raw(samples), -1, label_name)

    def serve_array(self, x: Any, *, label_name: str | None = None) -> Prediction:
        """Serve a float array of the model's input shape (with or without the batch axis of 1) already
        normalised per the manifest: the ``infer`` command's tensor (an image's H×W×C, a clip's log-mel features,
        a sensor window). Values that are not finite numbers are refused (InputError)."""
        try:
            a = np.asarray(x, dtype=np.float32)
        except (ValueError, TypeError):
            raise InputError("the tensor must be a nested list of numbers (the model's input, preprocessed).") from None
        if a.ndim == len(self._in_tensor.shape) and a.shape[0] == 1:
            a = a[0]
        if not np.isfinite(a).all():
            self.recorder.record_error("INPUT_INVALID")
            raise InputError("the tensor holds values that are not finite numbers (inf or NaN, or beyond float32).")
        mean = float(a.mean()) if a.size else math.nan
        return self._serve_floats(lambda pre: pre.from_array(a), -1, label_name, quantized=True, input_mean=mean)

    def _serve_floats(
        self,
        make: Callable[[Any], np.ndarray],
        label: int,
        label_name: str | None,
        *,
        quantized: bool = False,
        input_mean: float | None = None,
    ) -> Prediction:
        """Preprocess with the active bundle's preprocessor, then serve, provided that bundle is still the active
        one when the interpreter lock is taken; otherwise preprocess again for the new one (an OTA switch)."""
        t0 = time.perf_counter_ns()
        for _ in range(3):
            gen = self._gen  # read first: _activate moves it last
            pre, spec, index = self.preprocessor, self._in_tensor, self.label_index
            try:
                arr = make(pre)
            except InputError:
                self.recorder.record_error("INPUT_INVALID")
                raise
            if quantized:
                x, mean = arr, input_mean
            else:
                x, mean = quantize(arr, spec)[None, ...], float_mean(arr)
            lab = index.get(label_name, -1) if label_name is not None else label
            try:
                return self.serve_tensor(x, label=lab, input_mean=mean, _t0=t0, _gen=gen)
            except _Stale:
                continue
        raise BusyError(
            f"{self.settings.device_id}: the bundle changed three times while one input was being served; try again."
        )

    # --- the watched directory ----------------------------------------------------------------------------------
    def _candidates(self, root: Path) -> list[tuple[str, str | None, str]]:
        """(path, label folder name or None, file name) of at most :data:`MAX_SCAN` input files ready to serve,
        in path order: files directly in ``root`` and in ``root/LABEL/``; hidden names skipped. The label name
        becomes a class index only when the file is served: an OTA switch in between changes the labels.

        Only names are listed; a file is stat'ed (settled? served already, in keep mode?) when its turn comes,
        so a folder of thousands costs one listing per batch, not a stat of every file. A directory is watched
        before it is listed: a file landing after the listing wakes the loop (:class:`DirectoryWaker`).
        Sets ``_settle_at``, when the first file skipped as still being written may be served."""
        watch = self._waker.watch if self._waker is not None else None
        names: list[tuple[tuple[str, ...], os.DirEntry[str], str | None]] = []
        suffixes = self.preprocessor.suffixes  # the active bundle's kind of input: images, .wav or .csv

        def listed(entry: os.DirEntry[str], key: tuple[str, ...], label: str | None) -> None:
            if not entry.name.startswith(".") and entry.name.lower().endswith(suffixes):
                names.append((key, entry, label))

        try:
            if watch is not None:
                watch((str(root),))
            with os.scandir(root) as top:
                for entry in top:
                    name = entry.name
                    if name.startswith("."):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        if watch is not None:
                            watch((entry.path,))
                        with os.scandir(entry.path) as sub:
                            for e in sub:
                                if e.is_file(follow_symlinks=False):
                                    listed(e, (name, e.name), name)
                    elif entry.is_file(follow_symlinks=False):
                        listed(entry, (name,), None)
        except OSError as exc:
            log.warning("%s: cannot scan %s: %s", self.settings.device_id, root, exc)
        names.sort(key=lambda n: n[0])  # the order of the paths' parts, as before: ordering is documented
        found: list[tuple[str, str | None, str]] = []
        keep = self.settings.processed == "keep"
        now, settle_at = time.time(), math.inf
        for _, entry, label in names:
            try:
                st = entry.stat()
            except OSError:
                continue
            if now - st.st_mtime < SETTLE_S:
                settle_at = min(settle_at, st.st_mtime + SETTLE_S)
                continue
            if keep and (entry.path, st.st_mtime_ns, st.st_size) in self._seen:
                continue
            found.append((entry.path, label, entry.name))
            if len(found) == MAX_SCAN:
                break
        self._settle_at = settle_at
        return found

    def scan_once(self) -> int:
        """Serve every new input file in the watched directory once; returns how many were handled."""
        root = self.settings.watch_dir
        if root is None:
            return 0
        found = self._candidates(root)
        handled, i = 0, 0
        while i < len(found) and not self._stop.is_set():  # shutting down: the rest waits for the next start
            with self._window_lock:  # no window closes between the counts and the moves
                done: list[tuple[str, str | None, str, Prediction | None, str | None]] = []
                until = time.monotonic() + JOURNAL_BATCH_S
                while i < len(found) and len(done) < JOURNAL_BATCH and not self._stop.is_set():
                    path, label_name, name = found[i]
                    i += 1
                    if not name.lower().endswith(self.preprocessor.suffixes):
                        continue  # listed for a bundle of another kind, switched since: it waits for one again
                    done.append((path, label_name, name, *self._serve_file(path, label_name)))
                    if time.monotonic() > until:
                        break
                self._mark_done(root, done)
            handled += len(done)
        return handled

    def _serve_file(self, path: str, label_name: str | None) -> tuple[Prediction | None, str | None]:
        """Serve one watched file: its prediction, or the error code counted for it."""
        try:
            return self.serve_file(path, label_name=label_name), None
        except InputError as exc:
            log.warning("%s: %s", self.settings.device_id, exc)
            return None, "INPUT_INVALID"
        except Exception:  # noqa: BLE001 - one bad file must not stop the agent
            log.exception("%s: serving %s failed", self.settings.device_id, path)
            return None, "RUNTIME"

    def _journal(self, rows: list[JournalRow]) -> None:
        """Journal served images before their moves, in one transaction (one SQLite commit per image would cost
        as much as a small model's inference). While the disk is full the journal stands aside (it would compete
        with the outbox for the last bytes): the images are then counted in memory only, as without a journal,
        and a crash meanwhile loses the open window (docs/agent.md, "Full disk")."""
        if self.journal is None or self._disk_full or not rows:
            return
        try:
            self.journal.append_many(rows)
        except EdgekitError as exc:
            self._journal_failed(exc)
        else:
            self._journal_ok()

    def _journal_failed(self, exc: EdgekitError) -> None:
        """Say once per episode that the journal cannot be written, not once per image."""
        if not self._journal_down:
            self._journal_down = True
            log.warning(
                "%s: %s; images are counted in memory only until it can be written again", self.settings.device_id, exc
            )

    def _journal_ok(self) -> None:
        if self._journal_down:
            self._journal_down = False
            log.warning("%s: the telemetry journal is written again", self.settings.device_id)

    def _mark_done(self, root: Path, done: list[tuple[str, str | None, str, Prediction | None, str | None]]) -> None:
        """Journal the served files, then move (or delete) them: a crash in between is finished at the next start
        (serve/journal.py); a crash before the journal commit serves them again, counted once."""
        mode = self.settings.processed
        if mode == "keep":
            for path, *_ in done:
                self._remember(path)
            return
        moves: list[tuple[str, str | None, str | None]] = []
        rows: list[JournalRow] = []
        now = int(time.time() * 1000)
        for path, label, name, pred, code in done:
            ok = code is None
            folder = target = None
            if not (mode == "delete" and ok):  # move, and failures in delete mode (kept for inspection)
                folder = os.path.join(root, PROCESSED_DIR if ok else FAILED_DIR, *((label,) if label else ()))
                try:
                    target = self._free_name(folder, name)
                except OSError as exc:
                    self._not_marked(path, exc)
                    continue
            moves.append((path, folder, target))
            record = None
            if pred is not None:
                ns = [round((v or 0.0) * 1e6) for v in (pred.latency_ms, pred.preprocess_ms, pred.invoke_ms)]
                record = (*ns, pred.index, pred.confidence, self.label_index.get(label, -1) if label else -1)
            rows.append((now, Path(path), None if target is None else Path(target), record, code))
        self._journal(rows)
        for path, folder, target in moves:
            try:
                if target is None:
                    os.unlink(path)
                else:
                    assert folder is not None
                    self._move(path, folder, target)
            except OSError as exc:
                self._not_marked(path, exc)

    def _not_marked(self, path: str, exc: OSError) -> None:
        # Could not move it: remember it instead, so it is not served again in a loop.
        log.warning(
            "%s: cannot mark %s as processed (%s); remembering it in memory", self.settings.device_id, path, exc
        )
        self._remember(path)

    def _remember(self, path: str) -> None:
        try:
            st = os.stat(path)
        except OSError:
            return
        self._seen.add((path, st.st_mtime_ns, st.st_size))

    def _free_name(self, folder: str, name: str) -> str:
        """``folder/name``, or ``name`` with a random tag when that is taken (made once per folder per run)."""
        if folder not in self._made:
            os.makedirs(folder, exist_ok=True)
            self._made.add(folder)
        target = os.path.join(folder, name)
        if os.path.lexists(target):
            stem, suffix = os.path.splitext(name)
            target = os.path.join(folder, f"{stem}.{uuid.uuid4().hex[:6]}{suffix}")
        return target

    def _move(self, path: str, folder: str, target: str) -> None:
        """Rename ``path`` to ``target`` (same file system under the watched root: a rename, which the journal's
        recovery can repeat)."""
        try:
            os.rename(path, target)
        except FileNotFoundError:
            if not os.path.lexists(path):
                raise
            os.makedirs(folder, exist_ok=True)  # someone emptied .processed meanwhile
            os.rename(path, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:  # .processed on another file system (a mount point): copy and delete
                raise
            shutil.move(path, target)

    def _watch_loop(self) -> None:
        waker = self._waker
        assert waker is not None  # start() made it
        while not self._stop.is_set():
            if self.scan_once() == 0:
                # A file still being written is due at _settle_at: wait for that, not for the whole poll.
                waker.wait(min(self.settings.poll_s, max(0.0, self._settle_at - time.time())))

    # --- windows, meta and events -----------------------------------------------------------------------------
    def envelope(self, schema: str) -> dict[str, Any]:
        """The envelope fields the agent owns (the outbox adds ``epoch`` and ``seq``)."""
        return {
            "schema": schema,
            "device_id": self.settings.device_id,
            "boot_id": self.boot_id,
            "ts": int(time.time() * 1000),
            "agent_version": __version__,
        }

    def publish(
        self,
        topic: str,
        body: dict[str, Any],
        *,
        retain: bool = False,
        priority: int = 0,
        correlation: bytes | None = None,
        sequenced: bool = True,
        expendable: bool = False,
    ) -> None:
        """Queue ``body`` (with the envelope) in the outbox for ``topic``; a no-op before :meth:`start`.
        ``expendable`` (telemetry): the first to go when the outbox or the disk is full."""
        if self.outbox is None:
            return
        msg = self.envelope(body.get("schema", "edge.unknown/1"))
        msg.update(body)
        with self._put_lock:
            self.outbox.put(
                topic,
                msg,
                retain=retain,
                priority=priority,
                correlation=correlation,
                sequenced=sequenced,
                expendable=expendable,
            )
        if self.link is not None:
            self.link.wake()

    def _window_body(self, recorder: WindowRecorder) -> dict[str, Any]:
        outbox = self.outbox.stats().to_dict() if self.outbox else {}
        if self.link is not None:
            outbox["refused"] = self.link.stats().refused
        return recorder.snapshot_and_reset(system=sysinfo.system_stats(), outbox=outbox)

    def flush_window(self) -> dict[str, Any]:
        """Close the telemetry window now, queue it for sending, and return its body."""
        with self._window_lock:
            body = self._window_body(self.recorder)
            self._store_window(body)
        return body

    def _store_window(self, body: dict[str, Any], upto: int | None = None) -> None:
        """Queue a window and trim the journal rows it counts (up to ``upto``, default all) as one recoverable step
        (serve/journal.py). If the outbox refuses it, those images are carried into the open window."""
        journal, outbox = self.journal, self.outbox
        if journal is None or outbox is None:
            self.publish(self.topics.telemetry, body, expendable=True)
            return
        with self._put_lock:
            stats = outbox.stats()
            try:
                journal.begin_close(stats.epoch, stats.next_seq, upto)
            except EdgekitError as exc:  # a full disk: the window goes to the outbox (its memory lane) all the same
                self._journal_failed(exc)
                self.publish(self.topics.telemetry, body, expendable=True)
                return
            try:
                self.publish(self.topics.telemetry, body, expendable=True)
            except Exception:
                for r in journal.abort_close():
                    if r.error is None:
                        self.recorder.record(*r.as_record())
                    else:
                        self.recorder.record_error(r.error)
                raise
        try:
            journal.end_close()
        except EdgekitError as exc:  # the marker stays: the next start sees the window reached the outbox
            self._journal_failed(exc)

    def _recover_journal(self) -> None:
        """Finish the moves a crash interrupted and publish the images journaled since the last stored window as
        one window marked ``recovered`` (before anything else is published: see serve/journal.py)."""
        assert self.journal is not None and self.outbox is not None
        stats = self.outbox.stats()
        found = self.journal.recover(stats.epoch, stats.next_seq)
        if not found.records:
            return
        recorder = WindowRecorder(
            self.labels, self.manifest.reference, multilabel=self.manifest.head.kind == "multilabel"
        )
        for r in found.records:
            if r.error is None:
                recorder.record(*r.as_record())
            else:
                recorder.record_error(r.error)
        body = self._window_body(recorder)
        start, end = found.records[0].ts_ms, found.records[-1].ts_ms
        body.update(
            bundle=self.bundle_info(),
            runtime=self.runtime.info.to_dict(),
            window={"start": start, "end": end, "duration_s": round((end - start) / 1000, 3)},
            throughput_ips=None,  # the agent died mid-window: no rate can be told
            recovered=True,
        )
        try:
            with self._window_lock:
                self._store_window(body)
        except EdgekitError as exc:  # a full disk: the images were carried into the first window
            log.error(
                "%s: cannot queue the recovered window (%s); it goes with the next one", self.settings.device_id, exc
            )
            return
        log.warning(
            "%s: recovered %d images counted before a crash (%d moves finished); published as a recovered window",
            self.settings.device_id,
            len(found.records),
            found.moves_finished,
        )

    def report_window(self, recorder: WindowRecorder) -> None:
        """Publish what ``recorder`` (of a bundle just replaced by :meth:`activate`) holds, so no served inference
        goes unreported; nothing when it recorded nothing.

        An inference that ran on the old interpreter but records after the switch lands in the new window
        (attributed to the new bundle, but counted). Never raises: the switch has happened, and a lost window
        must not undo its bookkeeping."""
        try:
            with self._window_lock:
                upto, self._switched_upto = self._switched_upto, None
                body = self._window_body(recorder)
                if body["counts"]["requests"] or body["counts"]["dropped"]:
                    self._store_window(body, upto)
        except Exception as exc:  # noqa: BLE001 - see the docstring
            log.warning("%s: the last window of the replaced bundle is lost: %s", self.settings.device_id, exc)

    def event(self, kind: str, **details: Any) -> None:
        """Publish an ``events`` message (bundle_activated, selftest_failed, config_applied, error, …).

        Never raises: an event that cannot be queued (a full disk) is logged; the state change it reports has
        happened and must finish (an OTA switch, a rollback)."""
        try:
            self.publish(self.topics.events, {"schema": Schema.EVENT, "event": kind, **details})
        except EdgekitError as exc:
            log.error("%s: cannot queue the %s event: %s", self.settings.device_id, kind, exc)

    def meta(self) -> dict[str, Any]:
        s = self.settings
        bundle = self.bundle_info()
        return {
            "schema": Schema.META,
            "hardware": sysinfo.system_info().to_dict(),
            "runtime": self.runtime.info.to_dict(),
            "bundle": bundle,
            "bundles": self.ota.installed()
            if self.ota
            else [{**bundle, "active": True, "directory": str(self.bundle.directory)}],
            "capabilities": {
                "commands": self.commands.names if self.commands else [],
                "inputs": ["watch", "infer"],
                # what `infer` and the watched folder take: the kind of the active bundle's input and its files
                "input": {"kind": self.manifest.preprocess.kind, "suffixes": list(self.preprocessor.suffixes)},
                "max_command_bytes": MAX_COMMAND_BYTES,
            },
            "config": {
                "window_s": s.window_s,
                "num_threads": self.runtime.info.num_threads,
                "drift_every": s.drift_every,
                "watch_dir": str(s.watch_dir) if s.watch_dir else None,
                "processed": s.processed,
            },
            "broker": s.broker.url if s.broker else None,
            # "5" or "3.1.1" as negotiated (auto may fall back); None until connected (every connect republishes meta).
            "mqtt_version": self.link.mqtt_version if self.link and self.link.connected.is_set() else None,
            "selftest": self.selftest.to_dict() if self.selftest is not None else None,
        }

    def publish_meta(self) -> None:
        """Queue the retained ``meta`` (never raises: a full disk is logged, serving goes on)."""
        try:
            self.publish(self.topics.meta, self.meta(), retain=True)
        except EdgekitError as exc:
            log.error("%s: cannot queue meta: %s", self.settings.device_id, exc)

    def check_disk(self) -> None:
        """Report a change of the outbox's disk state once: a ``disk_full`` or ``disk_ok`` event, and the
        retained ``status`` again (its ``disk_full`` field). The outbox retries what the disk refused here."""
        if self.outbox is None:
            return
        why = self.outbox.check_disk()
        if (why is not None) == self._disk_full:
            return
        self._disk_full = why is not None
        stats = self.outbox.stats()
        if why is not None:
            log.error("%s: %s; serving on, dropping the oldest telemetry first", self.settings.device_id, why)
            self.event("disk_full", reason=why, data_dir=str(self.settings.data_dir), dropped=stats.dropped)
        else:
            log.warning("%s: disk space is back", self.settings.device_id)
            self.event("disk_ok", data_dir=str(self.settings.data_dir), dropped=stats.dropped)
        if self.link is not None and self.link.connected.is_set():
            self.link.announce()

    def _window_loop(self) -> None:
        next_at = time.monotonic() + self.settings.window_s
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            try:
                self.check_disk()
                self.flush_window()
            except Exception:  # noqa: BLE001 - a full disk must not stop serving; the log says so
                log.exception("%s: cannot close the telemetry window", self.settings.device_id)
            # Fixed schedule (the flush's own time does not accumulate); a changed window_s applies from now.
            now, window = time.monotonic(), self.settings.window_s
            next_at += window
            if not now < next_at <= now + window:
                next_at = now + window

    # --- running ------------------------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask :meth:`run` to finish (safe from a signal handler)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """True once :meth:`request_stop` (or :meth:`shutdown`) was called."""
        return self._stop.is_set()

    def start(self) -> None:
        """Open storage, connect, self-test, publish meta, start the watcher and the window timer."""
        s = self.settings
        self.outbox = Outbox(
            s.data_dir / "outbox.sqlite", max_messages=s.outbox_max, max_bytes=int(s.outbox_max_mb * 1024 * 1024)
        )
        if s.watch_dir is not None and s.processed != "keep":  # kept files are served again after a restart anyway
            self.journal = TelemetryJournal(s.data_dir / "journal.sqlite")
            self._recover_journal()
        self.commands = CommandProcessor(s.device_id, self.respond, CommandStore(s.data_dir / "commands.sqlite"))
        for spec in builtin_commands(self):
            self.commands.register(spec)
        self.ota = OtaManager(self)  # swap_bundle: OTA with self-test, health window and rollback
        self.commands.register(self.ota.command_spec())
        self.commands.on_busy = lambda cmd: self.recorder.record_dropped() if cmd.name == "infer" else None
        if s.broker is not None:
            # meta is retained state: sent again on every (re)connect, so a broker restarted without
            # persistence, or an outage long enough for the outbox bound to drop it, cannot lose it.
            self.link = Link(
                s.broker, s.device_id, self.boot_id, self.outbox, self.commands.submit, on_connected=self.publish_meta
            )
            self.link.start()
        if not s.skip_selftest:
            self._selftest()
        self.commands.start()
        self.publish_meta()
        self.event("bundle_activated", bundle=self.bundle_info(), selftest=self.meta()["selftest"])
        self.ota.publish_pending_events()
        self.check_disk()  # a disk already full at start is reported now, not a window later
        if s.watch_dir is not None:
            self._waker = DirectoryWaker()
        for target, name in ((self._window_loop, "edgekit-window"), (self._watch_loop, "edgekit-watch")):
            if target == self._watch_loop and s.watch_dir is None:
                continue
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def _selftest(self) -> None:
        from edgekit_agent.bundle.selftest import run_selftest

        try:
            with self._rt_lock:
                self.selftest = run_selftest(self.bundle, self.runtime)
        except SelfTestError as exc:
            self.event("selftest_failed", bundle=self.bundle_info(), message=str(exc))
            raise

    def run(self, *, until: Callable[[], bool] | None = None) -> None:
        """:meth:`start`, serve until :meth:`request_stop` (or ``until()`` is true), then :meth:`shutdown`.

        Raises :class:`BrokerError` when the broker refused the credentials.
        """
        try:
            self.start()
            while not self._stop.wait(0.1):
                if self.link is not None and self.link.failed.is_set():
                    self.fatal = self.link.fatal
                    break
                if until is not None and until():
                    break
        finally:
            self.shutdown()
        if self.fatal is not None:
            raise self.fatal

    def shutdown(self, *, flush_timeout: float = 5.0) -> None:
        """Stop serving, cancel queued commands, send the last window, publish ``offline``/``shutdown``, close."""
        self._stop.set()
        if self._waker is not None:
            self._waker.interrupt()
        for t in self._threads:
            t.join(timeout=10)
        self._threads.clear()
        if self._waker is not None:
            self._waker.close()
            self._waker = None
        if self.commands is not None:
            self.commands.close(timeout=flush_timeout)
        if self.outbox is not None:
            try:
                self.flush_window()
            except Exception as exc:  # noqa: BLE001 - whatever happened, the shutdown status must still go out
                log.error("%s: the last telemetry window is lost: %s", self.settings.device_id, exc)
        if self.link is not None:
            if self.outbox is not None and self.outbox.depth and not self.link.failed.is_set():
                self.link.connected.wait(min(2.0, flush_timeout))  # e.g. a self-test failure right after start
            if self.link.connected.is_set() and not self.link.flush(flush_timeout):
                log.warning(
                    "%s: %d messages stay in the outbox for the next start",
                    self.settings.device_id,
                    self.outbox.depth if self.outbox else 0,
                )
            self.link.close()
            self.link = None
        if self.commands is not None:
            self.commands.store.close()
            self.commands = None
        if self.outbox is not None:
            self.outbox.close()
            self.outbox = None
        if self.journal is not None:
            self.journal.close()
            self.journal = None

    # --- commands ----------------------------------------------------------------------------------------------
    def respond(self, topic: str, body: dict[str, Any], correlation: bytes | None) -> None:
        """Queue a command answer: answers overtake the telemetry backlog (priority) and carry their own
        identity (cmd_id, state), so they are not sequenced."""
        self.publish(topic, body, priority=1, correlation=correlation, sequenced=False)


__all__ = ["Agent", "builtin_commands"]
