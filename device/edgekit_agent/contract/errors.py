"""One exception hierarchy for edgekit and edgekit_agent, and the CLI exit codes.

It lives in the device package because the device may not import the host package, while the host
may import this one: both sides raise the same types and both CLIs map them to the same exit codes.

Every error also inherits the built-in it resembles, so ``except ValueError`` keeps working for
callers that do not know edgekit. A message says what happened, to which file or device, and what
to do next.
"""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """Process exit codes of ``edgekit`` and ``edgekit-agent`` (stable: scripts depend on them)."""

    OK = 0
    ERROR = 1  # an unexpected or uncategorised failure
    USAGE = 2  # bad command line (argparse also uses 2)
    BAD_INPUT = 3  # a file, dataset, model or profile the user gave is unusable
    DOES_NOT_FIT = 4  # the model does not fit a profile's budgets or op set
    BUNDLE_REJECTED = 5  # integrity, signature or self-test refused a bundle
    CONVERSION_FAILED = 6  # the TFLite converter failed or produced a non-int8 graph
    UNAVAILABLE = 7  # a broker, device, runtime or delegate could not be reached or loaded
    NOT_AUTHORIZED = 8  # the broker refused these credentials, or a publish or subscription (its ACL)
    INTERRUPTED = 130  # Ctrl-C


class EdgekitError(Exception):
    """Base of every error edgekit raises on purpose."""

    exit_status: ExitStatus = ExitStatus.ERROR


class UsageError(EdgekitError, ValueError):
    """Arguments that do not make sense together."""

    exit_status = ExitStatus.USAGE


class ProfileError(EdgekitError, ValueError):
    """An unknown device profile or an invalid profile file."""

    exit_status = ExitStatus.BAD_INPUT


class DatasetError(EdgekitError, ValueError):
    """A dataset that cannot be used: missing, empty classes, unreadable images."""

    exit_status = ExitStatus.BAD_INPUT


class ModelError(EdgekitError, ValueError):
    """A model file that cannot be loaded or does not suit the task."""

    exit_status = ExitStatus.BAD_INPUT


class ConversionError(EdgekitError, RuntimeError):
    """The TFLite converter failed (or crashed its process)."""

    exit_status = ExitStatus.CONVERSION_FAILED


class QuantizationError(ConversionError):
    """The converted model is not the full-integer model that was asked for (float islands, dtypes)."""


class FitError(EdgekitError, ValueError):
    """A model does not fit a device profile (memory, flash or operators)."""

    exit_status = ExitStatus.DOES_NOT_FIT


class BundleError(EdgekitError, ValueError):
    """A bundle that is malformed, incomplete or unsafe to extract."""

    exit_status = ExitStatus.BUNDLE_REJECTED


class IntegrityError(BundleError):
    """A file in a bundle does not match the hash its manifest records."""


class SignatureError(BundleError):
    """A bundle's signature is missing, invalid or made by an untrusted key."""


class SelfTestError(BundleError):
    """The device's outputs on the golden samples disagree with the workstation's."""


class RuntimeUnavailableError(EdgekitError, ImportError):
    """No TFLite interpreter (LiteRT, tflite-runtime or TensorFlow) could be imported."""

    exit_status = ExitStatus.UNAVAILABLE


class DelegateError(EdgekitError, OSError):
    """A delegate (e.g. the Edge TPU's libedgetpu) could not be loaded."""

    exit_status = ExitStatus.UNAVAILABLE


class BusyError(EdgekitError, RuntimeError):
    """The device is in the middle of another operation (an update or its health window); retry later."""

    exit_status = ExitStatus.UNAVAILABLE


class BrokerError(EdgekitError, ConnectionError):
    """An MQTT broker could not be reached, or refused the credentials."""

    exit_status = ExitStatus.UNAVAILABLE


class NotAuthorizedError(BrokerError, PermissionError):
    """The broker refused: the credentials (CONNACK), a publish (PUBACK) or a subscription (SUBACK); retrying
    the same thing cannot help. The message names the user, the topic and the broker's reason code."""

    exit_status = ExitStatus.NOT_AUTHORIZED


class CommandFailed(EdgekitError, RuntimeError):
    """A device rejected a fleet command or reported that it failed; ``code`` is the device's error code
    (``edgekit_agent.contract.envelope.ErrorCode``) and ``retryable`` its advice."""

    exit_status = ExitStatus.ERROR

    def __init__(self, message: str, *, code: str = "?", retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable


class StorageError(EdgekitError, OSError):
    """The agent's data directory (outbox, command store) cannot be opened or written."""

    exit_status = ExitStatus.UNAVAILABLE


class WeightsUnavailableError(EdgekitError, ConnectionError):
    """Pretrained weights (Keras' ImageNet files) that cannot be fetched: no internet, or the host is blocked."""

    exit_status = ExitStatus.UNAVAILABLE


class ToolUnavailableError(EdgekitError, OSError):
    """A program edgekit runs is not installed (``espeak-ng`` for the synthetic keyword set); says how to get it."""

    exit_status = ExitStatus.UNAVAILABLE


class InputError(EdgekitError, ValueError):
    """An inference input (image file or tensor) that cannot be used."""

    exit_status = ExitStatus.BAD_INPUT


class PackError(EdgekitError, ValueError):
    """A device pack cannot be made: no wheel for the target platform and Python, no agent to build, a missing
    bundle or key directory."""

    exit_status = ExitStatus.BAD_INPUT


def exit_status_for(exc: BaseException) -> ExitStatus:
    """The exit code a CLI returns for ``exc``."""
    if isinstance(exc, EdgekitError):
        return exc.exit_status
    if isinstance(exc, KeyboardInterrupt):
        return ExitStatus.INTERRUPTED
    return ExitStatus.ERROR
