"""Device profiles: the shipped ones load, and every kind of mistake in a profile is a ProfileError that
names the file and the key and suggests the fix."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

import pytest

from edgekit.profiles import (
    Delegate,
    Profile,
    QuantDtype,
    Target,
    available_profiles,
    load_all_profiles,
    load_profile,
    load_profile_file,
)
from edgekit_agent.contract.errors import EdgekitError, ExitStatus, ProfileError

REPO = Path(__file__).resolve().parents[2]
CPU_PROFILES = ("raspberry-pi-4", "raspberry-pi-5", "raspberry-pi-zero-2w")

GOOD = """
name = "my-board"
description = "a test board"
target = "cpu"

[tensors]
input_dtype = "uint8"
output_dtype = "int8"

[runtime]
num_threads = 2
delegate = "xnnpack"

[memory]
ram_bytes = 1_048_576
flash_bytes = 4_194_304
margin = 0.1
"""


def write(tmp_path: Path, text: str, name: str = "board.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("name", CPU_PROFILES)
def test_shipped_cpu_profiles_load_by_name_from_package_data(name: str) -> None:
    p = load_profile(name)
    assert p.name == name and p.target is Target.CPU
    assert p.input_dtype in (QuantDtype.INT8, QuantDtype.UINT8)
    assert p.ram_bytes > 0 and p.flash_bytes > 0 and 0 <= p.margin < 1
    # Resolved through importlib.resources (the installed package's data), not a path relative to the cwd.
    pkg_dir = Path(str(resources.files("edgekit.firmware_profiles")))
    assert Path(p.source).parent.resolve() == pkg_dir.resolve()
    assert name in available_profiles()


def test_every_shipped_profile_is_valid_and_round_trips_to_a_manifest_dict() -> None:
    profiles = load_all_profiles()
    assert {p.name for p in profiles} >= set(CPU_PROFILES)
    for p in profiles:
        d = p.to_dict()
        assert d["name"] == p.name and d["target"] == str(p.target)
        assert d["runtime"] == {"num_threads": p.num_threads, "delegate": str(p.delegate)}
        assert "source" not in d  # the workstation's path means nothing on the device


def test_profile_loaded_from_a_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, GOOD)
    p = load_profile(str(path))
    assert p == load_profile_file(path)
    assert (p.name, p.input_dtype, p.output_dtype, p.num_threads) == ("my-board", QuantDtype.UINT8, QuantDtype.INT8, 2)
    assert p.delegate is Delegate.XNNPACK and p.ram_bytes == 1 << 20 and p.margin == pytest.approx(0.1)
    assert p.source == str(path)
    # A bare file name in the current directory is a path too, not an unknown shipped name.
    monkeypatch.chdir(tmp_path)
    assert load_profile("board.toml").name == "my-board"


def test_unknown_name_suggests_the_nearest_shipped_profile() -> None:
    with pytest.raises(ProfileError) as e:
        load_profile("raspbery-pi-4")
    msg = str(e.value)
    assert "unknown profile 'raspbery-pi-4'" in msg and "Did you mean 'raspberry-pi-4'?" in msg
    assert "edgekit profiles" in msg  # says where to look
    assert e.value.exit_status is ExitStatus.BAD_INPUT
    assert isinstance(e.value, ValueError) and isinstance(e.value, EdgekitError)


def test_unrelated_unknown_name_lists_known_profiles_without_a_bogus_hint() -> None:
    with pytest.raises(ProfileError) as e:
        load_profile("toaster")
    assert "Did you mean" not in str(e.value)
    for name in CPU_PROFILES:
        assert name in str(e.value)


# Every profile mistake names the file and says what is wrong (unknown keys with a suggestion, wrong types,
# bad enum values with the choices, bad values and missing keys).
@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("num_threads = 2", "num_thread = 2", "unknown key 'runtime.num_thread'. Did you mean 'num_threads'?"),
        ("[memory]", "[memroy]", "unknown key 'memroy'. Did you mean 'memory'?"),
        (
            'description = "a test board"',
            'descripton = "a test board"',
            "unknown key 'descripton'. Did you mean 'description'?",
        ),
        ("num_threads = 2", 'num_threads = "2"', "'runtime.num_threads' must be an integer, got str"),
        ("ram_bytes = 1_048_576", "ram_bytes = 1.5", "'memory.ram_bytes' must be an integer, got float"),
        ("margin = 0.1", "margin = true", "'memory.margin' must be an integer or a number, got bool"),
        ('name = "my-board"', "name = 7", "'name' must be a string, got int"),
        (
            'target = "cpu"',
            'target = "cpux"',
            "target = 'cpux' is not one of ['cpu', 'edgetpu', 'mcu']. Did you mean 'cpu'?",
        ),
        (
            'input_dtype = "uint8"',
            'input_dtype = "unit8"',
            "tensors.input_dtype = 'unit8' is not one of ['int8', 'uint8']. Did you mean 'uint8'?",
        ),
        ('delegate = "xnnpack"', 'delegate = "xnnpak"', "runtime.delegate = 'xnnpak' is not one of"),
        ("num_threads = 2", "num_threads = 0", "num_threads must be at least 1"),
        ("margin = 0.1", "margin = 1.5", "margin is a fraction"),
        ("ram_bytes = 1_048_576\n", "", "required key 'memory.ram_bytes' is missing"),
        ('target = "cpu"', 'target = "edgetpu"', "an edgetpu target needs runtime.delegate"),
        # The name becomes part of bundle paths (OUT/NAME-PROFILE/): a plain name, like a device's.
        ('name = "my-board"', 'name = "../../escape"', "name = '../../escape' is not a valid profile name"),
        ('name = "my-board"', 'name = ""', "name = '' is not a valid profile name"),
        ('name = "my-board"', 'name = ".hidden"', "not starting with a dot"),
        ('name = "my-board"', 'name = "a/b"', "1-64 letters, digits, '.', '_' or '-'"),
        ('name = "my-board"', f'name = "{"x" * 65}"', "is not a valid profile name"),
    ],
)
def test_profile_mistake_names_file_and_what_is_wrong(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(ProfileError) as e:
        load_profile(path)
    assert str(path) in str(e.value) and expected in str(e.value)


def test_a_section_given_as_a_plain_value_is_a_type_error(tmp_path: Path) -> None:
    text = "runtime = 4\n" + GOOD.replace('[runtime]\nnum_threads = 2\ndelegate = "xnnpack"\n', "")
    assert "num_threads" not in text
    path = write(tmp_path, text)
    with pytest.raises(ProfileError) as e:
        load_profile(path)
    assert "'runtime' must be a table ([runtime] section), got int" in str(e.value)


def test_missing_file_and_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="no such profile file"):
        load_profile(tmp_path / "nope.toml")
    bad = write(tmp_path, "name = \n")
    with pytest.raises(ProfileError, match="not valid TOML"):
        load_profile(bad)


def test_profile_dataclass_is_frozen() -> None:
    p = load_profile("raspberry-pi-4")
    with pytest.raises(AttributeError):
        p.num_threads = 1  # type: ignore[misc]
    assert isinstance(p, Profile)


def test_profiles_ship_in_the_wheel(tmp_path: Path) -> None:
    """A plain `pip install .` has the profiles: build the wheel from a copy of the sources and look inside."""
    src = tmp_path / "src"
    src.mkdir()
    for d in ("host", "device", "firmware_profiles"):
        shutil.copytree(REPO / d, src / d, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(REPO / "pyproject.toml", src)
    readme = REPO / "README.md"
    (src / "README.md").write_text(readme.read_text() if readme.exists() else "edgekit\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("edgekit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for name in CPU_PROFILES:
        assert f"edgekit/firmware_profiles/{name}.toml" in names


def test_a_plain_profile_name_of_64_characters_is_fine(tmp_path: Path) -> None:
    name = "Board_2.v-" + "x" * 54
    assert load_profile(write(tmp_path, GOOD.replace('name = "my-board"', f'name = "{name}"'))).name == name
