"""Datasets: image folders (one subfolder per class, or a ``labels.csv`` of label sets: multi-label), ``.npz``
arrays, the digits demo, and a seeded split.

Images are turned into float tensors with the device's own :func:`edgekit_agent.infer.preprocess.image_to_float`,
so the workstation measures accuracy on exactly the tensors a device would compute from the same files.
"""

from __future__ import annotations

import csv
import difflib
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgekit_agent.contract.errors import DatasetError, InputError, ModelError, UsageError
from edgekit_agent.contract.manifest import MAX_MULTILABELS, AudioSpec, InputSpec, PreprocessSpec, SensorSpec
from edgekit_agent.infer.preprocess import image_to_float, open_image

if TYPE_CHECKING:
    from edgekit.pipeline.sensor_data import Windowing

# What an image folder may contain (Pillow decodes them all; the issue names PNG, JPEG and BMP).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".pgm", ".ppm", ".tif", ".tiff")
# Pillow modes that carry no colour; anything else is checked pixel by pixel.
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
ProgressFn = Callable[[int, int], None]
# A multi-label image folder: this file in the folder lists each image with its labels (docs/pipeline.md).
LABELS_CSV = "labels.csv"


@dataclass(frozen=True, slots=True)
class SkippedImage:
    """An image file that could not be read and was left out of the dataset, and why (one line that names it)."""

    file: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"file": self.file, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Dataset:
    """Preprocessed samples: ``x`` (N, *spec.shape) float32, ``y`` int64 class indices into ``labels``, or for a
    multi-label dataset ``y`` (N, labels) of 0/1 (uint8): which labels each sample has.

    ``raw`` (audio and sensor datasets) holds each sample before feature extraction, as the spec's docstring
    says (waveforms, or sensor windows before normalisation): the bundle's golden samples carry it so that a
    device's self-test starts from raw input and catches a feature mismatch."""

    x: np.ndarray
    y: np.ndarray
    labels: tuple[str, ...]
    spec: InputSpec
    files: tuple[str, ...] = ()
    skipped: tuple[SkippedImage, ...] = ()  # unreadable images left out (the CLI lists them, one line each)
    raw: np.ndarray | None = None
    # (N,) int: samples that share a group (the windows of one recording, the noisy copies of one clip) are
    # never split between train and test, or the held-out accuracy would measure memory. None: each its own.
    groups: np.ndarray | None = None
    # (N,) bool: made from another sample (a clip with noise mixed in): trains, never held out.
    augmented: np.ndarray | None = None
    notes: tuple[str, ...] = ()  # files converted on loading (resampled, cut…), one line each or per kind

    def __len__(self) -> int:
        return int(len(self.y))

    @property
    def multilabel(self) -> bool:
        return bool(self.y.ndim == 2)

    def class_counts(self) -> dict[str, int]:
        """Samples per class name (multi-label: samples that have the label)."""
        counts = self.y.sum(axis=0) if self.multilabel else np.bincount(self.y, minlength=len(self.labels))
        return {label: int(n) for label, n in zip(self.labels, counts)}

    def subset(self, index: np.ndarray) -> Dataset:
        """The samples at ``index`` (same labels and spec)."""
        files = tuple(self.files[i] for i in index) if self.files else ()
        raw = self.raw[index] if self.raw is not None else None
        groups = self.groups[index] if self.groups is not None else None
        augmented = self.augmented[index] if self.augmented is not None else None
        return replace(
            self, x=self.x[index], y=self.y[index], files=files, skipped=(), raw=raw, groups=groups, augmented=augmented
        )


@dataclass(frozen=True, slots=True)
class Splits:
    """A train / validation / test split of one dataset."""

    train: Dataset
    val: Dataset
    test: Dataset

    @property
    def labels(self) -> tuple[str, ...]:
        return self.train.labels

    @property
    def spec(self) -> InputSpec:
        return self.train.spec


@dataclass(frozen=True, slots=True)
class DatasetSummary:
    """What :func:`write_digits` wrote."""

    directory: Path
    classes: int
    samples: int
    width: int
    height: int


def write_digits(out_dir: str | Path) -> DatasetSummary:
    """Write scikit-learn's handwritten digits (1,797 real 8×8 scans) as ``OUT/0/…png`` … ``OUT/9/…png``.

    Pixel values 0..16 are scaled to 0..255 (grey PNG). The data ships inside scikit-learn: nothing is
    downloaded.
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    out = Path(out_dir)
    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    try:
        for label in range(10):
            (out / str(label)).mkdir(parents=True, exist_ok=True)
        for i, (img, label) in enumerate(zip(pixels, digits.target)):
            Image.fromarray(img, mode="L").save(out / str(int(label)) / f"digit_{i:04d}.png")
    except OSError as exc:
        raise DatasetError(
            f"cannot write the digits dataset to {out}: {exc.strerror}; choose a writable directory."
        ) from None
    h, w = pixels.shape[1:]
    return DatasetSummary(directory=out, classes=10, samples=int(len(pixels)), width=int(w), height=int(h))


def close_paths(path: str | Path, limit: int = 3) -> list[Path]:
    """Existing paths that ``path`` (which does not exist) was probably meant to be: each missing part of it
    is matched (difflib) against the names at its level, so ``data/digts`` finds ``data/digits`` and
    ``dat/digits`` finds ``data/digits``. At most ``limit``, closest first; none when nothing is close."""
    found = [Path(Path(path).anchor)]
    for part in Path(path).relative_to(Path(path).anchor).parts:
        level = []
        for base in found:
            if (base / part).exists():
                level.append(base / part)
            elif base.is_dir():
                try:
                    names = [entry.name for entry in base.iterdir()]
                except OSError:
                    continue
                level += [base / name for name in difflib.get_close_matches(part, names, n=limit)]
        found = level[:limit]
    return [p for p in found if p != Path(path)]


def missing_dataset(path: Path, what: str, otherwise: str) -> DatasetError:
    """The error for a dataset path that does not exist: "did you mean" the close ones when there are,
    else ``otherwise`` (what to do)."""
    close = close_paths(path)
    if close:
        return DatasetError(f"{path}: no such {what}; did you mean {' or '.join(str(p) for p in close)}?")
    return DatasetError(f"{path}: no such {what}; {otherwise}")


def _class_dirs(root: Path) -> list[Path]:
    if not root.exists():
        raise missing_dataset(root, "dataset directory", "give a folder with one subfolder per class.")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory; give a folder with one subfolder per class.")
    dirs = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
    if len(dirs) < 2:
        found = ", ".join(p.name for p in dirs) or "none"
        raise DatasetError(
            f"{root}: an image-folder dataset needs at least two class subfolders (found {len(dirs)}: {found}); "
            "put each class's images in its own subfolder."
        )
    return dirs


def _image_files(class_dir: Path) -> list[Path]:
    return sorted(p for p in class_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _is_grey(img) -> bool:  # noqa: ANN001 - a PIL image
    if img.mode in _GREY_MODES:
        return True
    rgb = np.asarray(img.convert("RGB"))
    return bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]))


def infer_spec(files: list[Path], *, probe: int = 64) -> PreprocessSpec:
    """A preprocessing spec from a sample of images: the most common size, grey unless any image has colour."""
    sizes: Counter[tuple[int, int]] = Counter()
    grey = True
    step = max(1, len(files) // probe)
    for path in files[::step]:
        try:
            img = open_image(path)
        except InputError:
            continue  # reported when the dataset is loaded
        sizes[img.size] += 1
        grey = grey and _is_grey(img)
    if not sizes:
        raise DatasetError("no readable image among the dataset's files; check the folder's contents.")
    (width, height), _ = sizes.most_common(1)[0]
    return PreprocessSpec(width=int(width), height=int(height), color_mode="L" if grey else "RGB")


def folder_spec(
    path: str | Path, *, size: tuple[int, int] | None = None, color_mode: str | None = None
) -> PreprocessSpec:
    """The spec for an image folder: ``size`` (width, height) and ``color_mode`` ("L"/"RGB") when given,
    else inferred."""
    if size is not None and color_mode is not None:
        return PreprocessSpec(width=int(size[0]), height=int(size[1]), color_mode=color_mode)
    root = Path(path)
    files = [f for f, _ in _label_rows(root)] if is_multilabel_folder(root) else None
    inferred = infer_spec(files or [f for d in _class_dirs(root) for f in _image_files(d)])
    w, h = size or (inferred.width, inferred.height)
    return PreprocessSpec(width=int(w), height=int(h), color_mode=color_mode or inferred.color_mode)


def image_input(shape: Sequence[int | None], where: str) -> tuple[int | None, int | None, int]:
    """(height, width, channels) of a model input of ``shape`` (batch, H, W, C), None for a size left open.

    ``where`` names the model (file) in errors. Raises :class:`ModelError` for an input that is not an image:
    not rank 4, or not 1 (grey) or 3 (RGB) channels.
    """
    dims = tuple(None if s is None or int(s) <= 0 else int(s) for s in shape)
    if len(dims) != 4:
        raise ModelError(
            f"{where}: its input has shape {shape_text(dims)}, but edgekit feeds images: the model needs one input "
            "of shape (batch, height, width, channels), e.g. keras.Input((8, 8, 1)); put a Reshape layer after it "
            "if the model works on flat vectors."
        )
    _, h, w, c = dims
    if c not in (1, 3):
        raise ModelError(
            f"{where}: its input has {c} channels (shape {shape_text(dims)}); edgekit feeds grey (1 channel) or "
            "RGB (3 channels) images: give a model whose input shape ends in 1 or 3."
        )
    return h, w, c


def spec_for_input(shape: Sequence[int | None], where: str, dataset: str | Path | None = None) -> PreprocessSpec:
    """The preprocessing spec that turns images into what a model input of ``shape`` (batch, H, W, C) takes.

    A height or width the model leaves open (None) is taken from the images of the ``dataset`` folder.
    Raises :class:`ModelError` naming ``where`` (see :func:`image_input`).
    """
    h, w, c = image_input(shape, where)
    mode = "L" if c == 1 else "RGB"
    if h and w:
        return PreprocessSpec(width=w, height=h, color_mode=mode)
    if dataset is None or Path(dataset).suffix.lower() == ".npz":
        raise ModelError(
            f"{where}: its input leaves the image size open ({shape_text((None, h, w, c))}); "
            "give a model with a fixed height and width."
        )
    return folder_spec(dataset, color_mode=mode)  # the images' most common size


def shape_text(dims: Sequence[int | None]) -> str:
    """``(None, 8, 8, 1)``: a shape as Python prints a tuple, None for an open dimension."""
    return "(" + ", ".join("None" if d is None else str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"


def peek(path: str | Path) -> tuple[tuple[int, int, int], tuple[str, ...]]:
    """(height, width, channels) of the tensors a dataset gives by default, and its class names, without
    loading every image (an image folder's spec comes from a sample, as in :func:`infer_spec`)."""
    p = Path(path)
    if p.suffix.lower() == ".npz":
        ds = load_npz(p)
        h, w, c = (int(d) for d in ds.x.shape[1:])
        return (h, w, c), ds.labels
    spec = folder_spec(p)
    labels = _label_names(_label_rows(p), p) if is_multilabel_folder(p) else tuple(d.name for d in _class_dirs(p))
    return (spec.height, spec.width, 1 if spec.color_mode == "L" else 3), labels


def _read_image(f: Path, spec: PreprocessSpec, strict: bool, skipped: list[SkippedImage]) -> np.ndarray | None:
    """One image's float tensor; an unreadable one is added to ``skipped`` (None), or with ``strict`` is a
    :class:`DatasetError` that names it."""
    try:
        return image_to_float(open_image(f), spec)
    except InputError as exc:
        reason = str(exc) if str(f) in str(exc) else f"{f}: {exc}"
        if strict:
            raise DatasetError(
                f"{reason} (strict mode: fix or remove the file, or load without --strict to skip it)."
            ) from None
        skipped.append(SkippedImage(str(f), reason))
        return None


def load_image_folder(
    path: str | Path,
    spec: PreprocessSpec | None = None,
    *,
    strict: bool = False,
    on_progress: ProgressFn | None = None,
) -> Dataset:
    """Load ``path/CLASS/*.png|jpg|bmp…`` (class = subfolder name, sorted) into a :class:`Dataset`.

    ``spec=None`` infers size and colour mode from the images. An unreadable image is left out and listed in
    ``Dataset.skipped`` with the reason (a :class:`DatasetError` with ``strict``); fewer than two classes or a
    class without a usable image is a :class:`DatasetError`.
    """
    root = Path(path)
    dirs = _class_dirs(root)
    per_class = [(d.name, _image_files(d)) for d in dirs]
    empty = [name for name, files in per_class if not files]
    if empty:
        raise DatasetError(
            f"{root}: class folder(s) {', '.join(empty)} contain no images ({', '.join(IMAGE_SUFFIXES)}); "
            "add images or remove the folder."
        )
    all_files = [f for _, files in per_class for f in files]
    spec = spec or infer_spec(all_files)
    xs: list[np.ndarray] = []
    ys: list[int] = []
    kept: list[str] = []
    skipped: list[SkippedImage] = []
    total, done = len(all_files), 0
    for label, (_name, files) in enumerate(per_class):
        for f in files:
            x = _read_image(f, spec, strict, skipped)
            if x is not None:
                xs.append(x)
                ys.append(label)
                kept.append(str(f))
            done += 1
            if on_progress is not None:
                on_progress(done, total)
    counts = np.bincount(np.asarray(ys, dtype=np.int64), minlength=len(per_class))
    unusable = [name for (name, _), n in zip(per_class, counts) if n == 0]
    if unusable:
        raise DatasetError(f"{root}: no readable image left in class folder(s) {', '.join(unusable)}; fix the images.")
    return Dataset(
        x=np.stack(xs).astype(np.float32),
        y=np.asarray(ys, dtype=np.int64),
        labels=tuple(name for name, _ in per_class),
        spec=spec,
        files=tuple(kept),
        skipped=tuple(skipped),
    )


def is_multilabel_folder(path: str | Path) -> bool:
    """A folder with a :data:`LABELS_CSV`: a multi-label dataset."""
    return (Path(path) / LABELS_CSV).is_file()


def _label_rows(root: Path) -> list[tuple[Path, tuple[str, ...]]]:
    """(image path, its labels) per row of ``root/labels.csv``: ``file,labels`` with the file relative to
    ``root`` and the labels separated by ";" (none: an image with no label). A first row ``file,labels`` is a
    header."""
    where = root / LABELS_CSV
    try:
        with open(where, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{where}: cannot read it ({exc}); write it as UTF-8 rows of file,label1;label2.") from None
    if rows and [c.strip().lower() for c in rows[0]] == ["file", "labels"]:
        rows = rows[1:]
    out: list[tuple[Path, tuple[str, ...]]] = []
    seen: set[str] = set()
    for line, row in enumerate(rows, start=1):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 2 or not row[0].strip():
            raise DatasetError(
                f"{where}: row {line} is {row!r:.80}; each row is file,labels (e.g. img1.png,cat;dog, or img2.png, "
                "for an image with no label)."
            )
        name = row[0].strip()
        if name in seen:
            raise DatasetError(f"{where}: row {line} lists {name} a second time; list each image once.")
        seen.add(name)
        path = root / name
        if not path.is_file():
            raise DatasetError(f"{where}: row {line} names {path}, which is not a file; fix the row or add the image.")
        out.append((path, tuple(sorted({t.strip() for t in row[1].split(";") if t.strip()}))))
    if not out:
        raise DatasetError(f"{where}: lists no image; add rows of file,label1;label2.")
    return out


def _label_names(rows: list[tuple[Path, tuple[str, ...]]], root: Path) -> tuple[str, ...]:
    labels = tuple(sorted({label for _, have in rows for label in have}))
    if not 2 <= len(labels) <= MAX_MULTILABELS:
        raise DatasetError(
            f"{root / LABELS_CSV}: a multi-label dataset needs 2 to {MAX_MULTILABELS} labels, found {len(labels)} "
            f"({', '.join(labels) or 'none'}); for one yes/no label use two class folders instead."
        )
    return labels


def load_multilabel_folder(
    path: str | Path,
    spec: PreprocessSpec | None = None,
    *,
    strict: bool = False,
    on_progress: ProgressFn | None = None,
) -> Dataset:
    """Load a multi-label image folder: the images ``path/labels.csv`` lists, each with its set of labels
    (labels = every name used, sorted). ``y`` is (N, labels) of 0/1. Unreadable images as in
    :func:`load_image_folder`; a label no readable image has is a :class:`DatasetError`."""
    root = Path(path)
    rows = _label_rows(root)
    labels = _label_names(rows, root)
    column = {label: i for i, label in enumerate(labels)}
    spec = spec or infer_spec([f for f, _ in rows])
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    kept: list[str] = []
    skipped: list[SkippedImage] = []
    for done, (f, have) in enumerate(rows, start=1):
        x = _read_image(f, spec, strict, skipped)
        if x is not None:
            xs.append(x)
            row = np.zeros(len(labels), dtype=np.uint8)
            row[[column[label] for label in have]] = 1
            ys.append(row)
            kept.append(str(f))
        if on_progress is not None:
            on_progress(done, len(rows))
    y = np.stack(ys) if ys else np.zeros((0, len(labels)), dtype=np.uint8)
    unusable = [label for label, n in zip(labels, y.sum(axis=0)) if n == 0]
    if unusable:
        raise DatasetError(f"{root}: no readable image left with label(s) {', '.join(unusable)}; fix the images.")
    return Dataset(
        x=np.stack(xs).astype(np.float32), y=y, labels=labels, spec=spec, files=tuple(kept), skipped=tuple(skipped)
    )


def load_npz(path: str | Path) -> Dataset:
    """Arrays ``x`` (N, H, W[, C]) and ``y`` (N,) and optionally ``labels``; uint8 ``x`` is scaled by 1/255.

    Float ``x`` is taken as already preprocessed (the spec records scale 1, so a device must feed the same
    floats) and must be finite; uint8 ``x`` gets the default spec (pixels / 255), like an image folder. Any
    other dtype (uint16, int64, bool…) is a :class:`DatasetError`, as are duplicate names in ``labels``.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise missing_dataset(path, "file", "give an .npz file with arrays x and y.") from None
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not a readable .npz file ({exc}); save arrays with numpy.savez.") from None
    if "x" not in arrays or "y" not in arrays:
        raise DatasetError(f"{path}: needs arrays named 'x' and 'y' (found {sorted(arrays)}).")
    x, y = arrays["x"], arrays["y"]
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or len(x) != len(y) or y.ndim not in (1, 2):
        raise DatasetError(
            f"{path}: x must be (N, H, W[, 1|3]) and y (N,) (or (N, labels) of 0/1 for multi-label) with the same "
            f"N; got {x.shape} and {y.shape}."
        )
    if y.ndim == 2:
        if y.dtype != np.bool_ and not np.issubdtype(y.dtype, np.integer) or not np.isin(y, (0, 1)).all():
            raise DatasetError(f"{path}: a 2-D y is multi-label and must hold 0 or 1 (or booleans), got {y.dtype}.")
    elif not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"{path}: y must hold integer class indices, got {y.dtype}.")
    mode = "L" if x.shape[-1] == 1 else "RGB"
    if x.dtype == np.uint8:
        spec = PreprocessSpec(width=int(x.shape[2]), height=int(x.shape[1]), color_mode=mode)
        x = x.astype(np.float32) * np.float32(spec.scale)
    elif np.issubdtype(x.dtype, np.floating):
        spec = PreprocessSpec(width=int(x.shape[2]), height=int(x.shape[1]), color_mode=mode, scale=1.0)
        with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf here, caught next
            x = x.astype(np.float32)
        finite = np.isfinite(x).reshape(len(x), -1).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            raise DatasetError(
                f"{path}: x holds NaN or infinite values in {len(bad)} sample(s) (first: index {int(bad[0])}); "
                "a model cannot be trained, calibrated or measured on them: fix or drop those samples."
            )
    else:
        raise DatasetError(
            f"{path}: x is {x.dtype}; edgekit takes uint8 pixels (0..255, scaled by 1/255 like image files) or "
            "float x that is already preprocessed. Convert it first, e.g. x.astype('uint8') for 8-bit pixels or "
            "(x / 65535).astype('float32') for 16-bit ones."
        )
    n_classes = y.shape[1] if y.ndim == 2 else int(y.max()) + 1 if len(y) else 0
    labels = tuple(str(v) for v in arrays["labels"]) if "labels" in arrays else tuple(str(i) for i in range(n_classes))
    dupes = sorted({label for label in labels if labels.count(label) > 1})
    if dupes:
        raise DatasetError(
            f"{path}: 'labels' names {', '.join(repr(d) for d in dupes)} more than once; class names must be unique: "
            "give each class index its own name (or merge those classes' samples under one index)."
        )
    if y.ndim == 2:
        if not 2 <= len(labels) <= MAX_MULTILABELS or len(labels) != n_classes:
            raise DatasetError(
                f"{path}: a multi-label y has one column per label, 2 to {MAX_MULTILABELS}; y has {n_classes} "
                f"columns and 'labels' names {len(labels)}."
            )
        empty = [labels[i] for i in np.flatnonzero(y.sum(axis=0) == 0)]
        if empty:
            raise DatasetError(f"{path}: label(s) {', '.join(empty)} have no samples; remove those columns.")
        return Dataset(x=x, y=y.astype(np.uint8), labels=labels, spec=spec)
    if len(labels) < 2 or (len(y) and int(y.min()) < 0) or n_classes > len(labels):
        raise DatasetError(f"{path}: need at least two classes with y in 0..{len(labels) - 1}.")
    counts = np.bincount(y.astype(np.int64), minlength=len(labels))
    empty = [labels[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise DatasetError(f"{path}: class(es) {', '.join(empty)} have no samples; remove them from 'labels'.")
    return Dataset(x=x, y=y.astype(np.int64), labels=labels, spec=spec)


def load_dataset(
    path: str | Path, spec: InputSpec | None = None, strict: bool = False, on_progress: ProgressFn | None = None
) -> Dataset:
    """An image folder, a folder of ``.wav`` clips (:mod:`edgekit.pipeline.audio_data`), a folder of CSV sensor
    recordings (:mod:`edgekit.pipeline.sensor_data`, default windows) or an ``.npz`` file, by what ``path`` is."""
    p = Path(path)
    if p.suffix.lower() == ".npz":
        return load_npz(p)
    if is_multilabel_folder(p):
        return load_multilabel_folder(p, spec, strict=strict, on_progress=on_progress)
    if p.is_dir():
        from edgekit.pipeline import audio_data

        if audio_data.is_audio_folder(p):
            audio = spec if isinstance(spec, AudioSpec) else None
            a = audio_data.load_audio_folder(p, audio, strict=strict, on_progress=on_progress)
            return Dataset(
                **{f.name: getattr(a, f.name) for f in fields(a) if f.name != "skipped"},
                skipped=tuple(SkippedImage(file, reason) for file, reason in a.skipped),
            )
        from edgekit.pipeline.sensor_data import is_sensor_folder

        if is_sensor_folder(p):
            sensor = spec if isinstance(spec, SensorSpec) else None
            return load_sensor_folder(p, sensor, strict=strict, on_progress=on_progress)
        return load_image_folder(p, spec, strict=strict, on_progress=on_progress)
    if not p.exists():
        raise missing_dataset(p, "dataset", "give an image folder (one subfolder per class) or an .npz file.")
    raise DatasetError(f"{p}: not a dataset; give an image folder (one subfolder per class) or an .npz file.")


def load_sensor_folder(
    path: str | Path,
    spec: SensorSpec | None = None,
    *,
    windowing: Windowing | None = None,
    strict: bool = False,
    on_progress: ProgressFn | None = None,
) -> Dataset:
    """``path/CLASS/*.csv`` cut into windows (:func:`edgekit.pipeline.sensor_data.read_sensor_folder`)."""
    from edgekit.pipeline.sensor_data import read_sensor_folder

    w = read_sensor_folder(path, spec, windowing=windowing, strict=strict, on_progress=on_progress)
    skipped = tuple(SkippedImage(f, reason) for f, reason in w.skipped)
    return Dataset(w.x, w.y, w.labels, w.spec, w.files, skipped, raw=w.raw, groups=w.groups)


def class_rng(seed: int, label: str) -> np.random.Generator:
    """The random stream that shuffles class ``label``: seeded from ``seed`` and a stable hash (CRC-32) of the
    class name, so a class's shuffle depends only on its own files and the seed, never on the other classes."""
    if seed < 0:
        raise UsageError(f"the split seed must be a non-negative integer, got {seed}.")
    return np.random.default_rng([int(seed), zlib.crc32(label.encode("utf-8"))])


def split_dataset(ds: Dataset, *, val: float = 0.15, test: float = 0.15, seed: int = 0) -> Splits:
    """A deterministic, stratified split: each class is shuffled and cut in the same proportions.

    Each class has its own random stream (:func:`class_rng`: the seed and the class name), so a class is
    split the same way whichever other classes the dataset holds: evaluating a bundle on a folder with only
    some of its classes tests on exactly the images the build held out. Every class with at least three
    samples gets at least one validation and one test sample, so small classes are still measured.
    With ``ds.groups``, whole groups are shuffled and cut instead of samples (the same proportions of groups);
    ``ds.augmented`` samples are left out of validation and test.
    """
    if not (0.0 <= val < 1.0 and 0.0 <= test < 1.0 and val + test < 1.0):
        raise DatasetError(f"split fractions val={val} and test={test} must be in [0, 1) and sum to less than 1.")
    if ds.multilabel:
        return _split_multilabel(ds, val=val, test=test, seed=seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for cls, label in enumerate(ds.labels):
        idx = np.flatnonzero(ds.y == cls)
        units = [idx] if ds.groups is None else [idx[ds.groups[idx] == g] for g in np.unique(ds.groups[idx])]
        n = len(idx) if ds.groups is None else len(units)
        order = class_rng(seed, label).permutation(n)
        n_test = int(round(n * test))
        n_val = int(round(n * val))
        if n >= 3:  # keep each class visible in every part
            n_test, n_val = max(n_test, 1 if test > 0 else 0), max(n_val, 1 if val > 0 else 0)
        cuts = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
        for part, picked in cuts.items():
            if ds.groups is None:
                parts[part].append(idx[picked])
            else:
                parts[part].append(np.concatenate([units[i] for i in picked]) if len(picked) else idx[:0])
    chosen = {k: np.sort(np.concatenate(v)) for k, v in parts.items()}
    if ds.augmented is not None:
        for part in ("val", "test"):
            chosen[part] = chosen[part][~ds.augmented[chosen[part]]]
    return Splits(train=ds.subset(chosen["train"]), val=ds.subset(chosen["val"]), test=ds.subset(chosen["test"]))


def _split_multilabel(ds: Dataset, *, val: float, test: float, seed: int) -> Splits:
    """:func:`split_dataset` of a multi-label dataset: samples with the same label set are cut like a class
    (their own random stream: the seed and the set's name), then a label that has at least three samples but
    none in the validation or test part gets one moved there from training, so every label is measured."""
    keys = ["+".join(label for label, bit in zip(ds.labels, row) if bit) for row in ds.y]
    part = np.zeros(len(ds.y), dtype=np.int64)  # 0 train, 1 val, 2 test
    for key in sorted(set(keys)):
        idx = np.flatnonzero(np.asarray(keys, dtype=object) == key)
        idx = idx[class_rng(seed, key).permutation(len(idx))]
        n = len(idx)
        n_test, n_val = int(round(n * test)), int(round(n * val))
        if n >= 3:
            n_test, n_val = max(n_test, 1 if test > 0 else 0), max(n_val, 1 if val > 0 else 0)
        part[idx[:n_test]] = 2
        part[idx[n_test : n_test + n_val]] = 1
    for column in range(len(ds.labels)):
        has = np.flatnonzero(ds.y[:, column] == 1)
        for want, fraction in ((2, test), (1, val)):
            if len(has) >= 3 and fraction > 0 and not (part[has] == want).any():
                movable = has[part[has] == 0]
                if len(movable) > 1:  # keep one to train on
                    part[movable[class_rng(seed, ds.labels[column]).integers(len(movable))]] = want
    return Splits(
        train=ds.subset(np.flatnonzero(part == 0)),
        val=ds.subset(np.flatnonzero(part == 1)),
        test=ds.subset(np.flatnonzero(part == 2)),
    )


def thin_classes(splits: Splits) -> tuple[str, ...]:
    """One line per class the split left without a validation or test image (a class needs at least three
    images for one of each), saying what that costs and what to do."""
    lines = []
    for cls, label in enumerate(splits.labels):
        have = {part: _count(getattr(splits, part).y, cls) for part in ("train", "val", "test")}
        missing = [part for part in ("val", "test") if have[part] == 0 and len(getattr(splits, part).y)]
        if missing:
            n = sum(have.values())
            held = " or ".join("validation" if part == "val" else "test" for part in missing)
            lines.append(
                f"class '{label}' has {n} image{'s' if n != 1 else ''}, too few for the split: it gets no {held} "
                f"image, so its accuracy is not measured; add at least {max(1, 3 - n)} more (20 or more per class "
                "give a figure worth trusting)."
            )
    return tuple(lines)


def _count(y: np.ndarray, cls: int) -> int:
    """Samples of class ``cls`` (multi-label: samples that have label ``cls``)."""
    return int(y[:, cls].sum()) if y.ndim == 2 else int(np.sum(y == cls))


def label_masks(y: np.ndarray) -> np.ndarray:
    """Multi-label 0/1 rows (N, labels) as bit masks (bit i: label i), the device's form of a label set."""
    return (np.asarray(y, dtype=np.int64) << np.arange(y.shape[1], dtype=np.int64)).sum(axis=1)
