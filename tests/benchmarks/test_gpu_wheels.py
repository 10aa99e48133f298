"""The wheels that travel to the device: the right tags for CPython 3.12 x86-64, one
version of each pinned peer, their needs met, and the size against one call's 64 MiB."""

import zipfile

import pytest

import gpu_wheels
from gpu_wheels import PINS, pip_download_command, problems, size_report

# the file names PyPI serves for the pins (seen 2026-11-29)
SERVED = ["bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl",
          "torchao-0.18.0-cp310-abi3-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
          "lion_pytorch-0.2.5-py3-none-any.whl", "came_pytorch-0.1.3-py3-none-any.whl"]


def wheel(folder, filename, requires=("torch",)):
    name, version = filename.split("-")[:2]
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(folder / filename, "w") as archive:
        archive.writestr(f"{name}-{version}.dist-info/METADATA", metadata)
    return folder / filename


def served(folder, **replace):
    return [wheel(folder, replace.get(f, f)) for f in SERVED if replace.get(f, f)]


def test_the_served_wheels_pass(tmp_path):
    assert problems(served(tmp_path)) == []


@pytest.mark.parametrize("change,problem", [
    ({SERVED[1]: "torchao-0.18.0-cp313-cp313-manylinux_2_28_x86_64.whl"}, "no tag installs on CPython 3.12"),
    ({SERVED[0]: "bitsandbytes-0.50.2-py3-none-manylinux_2_34_x86_64.whl"}, "no tag installs"),  # glibc too new
    ({SERVED[0]: "bitsandbytes-0.50.2-py3-none-win_amd64.whl"}, "no tag installs"),
    ({SERVED[0]: "bitsandbytes-0.50.2-py3-none-manylinux_2_24_aarch64.whl"}, "no tag installs"),
    ({SERVED[2]: "lion_pytorch-0.2.4-py3-none-any.whl"}, "lion-pytorch: want exactly 0.2.5, found ['0.2.4']"),
    ({SERVED[3]: ""}, "came-pytorch: want exactly 0.1.3, found none"),
])
def test_a_wheel_that_would_not_install_is_named(tmp_path, change, problem):
    found = problems(served(tmp_path, **change))
    assert any(problem in p for p in found), found


def test_two_versions_of_one_peer_and_unknown_wheels_are_refused(tmp_path):
    wheels = served(tmp_path) + [wheel(tmp_path, "lion_pytorch-0.2.4-py3-none-any.whl"),
                                 wheel(tmp_path, "einx-0.3.0-py3-none-any.whl")]
    found = problems(wheels)
    assert any("want exactly 0.2.5, found ['0.2.5', '0.2.4']" in p for p in found)
    assert any("unexpected wheel einx" in p for p in found)


def test_a_requirement_neither_on_the_image_nor_fetched_is_named(tmp_path):
    wheels = served(tmp_path)
    wheel(tmp_path, SERVED[2], requires=["torch>=1.6", "einx>=0.2", "pytest; extra == 'test'",
                                         "pywin32; sys_platform == 'win32'"])
    assert problems(wheels) == [f"{SERVED[2]} requires einx, which is neither on the image nor fetched"]


def test_pip_is_asked_for_exactly_the_pins_for_python_312_linux():
    command = pip_download_command(gpu_wheels.ROOT / ".whl")
    assert command[command.index("--python-version") + 1] == "3.12" and "--no-deps" in command
    assert [c for c in command if "==" in c] == [f"{n}=={v}" for n, v in PINS.items()]
    platforms = [command[i + 1] for i, c in enumerate(command) if c == "--platform"]
    assert "manylinux_2_24_x86_64" in platforms and "manylinux_2_28_x86_64" in platforms
    assert not any(p.startswith("manylinux_2_29") for p in platforms)


@pytest.mark.parametrize("wheel_bytes,tree_bytes,fits", [(40 << 20, 20 << 20, True), (64 << 20, 0, True),
                                                        (60 << 20, 5 << 20, False)])
def test_size_report_against_one_call(tmp_path, wheel_bytes, tree_bytes, fits):
    (tmp_path / "a.whl").write_bytes(b"\0" * wheel_bytes)
    report, ok = size_report([tmp_path / "a.whl"], tree_bytes)
    assert ok is fits and "of 64 MiB" in report and ("OVER" in report) is not fits
