"""What every energy sensor reader shares: the reader base class, its registry and the I/O helpers.

A reader is ONE file under :mod:`edgeslim.device_bench.energy` that registers a :class:`Sensor`
subclass with :func:`register_sensor`. Readers run ON the benchmark device, inside the uploaded
agent (:func:`edgeslim.device_bench.agent_build.build_agent` pastes them in), so every module of
this package imports only the standard library (and the other modules of this package, which the
build pastes before it; annotations only name types, since a board may run Python 3.8). Tools the device may have (``vcgencmd``, ``nvidia-smi``) are called
through an injectable *runner* ``runner(argv) -> stdout``; sysfs is read below a *root* folder
(default ``/``), so tests point a reader at a tree written into ``tests/``.

A sensor is either a set of cumulative energy counters (``kind = "energy"``, read in joules, each
with the range at which it wraps around) or a set of instantaneous power readings (``kind =
"power"``, watts, integrated over time by :mod:`.measure`). ``totals`` names the channels whose
sum is the energy reported; the other channels are shown as a breakdown only.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable

#: Seconds a sensor command may take before it counts as hung.
COMMAND_TIMEOUT_S = 10.0


class SensorUnavailable(Exception):
    """This sensor cannot be read on this device.

    Args:
        reason: Why, in words a user can act on.
        present: True when the hardware is there but cannot be read (permissions, a failing tool).
    """

    def __init__(self, reason: str, *, present: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.present = present


class Sensor:
    """One way of reading energy or power on the device.

    Subclasses set ``name`` (registry name), ``source`` (what is absent when it is absent: used
    in the "not available" message), implement :meth:`probe` and :meth:`read`, and fill the
    instance attributes.

    Attributes:
        kind: ``"energy"`` (cumulative counters, joules) or ``"power"`` (instantaneous watts).
        channels: Channel names, in reading order.
        totals: Channels summed into the reported energy.
        wrap_j: Energy channel -> counter range in joules (a smaller reading than the last one wrapped).
        interval_s: Sampling period the measurement uses for this sensor.
        description: The sensor used, as reported (``rapl package-0 (/sys/class/powercap/intel-rapl:0)``).
    """

    name = ""
    source = ""
    #: Order of preference when the device has several sensors (lower first).
    priority = 100
    #: Default sampling period in seconds (commands are slower to call than sysfs files are to read).
    interval_s = 0.01

    def __init__(self) -> None:
        self.kind = "energy"
        self.channels: list[str] = []
        self.totals: list[str] = []
        self.wrap_j: dict[str, float] = {}
        self.description = self.name

    @classmethod
    def probe(cls, root: str = "/", runner: Callable[[list[str]], str] | None = None) -> Sensor:
        """The sensor of this kind on the device below ``root``.

        Args:
            root: Where the device's file system starts (``/``; a captured tree in tests).
            runner: ``runner(argv) -> stdout`` for commands (default :func:`run_command`); raises
                ``FileNotFoundError`` when the command is not installed.

        Raises:
            SensorUnavailable: There is none, or it cannot be read (the reason says which and what to do).
        """
        raise NotImplementedError

    def read(self) -> dict[str, float]:
        """One reading per channel: joules (``kind == "energy"``) or watts (``kind == "power"``)."""
        raise NotImplementedError


#: registry name -> sensor class (:func:`sensor_order` sorts them by preference).
SENSORS: dict[str, type[Sensor]] = {}


def register_sensor(name: str) -> Callable[[type[Sensor]], type[Sensor]]:
    """Decorator: register a :class:`Sensor` subclass as ``name`` (duplicates refused), returning it unchanged."""

    def decorator(cls: type[Sensor]) -> type[Sensor]:
        if name in SENSORS:
            raise ValueError(
                f"energy sensor {name!r} is already registered (by {SENSORS[name].__name__}); pick another name"
            )
        cls.name = name
        SENSORS[name] = cls
        return cls

    return decorator


def sensor_order() -> list[str]:
    """Registered sensor names, most preferred first (``priority``, then name)."""
    return sorted(SENSORS, key=lambda n: (SENSORS[n].priority, n))


def run_command(argv: list[str]) -> str:
    """The default runner: ``argv``'s stdout.

    Raises:
        FileNotFoundError: The command is not installed.
        SensorUnavailable: It failed or timed out (present: the tool is there).
    """
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise SensorUnavailable(f"{argv[0]} did not answer within {COMMAND_TIMEOUT_S:g} s", present=True) from exc
    if proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip().splitlines()
        raise SensorUnavailable(
            f"{' '.join(argv)} failed (exit {proc.returncode}): {err[-1] if err else ''}".rstrip(), present=True
        )
    return proc.stdout


def sysfs_path(root: str, path: str) -> str:
    """``path`` (absolute, e.g. ``/sys/class/hwmon``) below ``root``."""
    return os.path.join(root, path.lstrip("/"))


def read_text(path: str) -> str | None:
    """A sysfs attribute's stripped text, None if it does not exist.

    Raises:
        PermissionError: The file exists but this user may not read it.
    """
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        return None
    except PermissionError:
        raise
    except OSError:  # EIO/ENODATA from a sensor that is momentarily not answering
        return None


def read_number(path: str) -> float | None:
    """A numeric sysfs attribute, None if missing or not a number."""
    text = read_text(path)
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def host_name() -> str:
    """This device's host name, for messages."""
    return os.uname().nodename or "this device"
