"""The documented limits on what the agent accepts from the outside (MQTT commands, bundle archives).

Every byte a device reads from the network or from a bundle is bounded *before* it is parsed, so a
hostile or broken sender can cost the device at most these amounts of memory and disk. The figures
are deliberately generous for the models edgekit targets (a few KB to a few MB) and small against a
Raspberry Pi's RAM; change them here, in one place, and the docs (docs/trust.md) quote them.
"""

from __future__ import annotations

import json
from typing import Any

from edgekit_agent.contract.errors import EdgekitError, InputError

KiB = 1024
MiB = 1024 * KiB

# --- MQTT commands ----------------------------------------------------------------------------------
#: Largest command payload (bytes of JSON) the agent parses; bigger ones are refused unread.
#: An OTA chunk of OTA_CHUNK_BYTES is ~4/3 larger in base64, plus the envelope: it must fit below this.
MAX_COMMAND_BYTES = 256 * KiB
#: Deepest JSON nesting accepted (a command is 3–4 levels deep; 100k '[' would exhaust the C stack guard).
MAX_JSON_DEPTH = 32
#: Longest cmd_id / command name / requester string.
MAX_ID_CHARS = 128
#: Most numbers in the ``infer`` command's ``samples`` (a waveform, or rows × channels): 4 s of 16 kHz audio.
#: Longer input is cut to the model's clip or window anyway; the cap bounds the work before that.
MAX_INFER_SAMPLES = 64 * KiB

# --- bundles --------------------------------------------------------------------------------------------
#: Largest manifest.json.
MAX_MANIFEST_BYTES = 1 * MiB
#: Largest bundle archive (.tar.gz) accepted, over MQTT or from disk.
MAX_ARCHIVE_BYTES = 64 * MiB
#: Largest single file inside a bundle, and the largest total once extracted (decompression bombs).
MAX_MEMBER_BYTES = 128 * MiB
MAX_EXTRACTED_BYTES = 256 * MiB
#: Most entries an archive may hold (a bundle has 3–6 files).
MAX_MEMBERS = 64
#: Largest header of one archive entry, extended headers included (pax records, GNU long names, sparse maps):
#: tarfile reads these into memory before the entry can be checked. A bundle's are 0.5–1.5 KiB.
MAX_HEADER_BYTES = 64 * KiB
#: Most bytes a compressed archive may unpack to: the files, one header (and padding) per entry and the end
#: blocks. The decompressor is never asked for more, so a compression bomb costs bounded time and memory.
MAX_STREAM_BYTES = MAX_EXTRACTED_BYTES + (MAX_MEMBERS + 1) * MAX_HEADER_BYTES

# --- OTA -------------------------------------------------------------------------------------------------
#: Raw bytes per swap_bundle chunk (base64 in the payload).
OTA_CHUNK_BYTES = 96 * KiB
#: Most chunks in one transfer (MAX_ARCHIVE_BYTES / OTA_CHUNK_BYTES rounded up).
MAX_OTA_CHUNKS = -(-MAX_ARCHIVE_BYTES // OTA_CHUNK_BYTES)

LIMITS: dict[str, int] = {
    "max_command_bytes": MAX_COMMAND_BYTES,
    "max_json_depth": MAX_JSON_DEPTH,
    "max_infer_samples": MAX_INFER_SAMPLES,
    "max_manifest_bytes": MAX_MANIFEST_BYTES,
    "max_archive_bytes": MAX_ARCHIVE_BYTES,
    "max_member_bytes": MAX_MEMBER_BYTES,
    "max_extracted_bytes": MAX_EXTRACTED_BYTES,
    "max_members": MAX_MEMBERS,
    "max_header_bytes": MAX_HEADER_BYTES,
    "max_stream_bytes": MAX_STREAM_BYTES,
    "ota_chunk_bytes": OTA_CHUNK_BYTES,
}


def _refuse_constant(name: str) -> Any:
    # json accepts NaN/Infinity by default; they are not JSON and break comparisons downstream.
    raise ValueError(f"{name} is not valid JSON")


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a parsed JSON value, stopping as soon as it passes ``limit``."""
    stack = [(value, 1)]
    deepest = 0
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return deepest


def loads_bounded(
    data: bytes | bytearray | str,
    *,
    what: str,
    max_bytes: int = MAX_COMMAND_BYTES,
    max_depth: int = MAX_JSON_DEPTH,
    error: type[EdgekitError] = InputError,
) -> Any:
    """Parse JSON from an untrusted source within the limits; every failure is ``error`` (typed) naming ``what``.

    Refuses: more than ``max_bytes``, invalid UTF-8, invalid JSON (NaN/Infinity included), and nesting
    deeper than ``max_depth`` (deep nesting would otherwise surface as RecursionError, not a typed error).
    """
    size = len(data)
    if size > max_bytes:
        raise error(f"{what}: {size} bytes is over the limit of {max_bytes} bytes (edgekit_agent.contract.limits).")
    try:
        text = data if isinstance(data, str) else bytes(data).decode("utf-8")
        value = json.loads(text, parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise error(f"{what}: not UTF-8 text; send a JSON object.") from None
    except RecursionError:
        raise error(f"{what}: JSON nested deeper than {max_depth} levels.") from None
    except ValueError as exc:  # JSONDecodeError is a ValueError
        raise error(f"{what}: not valid JSON ({str(exc)[:120]}); send a JSON object.") from None
    if _depth(value, max_depth) > max_depth:
        raise error(f"{what}: JSON nested deeper than {max_depth} levels.")
    return value
