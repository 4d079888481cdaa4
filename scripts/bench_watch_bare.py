#!/usr/bin/env python3
"""The bare baseline of ``scripts/bench_watch.py``: a decode + preprocess + invoke + rename loop in its own process.

    python scripts/bench_watch_bare.py BUNDLE_DIR THREADS

It imports numpy, Pillow, LiteRT and only what the loop needs from the standard library (not ``edgekit``, nor the
driver's ``argparse``, ``statistics``, ``subprocess``…: 2.4 MiB of RSS a bare loop does not carry), answers
``ready``, then serves every folder named on stdin and answers ``done N``.
"""

import json
import os
import sys
from pathlib import Path


def bare_worker(bundle_dir: Path, threads: int) -> int:
    """Serve every folder named on stdin (INBOX/LABEL/x.png), then answer ``done N`` on stdout."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter
    from PIL import Image

    spec = json.loads((bundle_dir / "manifest.json").read_text())["preprocess"]
    model = json.loads((bundle_dir / "manifest.json").read_text())["model"]["file"]
    interp = Interpreter(model_path=str(bundle_dir / model), num_threads=threads)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    in_index, out_index, dtype = inp["index"], out["index"], inp["dtype"]
    q_scale, q_zero = inp["quantization"]
    info = np.iinfo(dtype)
    size, mode = (spec["width"], spec["height"]), spec.get("color_mode", "L")
    resample = getattr(Image.Resampling, spec.get("resize", "bilinear").upper())
    scale = np.float32(spec.get("scale", 1 / 255))
    mean = np.asarray(spec.get("mean", (0.0,)), dtype=np.float32)
    std = np.asarray(spec.get("std", (1.0,)), dtype=np.float32)
    set_tensor, invoke, get_tensor = interp.set_tensor, interp.invoke, interp.get_tensor
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("edgekit", "edgekit_agent"))
    if loaded:
        raise SystemExit(f"the bare baseline imported {loaded}")
    print("ready", flush=True)
    for line in sys.stdin:
        root = Path(line.strip())
        done = root / ".processed"
        n = 0
        for label in sorted(os.listdir(root)):
            if label.startswith("."):
                continue
            os.makedirs(done / label, exist_ok=True)
            for name in sorted(os.listdir(root / label)):
                path = root / label / name
                with Image.open(path) as img:
                    img.load()
                    if img.mode != mode:
                        img = img.convert(mode)
                    if img.size != size:
                        img = img.resize(size, resample)
                    x = np.asarray(img, dtype=np.float32)
                if x.ndim == 2:
                    x = x[:, :, None]
                x = (x * scale - mean) / std
                q = np.clip(np.round(x / np.float32(q_scale)) + q_zero, info.min, info.max).astype(dtype)
                set_tensor(in_index, q[None, ...])
                invoke()
                int(np.argmax(get_tensor(out_index)))
                os.rename(path, done / label / name)
                n += 1
        print(f"done {n}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(bare_worker(Path(sys.argv[1]), int(sys.argv[2])))
