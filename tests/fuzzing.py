"""How many examples the hypothesis fuzz tests run: a bounded default keeps the suite fast;
``EDGEKIT_FUZZ_SCALE=10`` (scripts/bench_fuzz.sh, nightly) runs ten times as many."""

from __future__ import annotations

import os


def fuzz_examples(default: int) -> int:
    """``default`` × ``EDGEKIT_FUZZ_SCALE`` (1 when unset)."""
    return max(1, int(default * float(os.environ.get("EDGEKIT_FUZZ_SCALE", "1"))))
