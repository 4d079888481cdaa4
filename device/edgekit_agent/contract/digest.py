"""sha256 for bundle and OTA hashes, from CPython's own implementation rather than OpenSSL's where it has one.

``hashlib`` loads OpenSSL's libcrypto on import, which adds 3.5 MiB to the resident set of an agent that
otherwise never needs OpenSSL (plain-TCP MQTT, unsigned bundles; a signature check brings its own copy with
``cryptography``). CPython's built-in sha256 is slower (about 100 MB/s here against OpenSSL's 850 MB/s: a few
ms for a typical bundle at start), and gives the same digests. A build without the built-in hashes (some
FIPS builds) falls back to ``hashlib``.
"""

from __future__ import annotations

try:
    from _sha2 import sha256  # CPython 3.12+
except ImportError:
    try:
        from _sha256 import sha256  # CPython 3.11
    except ImportError:
        from hashlib import sha256

__all__ = ["sha256"]
