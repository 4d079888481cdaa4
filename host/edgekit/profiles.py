"""Device profiles: what a model must fit. Data (``firmware_profiles/NAME.toml``), typed and validated here.

A profile is found by name among the profiles shipped with edgekit (package data, so a plain
``pip install`` has them), or by a path to a TOML file. Unknown names and keys are errors that
suggest the nearest valid one.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from edgekit_agent.contract.errors import ProfileError


class Target(StrEnum):
    CPU = "cpu"
    EDGETPU = "edgetpu"
    MCU = "mcu"


class QuantDtype(StrEnum):
    INT8 = "int8"
    UINT8 = "uint8"


class Delegate(StrEnum):
    XNNPACK = "xnnpack"
    NONE = "none"
    EDGETPU = "edgetpu"


# A profile name becomes part of bundle paths (OUT/NAME-PROFILE/) and manifests: a plain file-name component,
# like a device or bundle name.
PROFILE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")

# The TOML layout: section -> {key: type}. Anything else in a file is an error with a suggestion.
_SCHEMA: dict[str, dict[str, type | tuple[type, ...]]] = {
    "": {"name": str, "description": str, "target": str, "datasheet": str},
    "tensors": {"input_dtype": str, "output_dtype": str},
    "runtime": {"num_threads": int, "delegate": str},
    "memory": {"ram_bytes": int, "flash_bytes": int, "margin": (int, float), "runtime_flash_bytes": int},
    "ops": {"builtin": list},
}


@dataclass(frozen=True, slots=True)
class Profile:
    """A device: target kind, tensor dtypes, runtime settings and budgets.

    ``ram_bytes`` is the RAM left for the model (for an MCU: the tensor arena after the firmware's own
    use); ``flash_bytes`` the storage left for the model (and, on an MCU, the runtime); ``margin`` a
    fraction added to measured figures before they are compared with the budgets (MCU kernels such as
    CMSIS-NN need scratch the host measurement does not see). ``ops`` is the op set the firmware
    registers (MCU) or supports (Edge TPU); ``None`` means every TFLite builtin.
    """

    name: str
    description: str
    target: Target
    input_dtype: QuantDtype = QuantDtype.INT8
    output_dtype: QuantDtype = QuantDtype.INT8
    num_threads: int = 1
    delegate: Delegate = Delegate.XNNPACK
    ram_bytes: int = 0
    flash_bytes: int = 0
    margin: float = 0.0
    runtime_flash_bytes: int = 0
    ops: tuple[str, ...] | None = None
    datasheet: str = ""
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        where = self.source or repr(self.name)
        if not PROFILE_NAME.fullmatch(self.name):
            raise ProfileError(
                f"{where}: name = {self.name!r} is not a valid profile name; "
                "use 1-64 letters, digits, '.', '_' or '-', "
                "not starting with a dot (it becomes part of bundle paths such as OUT/NAME-PROFILE/)."
            )
        if self.num_threads < 1:
            raise ProfileError(f"{where}: runtime.num_threads must be at least 1, got {self.num_threads}.")
        if self.ram_bytes <= 0 or self.flash_bytes <= 0:
            raise ProfileError(f"{where}: memory.ram_bytes and memory.flash_bytes must be positive.")
        if not 0.0 <= self.margin < 1.0:
            raise ProfileError(f"{where}: memory.margin is a fraction in [0, 1), got {self.margin}.")
        if self.target is Target.EDGETPU and self.delegate is not Delegate.EDGETPU:
            raise ProfileError(f'{where}: an edgetpu target needs runtime.delegate = "edgetpu".')

    @property
    def host_delegate(self) -> str:
        """The LiteRT delegate that computes here what the device computes: builtin kernels for a profile that
        asks for none (a microcontroller: TFLite Micro's reference kernels), else XNNPACK. The two round
        differently; a model's int8 outputs can differ by a few units (docs/agent.md, Self-test)."""
        return "none" if self.delegate is Delegate.NONE else "xnnpack"

    def to_dict(self) -> dict[str, Any]:
        """The form copied into a bundle's manifest (so the device never reads profile files)."""
        d = asdict(self)
        d.pop("source")
        d["ops"] = list(self.ops) if self.ops is not None else None
        d["runtime"] = {"num_threads": self.num_threads, "delegate": str(self.delegate)}
        for key in ("target", "input_dtype", "output_dtype", "delegate"):
            d[key] = str(d[key])
        return d


def _profiles_dir() -> Path:
    return Path(str(resources.files("edgekit.firmware_profiles")))


def available_profiles() -> list[str]:
    """Names of the profiles shipped with edgekit, sorted."""
    return sorted(p.stem for p in _profiles_dir().glob("*.toml"))


E = TypeVar("E", bound=StrEnum)


def _enum(enum: type[E], value: str, where: str, key: str) -> E:
    try:
        return enum(value)
    except ValueError:
        choices = [e.value for e in enum]
        hint = difflib.get_close_matches(value, choices, n=1)
        extra = f" Did you mean '{hint[0]}'?" if hint else ""
        raise ProfileError(f"{where}: {key} = '{value}' is not one of {choices}.{extra}") from None


def _type_names(typ: type | tuple[type, ...]) -> str:
    names = {"str": "a string", "int": "an integer", "float": "a number", "list": "a list"}
    types = typ if isinstance(typ, tuple) else (typ,)
    return " or ".join(names.get(t.__name__, t.__name__) for t in types)


def _check_keys(doc: dict[str, Any], where: str) -> None:
    for key, value in doc.items():
        if key in _SCHEMA and key != "":
            if not isinstance(value, dict):  # e.g. `runtime = 4` instead of a [runtime] table
                raise ProfileError(f"{where}: '{key}' must be a table ([{key}] section), got {type(value).__name__}.")
            allowed = _SCHEMA[key]
            for sub, subval in value.items():
                if sub not in allowed:
                    hint = difflib.get_close_matches(sub, list(allowed), n=1)
                    extra = f" Did you mean '{hint[0]}'?" if hint else f" Known keys: {sorted(allowed)}."
                    raise ProfileError(f"{where}: unknown key '{key}.{sub}'.{extra}")
                if not isinstance(subval, allowed[sub]) or isinstance(subval, bool):
                    raise ProfileError(
                        f"{where}: '{key}.{sub}' must be {_type_names(allowed[sub])}, got {type(subval).__name__} "
                        f"({subval!r}); fix the value in the profile file."
                    )
        elif key in _SCHEMA[""]:
            if not isinstance(value, str):
                raise ProfileError(f"{where}: '{key}' must be a string, got {type(value).__name__} ({value!r}).")
        else:
            known = list(_SCHEMA[""]) + [k for k in _SCHEMA if k]
            hint = difflib.get_close_matches(key, known, n=1)
            extra = f" Did you mean '{hint[0]}'?" if hint else f" Known keys and sections: {sorted(known)}."
            raise ProfileError(f"{where}: unknown key '{key}'.{extra}")


def parse_profile(doc: dict[str, Any], where: str) -> Profile:
    """Validate a parsed TOML document into a :class:`Profile`."""
    _check_keys(doc, where)
    for key in ("name", "target"):
        if key not in doc:
            raise ProfileError(f"{where}: required key '{key}' is missing.")
    tensors, runtime, memory = doc.get("tensors", {}), doc.get("runtime", {}), doc.get("memory", {})
    for key in ("ram_bytes", "flash_bytes"):
        if key not in memory:
            raise ProfileError(f"{where}: required key 'memory.{key}' is missing.")
    target = _enum(Target, doc["target"], where, "target")
    default_delegate = "edgetpu" if target is Target.EDGETPU else ("none" if target is Target.MCU else "xnnpack")
    ops = doc.get("ops", {}).get("builtin")
    if ops is not None and not all(isinstance(o, str) for o in ops):
        raise ProfileError(f'{where}: ops.builtin must be a list of operator names such as "CONV_2D".')
    return Profile(
        name=doc["name"],
        description=doc.get("description", ""),
        target=target,
        input_dtype=_enum(QuantDtype, tensors.get("input_dtype", "int8"), where, "tensors.input_dtype"),
        output_dtype=_enum(QuantDtype, tensors.get("output_dtype", "int8"), where, "tensors.output_dtype"),
        num_threads=int(runtime.get("num_threads", 1)),
        delegate=_enum(Delegate, runtime.get("delegate", default_delegate), where, "runtime.delegate"),
        ram_bytes=int(memory["ram_bytes"]),
        flash_bytes=int(memory["flash_bytes"]),
        margin=float(memory.get("margin", 0.0)),
        runtime_flash_bytes=int(memory.get("runtime_flash_bytes", 0)),
        ops=tuple(o.upper() for o in ops) if ops is not None else None,
        datasheet=doc.get("datasheet", ""),
        source=where,
    )


def load_profile_file(path: str | Path) -> Profile:
    """Read and validate one profile TOML file (any path)."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError(f"{path}: no such profile file.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: cannot read the profile ({exc}).") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: not valid TOML ({exc}).") from None
    return parse_profile(doc, str(path))


def load_profile(name_or_path: str | Path) -> Profile:
    """A shipped profile by name (``raspberry-pi-4``) or any profile TOML by path."""
    text = str(name_or_path)
    if text.endswith(".toml") or "/" in text or Path(text).is_file():
        return load_profile_file(text)
    candidate = _profiles_dir() / f"{text}.toml"
    if candidate.is_file():
        return load_profile_file(candidate)
    names = available_profiles()
    hint = difflib.get_close_matches(text, names, n=1, cutoff=0.5)
    extra = f" Did you mean '{hint[0]}'?" if hint else ""
    raise ProfileError(
        f"unknown profile '{text}'.{extra} Known profiles: {', '.join(names)} (see `edgekit profiles`), "
        "or give the path of a profile TOML file."
    )


def load_all_profiles() -> list[Profile]:
    """Every profile shipped with edgekit, validated."""
    return [load_profile(name) for name in available_profiles()]
