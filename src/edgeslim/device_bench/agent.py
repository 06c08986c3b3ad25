# mypy: allow-untyped-defs, allow-untyped-calls
"""The edgeslim bench agent: the source of the one file uploaded to (or run on) the benchmark device.

What is uploaded is built from this file by :func:`edgeslim.device_bench.agent_build.build_agent`:
each import marked ``# edgeslim:inline`` is replaced by the source of the runner module it names
(``runtimes/litert.py``, ``runtimes/onnxruntime.py``), the same runners the host verifies
artefacts with. The built script needs only the standard library, numpy and an inference
runtime (onnxruntime, ai-edge-litert, tflite-runtime or tensorrt); it never imports edgeslim or torch.
With ``--energy`` it also measures energy per inference after the timed runs, with the sensor
readers of ``energy/`` (pasted in the same way; ``energy`` events mark the idle and active phases). It talks to the host through JSON lines
on stdout, each prefixed with ``@@edgeslim``: ``lock_wait``, ``locked``, ``loaded``, ``run``
(one per timed run), then ``result`` or ``error``.

Usage (run by the host; each argument is shell-quoted there)::

    python3 agent.py bench --model M.onnx --runs 50 --warmup 5 --threads 4 [--runtime NAME]
                           [--inputs X.npz] [--return-outputs] [--lock FILE]
                           [--energy auto|SENSOR] [--energy-seconds S]
    python3 agent.py probe [--workdir DIR]
    python3 agent.py install-wheels --into DIR WHEEL...
"""

from __future__ import annotations

import argparse
import fcntl
import importlib
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import sys
import time
import zipfile

from edgeslim.device_bench.energy.base import SENSORS, SensorUnavailable  # edgeslim:inline
from edgeslim.device_bench.energy.hwmon import HwmonSensor  # edgeslim:inline
from edgeslim.device_bench.energy.jetson import JetsonIioSensor  # edgeslim:inline
from edgeslim.device_bench.energy.measure import detect_sensor, measure_energy  # edgeslim:inline
from edgeslim.device_bench.energy.nvidia import NvidiaSmiSensor, NvmlSensor  # edgeslim:inline
from edgeslim.device_bench.energy.pmic import PmicSensor  # edgeslim:inline
from edgeslim.device_bench.energy.rapl import RaplSensor  # edgeslim:inline
from edgeslim.device_bench.runtimes import RUNNERS  # edgeslim:runners

PREFIX = "@@edgeslim "
AGENT_VERSION = 2
EXIT_RUNTIME_MISSING = 3
EXIT_ERROR = 4
#: Images per runtime call when the agent computes top-1 (models with a fixed batch use theirs).
EVAL_BATCH = 32
#: runtime name -> runner class (in order of preference per file suffix); the build pastes the host's runners
RUNTIMES = {cls.name: cls for cls in RUNNERS}
#: The energy readers (each registered in SENSORS by its own module).
ENERGY_SENSORS = (RaplSensor, HwmonSensor, JetsonIioSensor, PmicSensor, NvmlSensor, NvidiaSmiSensor)


def emit(event, **data):
    """Write one event line to stdout (the host parses these)."""
    data["event"] = event
    sys.stdout.write(PREFIX + json.dumps(data) + "\n")
    sys.stdout.flush()


def _import(module):
    return importlib.import_module(module)


def available(name):
    """The version of runtime ``name`` if importable, else None."""
    cls = RUNTIMES[name]
    try:
        mod = _import(cls.module)
    except Exception:
        return None
    return str(getattr(mod, "__version__", None) or _dist_version(cls.pip_name) or "unknown")


def _version_of(module):
    try:
        return _import(module).__version__
    except ImportError:
        return None


def _dist_version(dist):
    try:
        return importlib.metadata.version(dist)
    except Exception:
        return None


def pick_runtime(model, forced):
    """The runtime to use: the forced one, else the first installed one for the file's suffix."""
    if forced and forced != "auto":
        if forced not in RUNTIMES:
            fail("bad_runtime", f"unknown runtime {forced!r}; known: {', '.join(RUNTIMES)}")
        names = [forced]
    else:
        suffix = os.path.splitext(model)[1].lower()
        names = [n for n, c in RUNTIMES.items() if suffix in c.suffixes]
        if not names:
            fail("bad_runtime", f"no runtime runs {suffix!r} files; known: {', '.join(RUNTIMES)}")
    for name in names:
        version = available(name)
        if version:
            return name, version
    pips = " or ".join(RUNTIMES[n].pip_name for n in names)
    fail("runtime_missing", f"runtime {' / '.join(names)} is not installed for {sys.executable}",
         EXIT_RUNTIME_MISSING, runtime=names[0], pip=RUNTIMES[names[0]].pip_name,
         hint=f"install it on the device: {sys.executable} -m pip install --user {RUNTIMES[names[0]].pip_name}"
              f" (any of: {pips}), or offline: edgeslim device setup TARGET --runtime {names[0]}")
    raise SystemExit(EXIT_RUNTIME_MISSING)


def fail(kind, message, code=EXIT_ERROR, **extra):
    """Report an error event and exit."""
    emit("error", kind=kind, message=message, **extra)
    sys.exit(code)


def _read(path, key=None):
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    if key is None:
        return text.strip()
    for line in text.splitlines():
        k, _, v = line.partition(":")
        if k.strip().lower() == key:
            return v.strip()
    return None


def system_info():
    """Machine facts: uname -m, CPU model and cores, governor and temperature where readable."""
    temp = _read("/sys/class/thermal/thermal_zone0/temp")
    uname = platform.uname()
    return {
        "machine": uname.machine, "system": uname.system, "release": uname.release, "hostname": uname.node,
        "python": platform.python_version(), "python_executable": sys.executable,
        "cpu_model": _read("/proc/cpuinfo", "model name") or _read("/proc/cpuinfo", "model")
        or _read("/proc/cpuinfo", "hardware") or platform.processor() or None,
        "cpu_cores": os.cpu_count(),
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "temperature_c": round(int(temp) / 1000.0, 1) if temp and temp.lstrip("-").isdigit() else None,
    }


def peak_rss_mb():
    """Peak resident set size of this process in MiB (VmHWM: ru_maxrss would carry the parent's over exec)."""
    hwm = _read("/proc/self/status", "vmhwm")
    return int(hwm.split()[0]) / 1024.0 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def acquire_lock(path, timeout):
    """Hold an exclusive flock on ``path`` (one bench per device); report waiting."""
    handle = open(path, "a+")  # noqa: SIM115 - held until exit
    start = time.time()
    announced = False
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if not announced:
                handle.seek(0)
                emit("lock_wait", lock=path, holder=handle.read().strip())
                announced = True
            if time.time() - start > timeout:
                fail("lock_timeout", f"device busy: {path} held for more than {timeout} s by {handle.read()!r}")
            time.sleep(0.05)
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} since {time.time():.3f}\n")
    handle.flush()
    waited = time.time() - start
    emit("locked", lock=path, waited_s=waited)
    return handle, waited


def make_feeds(np, runner, specs, inputs_path):
    """Inputs for the timed runs: the first batch of ``x`` in the .npz, else seeded random data."""
    data = dict(np.load(inputs_path)) if inputs_path else {}
    feeds = {}
    rng = np.random.default_rng(0)
    for name, shape, dtype in specs:
        if name in data or (len(specs) == 1 and "x" in data):
            arr = (data[name] if name in data else data["x"])[: shape[0]]
            feeds[name] = runner.adapt(arr) if len(specs) == 1 else arr.astype(dtype)
        elif -1 in shape:
            fail("bad_input", f"input {name!r} of the model has dynamic dimensions {shape} (-1: unknown) and the file "
                 "records no example shape: pass inputs of the "
                 "size to time (an .npz with x; CLI: edgeslim bench --inputs FILE.npz)")
        elif "int" in dtype:
            feeds[name] = rng.integers(0, 2, size=shape).astype(dtype)
        else:
            feeds[name] = rng.standard_normal(shape).astype(dtype)
    return feeds, data


def top1(np, runner, data):
    """``(top-1, images, batch)`` over ``x``/``y`` of the uploaded .npz, through the runner's ``predict``.

    Batches have the model's fixed batch size, else :data:`EVAL_BATCH` images.
    """
    x, y = data["x"], data["y"]
    batch = runner.batch or EVAL_BATCH
    correct = 0
    for i in range(0, len(x), batch):
        out = np.asarray(runner.predict(x[i:i + batch]))
        correct += int((out.reshape(len(out), -1).argmax(1) == y[i:i + batch]).sum())
    return (correct / len(x) if len(x) else None), len(x), batch


def percentile(sorted_ms, q):
    """Linear-interpolated percentile ``q`` (0-100) of sorted values (numpy's default method)."""
    pos = (len(sorted_ms) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_ms) - 1)
    return sorted_ms[lo] + (sorted_ms[hi] - sorted_ms[lo]) * (pos - lo)


def cmd_bench(args):
    """Load, warm up, time ``runs`` runs and report everything as one ``result`` event."""
    try:
        np = _import("numpy")
    except ImportError:
        fail("runtime_missing", f"numpy is not installed for {sys.executable}", EXIT_RUNTIME_MISSING,
             runtime="numpy", pip="numpy", hint=f"install it on the device: {sys.executable} -m pip install --user numpy"
             " (or: sudo apt install python3-numpy), or offline: edgeslim device setup TARGET")
    name, version = pick_runtime(args.model, args.runtime)
    lock, waited = acquire_lock(args.lock, args.lock_timeout) if args.lock else (None, 0.0)
    locked_at = time.time()
    t0 = time.perf_counter()
    runner = RUNTIMES[name](args.model, threads=args.threads or None)
    load_ms = (time.perf_counter() - t0) * 1e3
    specs = runner.input_specs()
    feeds, data = make_feeds(np, runner, specs, args.inputs)
    emit("loaded", runtime=name, runtime_version=version, load_ms=load_ms, runtime_settings=runner.settings,
         inputs=[{"name": n, "shape": list(np.shape(feeds[n])), "dtype": d} for n, _, d in specs])
    for _ in range(args.warmup):
        runner.run(feeds)
    latencies = []
    for i in range(args.runs):
        t = time.perf_counter_ns()
        outs = runner.run(feeds)
        ms = (time.perf_counter_ns() - t) / 1e6
        latencies.append(ms)
        emit("run", i=i, ms=ms)
    s = sorted(latencies)
    mean = sum(s) / len(s)
    result = {
        "runtime": name, "runtime_version": version, "numpy_version": np.__version__, "agent_version": AGENT_VERSION,
        "runs": args.runs, "warmup": args.warmup, "threads": args.threads, "latencies_ms": latencies,
        "p50": percentile(s, 50), "p90": percentile(s, 90), "p99": percentile(s, 99), "mean": mean,
        "std": (sum((v - mean) ** 2 for v in s) / len(s)) ** 0.5, "min": s[0], "max": s[-1], "load_ms": load_ms,
        "inputs": [{"name": n, "shape": list(np.shape(feeds[n])), "dtype": d} for n, _, d in specs], "lock_wait_s": waited,
        "locked_at": locked_at, "runtime_settings": runner.settings,
        "artifact_metadata": {k: v for k, v in runner.metadata.items() if k.startswith("edgeslim.")}, **system_info(),
    }
    if args.energy:
        result.update(bench_energy(args, runner, feeds))
    if args.return_outputs:
        result["outputs"] = [np.asarray(o).tolist() for o in outs]
    if data and "y" in data:
        result["top1"], result["top1_n"], result["top1_batch"] = top1(np, runner, data)
    result["peak_rss_mb"] = peak_rss_mb()
    result["released_at"] = time.time()
    emit("result", **result)
    if lock is not None:
        lock.close()


def _energy_infer(runner, feeds, sensor):
    """One inference for the energy loop; an ``energy`` event every 10 s keeps the host's idle timeout at bay."""
    last = [time.monotonic()]

    def infer():
        runner.run(feeds)
        if time.monotonic() - last[0] > 10.0:
            emit("energy", phase="active", sensor=sensor)
            last[0] = time.monotonic()

    return infer


def bench_energy(args, runner, feeds):
    """Energy per inference of ``runner.run(feeds)`` (keys all None, with the reason, when no sensor can be read)."""
    name = args.energy
    prefer = tuple(getattr(runner, "energy_sensors", ())) if name == "auto" else (name,)
    if name != "auto" and name not in SENSORS:
        fail("bad_energy_sensor", f"unknown energy sensor {name!r}; known: auto, {', '.join(SENSORS)}")
    sensor, reason = detect_sensor(args.energy_root, prefer=prefer, only=name != "auto")
    if sensor is not None:
        emit("energy", phase="idle", sensor=sensor.description, seconds=args.energy_seconds)
        try:
            out = measure_energy(sensor, _energy_infer(runner, feeds, sensor.description), idle_s=args.energy_seconds,
                                 active_s=args.energy_seconds, min_runs=min(args.runs, 10),
                                 on_phase=lambda phase: emit("energy", phase=phase, sensor=sensor.description))
            out["energy_unavailable_reason"] = None
            return out
        except SensorUnavailable as exc:
            reason = f"not available: {sensor.description} stopped answering during the measurement: {exc.reason}"
    return {"joules_per_inference": None, "avg_watts": None, "energy_sensor": None, "energy_unavailable_reason": reason}


def cmd_probe(args):
    """Report what the device has and lacks: arch, python, numpy, runtimes, free disk."""
    info = system_info()
    info["numpy_version"] = _version_of("numpy")
    info["runtimes"] = {n: available(n) for n in RUNTIMES}
    info["runtime_pips"] = {n: c.pip_name for n, c in RUNTIMES.items()}
    info["python_tag"] = "{}.{}".format(*sys.version_info[:2])
    info["libc"] = "-".join(platform.libc_ver())
    path = os.path.expanduser(args.workdir)
    os.makedirs(path, exist_ok=True)
    info["workdir"] = path
    info["free_bytes"] = shutil.disk_usage(path).free
    emit("probe", **info)


def cmd_install_wheels(args):
    """Unpack wheels into a user-owned folder (no pip needed on the device)."""
    os.makedirs(args.into, exist_ok=True)
    names = []
    for wheel in args.wheels:
        with zipfile.ZipFile(wheel) as zf:
            for member in zf.infolist():
                target = os.path.realpath(os.path.join(args.into, member.filename))
                if not target.startswith(os.path.realpath(args.into) + os.sep):
                    fail("bad_wheel", f"{wheel}: unsafe path {member.filename!r}")
                zf.extract(member, args.into)
                mode = member.external_attr >> 16
                if mode & 0o111:
                    os.chmod(target, mode & 0o777)
        names.append(os.path.basename(wheel))
    emit("installed", into=args.into, wheels=names)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="edgeslim-agent")
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench")
    b.add_argument("--model", required=True)
    b.add_argument("--runtime", default="auto")
    b.add_argument("--runs", type=int, default=50)
    b.add_argument("--warmup", type=int, default=5)
    b.add_argument("--threads", type=int, default=0)
    b.add_argument("--inputs")
    b.add_argument("--return-outputs", action="store_true")
    b.add_argument("--lock")
    b.add_argument("--lock-timeout", type=float, default=3600.0)
    b.add_argument("--site", help="a folder of wheels unpacked by `edgeslim device setup` (used if it exists)")
    b.add_argument("--energy", help="measure energy per inference with this sensor (auto: the device's first)")
    b.add_argument("--energy-seconds", type=float, default=3.0, help="seconds of idle baseline and of inference")
    b.add_argument("--energy-root", default="/", help=argparse.SUPPRESS)  # a captured sysfs tree (tests)
    p = sub.add_parser("probe")
    p.add_argument("--workdir", default="~/.cache/edgeslim-bench")
    p.add_argument("--site")
    w = sub.add_parser("install-wheels")
    w.add_argument("--into", required=True)
    w.add_argument("wheels", nargs="+")
    args = parser.parse_args(argv)
    site = getattr(args, "site", None)
    if site and os.path.isdir(site):
        sys.path.insert(0, site)
    handler = {"bench": cmd_bench, "probe": cmd_probe, "install-wheels": cmd_install_wheels}[args.cmd]
    try:
        handler(args)
    except SystemExit:
        raise
    except BaseException as exc:
        fail(type(exc).__name__, f"{type(exc).__name__}: {exc}")


if __name__ == "__main__":
    main()
