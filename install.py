"""WebUI install hook: installs what the extension needs, never touching the WebUI's own pins.

Stable Diffusion WebUI runs this file at every start (with its venv's python, its root as the
working directory and ``launch`` importable). It must be fast and idempotent:

* the requirements live in ``requirements-host.txt`` beside this file (one place; tests read it);
* each is checked against the installed distributions with ``importlib.metadata`` only: when all
  are present at a version the specifier accepts, pip is not called at all;
* what is missing, or installed at a refused version, is installed one requirement per pip call
  (so a failure names its package), through ``launch.run_pip`` inside the WebUI and
  ``python -m pip`` outside it;
* every pip call gets a ``--constraint`` file holding the WebUI's own packages (:data:`NEVER_TOUCH`)
  at their installed versions, so pip fails rather than upgrading or downgrading them (e.g. a
  requirement that wants numpy 2 cannot move the WebUI's numpy 1.26.2); a requirements file that
  names one of them is refused outright.

A failed install prints the package, the pip command and the end of pip's output, and the script
exits with status 1 (the WebUI reports it and goes on starting). Training's diffusers/peft are not
installed here: ``easyphoto/train/env.py`` makes a separate environment for them.
"""

from __future__ import annotations

import functools
import importlib.metadata
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, NamedTuple, Optional, Sequence

PREFIX = "[EasyPhoto]"
REQUIREMENTS_FILE = Path(__file__).resolve().parent / "requirements-host.txt"

#: The WebUI's own pins (HOST.md): never installed, upgraded or downgraded from here.
#: protobuf too: WebUI 1.8+ pins 3.20.0 and restores it at every start, so moving it would only
#: break our face models on the next start (requirements-host.txt picks versions that accept it).
NEVER_TOUCH = frozenset({
    "gradio", "fastapi", "pydantic", "torch", "transformers", "numpy", "accelerate", "safetensors",
    "protobuf",
})

#: Lines of pip output shown when an install fails.
TAIL_LINES = 25

VersionOf = Callable[[str], Optional[str]]


class Requirement(NamedTuple):
    """One line of the requirements file: a distribution name and its version specifier."""

    name: str        # normalised (PEP 503): lower case, runs of "-_." as "-"
    specifier: str   # e.g. "==0.10.21", ">=1.16", "" for any version
    line: str        # the line as written, handed to pip

    def __str__(self) -> str:
        return self.line


class InstallError(Exception):
    """pip failed for one requirement: ``command`` and the tail of pip's output."""

    def __init__(self, requirement: Requirement, command: str, output: str):
        super().__init__(f"could not install {requirement}")
        self.requirement = requirement
        self.command = command
        self.output = output


class RequirementsError(ValueError):
    """The requirements file is unreadable, malformed, or names a package of the WebUI."""


# --- reading the requirements -----------------------------------------------------------------

def normalise(name: str) -> str:
    """PEP 503 name: ``Face_Recognition.models`` → ``face-recognition-models``."""
    return re.sub(r"[-_.]+", "-", name).lower()


_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*"               # name
                   r"((?:[<>=!~]=?=?\s*[A-Za-z0-9.*+!_-]+\s*,?\s*)*)$")  # specifiers


def parse_line(line: str) -> Requirement:
    """A ``name[specifiers]`` requirement (no extras, markers or URLs: the file needs none)."""
    match = _LINE.match(line.strip())
    if not match:
        raise RequirementsError(f"cannot read requirement {line.strip()!r} (expected name and "
                                "optional version specifiers, e.g. 'mediapipe==0.10.21')")
    specifier = re.sub(r"\s+", "", match.group(2)).rstrip(",")
    return Requirement(normalise(match.group(1)), specifier, line.strip())


def refuse_host_pins(requirements: Sequence[Requirement]) -> None:
    """Raise :class:`RequirementsError` if any requirement names one of :data:`NEVER_TOUCH`."""
    named = sorted({r.name for r in requirements} & NEVER_TOUCH)
    if named:
        raise RequirementsError(
            f"{', '.join(named)} must not be in {REQUIREMENTS_FILE.name}: these belong to the "
            f"WebUI ({', '.join(sorted(NEVER_TOUCH))}) and install.py never installs or changes "
            "them")


def read_requirements(path: Path = REQUIREMENTS_FILE) -> list[Requirement]:
    """The requirements in ``path`` (comments and blank lines skipped), host pins refused."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise RequirementsError(f"cannot read {path}: {exc}") from None
    lines = (raw.split("#", 1)[0].strip() for raw in text.splitlines())
    requirements = [parse_line(line) for line in lines if line]
    refuse_host_pins(requirements)
    return requirements


# --- comparing versions -----------------------------------------------------------------------

def _release(version: str) -> tuple[int, ...]:
    """Numeric release part: ``"2.1.2+cu121"`` → (2, 1, 2); ``"1.0rc1"`` → (1, 0)."""
    head = re.match(r"^\s*v?(\d+(?:\.\d+)*)", version)
    return tuple(int(p) for p in head.group(1).split(".")) if head else ()


def _padded(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    width = max(len(a), len(b))
    return a + (0,) * (width - len(a)), b + (0,) * (width - len(b))


def _clause_holds(version: str, operator: str, wanted: str) -> bool:
    """One ``<op><version>`` clause, on release numbers only (the fallback without packaging)."""
    if wanted.endswith(".*"):
        prefix = _release(wanted[:-2])
        same = _release(version)[:len(prefix)] == prefix
        return same if operator == "==" else not same
    have, want = _padded(_release(version), _release(wanted))
    if operator == "~=":
        stem = _release(wanted)[:-1]
        return have >= want and _release(version)[:len(stem)] == stem
    return {"==": have == want, "===": version == wanted, "!=": have != want,
            ">=": have >= want, "<=": have <= want, ">": have > want, "<": have < want}[operator]


def fallback_satisfies(version: str, specifier: str) -> bool:
    """Whether ``version`` meets ``specifier`` (comma-separated clauses), without packaging."""
    for clause in filter(None, specifier.split(",")):
        operator, wanted = re.match(r"^(===|==|!=|~=|>=|<=|>|<)(.+)$", clause).groups()
        if not _clause_holds(version, operator, wanted):
            return False
    return True


def satisfies(version: str, specifier: str) -> bool:
    """Whether ``version`` meets ``specifier`` (packaging when importable, else a fallback)."""
    if not specifier:
        return True
    try:
        from packaging.specifiers import SpecifierSet
        from packaging.version import InvalidVersion, Version
    except ImportError:
        return fallback_satisfies(version, specifier)
    try:
        return SpecifierSet(specifier).contains(Version(version), prereleases=True)
    except InvalidVersion:
        return fallback_satisfies(version, specifier)


# --- deciding and installing ------------------------------------------------------------------

def installed_version(name: str) -> Optional[str]:
    """Installed version of distribution ``name``, ``None`` when absent."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def to_install(requirements: Sequence[Requirement],
               version_of: VersionOf = installed_version) -> list[Requirement]:
    """The requirements that are missing or installed at a version their specifier refuses."""
    todo = []
    for requirement in requirements:
        version = version_of(requirement.name)
        if version is None or not satisfies(version, requirement.specifier):
            todo.append(requirement)
    return todo


def constraints_text(version_of: VersionOf = installed_version) -> str:
    """pip constraints that hold every :data:`NEVER_TOUCH` package where it is.

    An installed one is pinned to its version; an absent one gets ``<0``, which no release
    satisfies, so nothing can pull it in (e.g. a CUDA torch build).
    """
    lines = ["# EasyPhoto install.py: the WebUI's own packages stay as they are"]
    for name in sorted(NEVER_TOUCH):
        version = version_of(name)
        lines.append(f"{name}=={version}" if version else f"{name}<0")
    return "\n".join(lines) + "\n"


def _tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def pip_args(requirement: Requirement, constraints: Path) -> list[str]:
    """Arguments after ``python -m pip`` for one requirement."""
    return ["install", "--prefer-binary", "--constraint", str(constraints), requirement.line]


def _shell_word(arg: str) -> str:
    """``arg`` for a shell command line (sh or cmd): double-quoted unless plainly safe."""
    return arg if re.fullmatch(r"[A-Za-z0-9_./:=+-]+", arg) else f'"{arg}"'


def run_with_launch(launch, requirement: Requirement, constraints: Path) -> None:
    """Install through the WebUI's ``launch.run_pip``, which runs a shell command line."""
    args = " ".join(_shell_word(arg) for arg in pip_args(requirement, constraints))
    command = f'"{sys.executable}" -m pip {args}'
    try:
        launch.run_pip(args, f"EasyPhoto requirement: {requirement}")
    except subprocess.CalledProcessError as exc:
        output = f"{exc}\n{exc.output or ''}\n{exc.stderr or ''}"
        raise InstallError(requirement, command, _tail(output)) from None
    except Exception as exc:  # the WebUI raises RuntimeError; forks may raise anything
        raise InstallError(requirement, command, _tail(f"{type(exc).__name__}: {exc}")) from None


def run_with_pip(requirement: Requirement, constraints: Path) -> None:
    """Install with ``python -m pip`` (outside the WebUI)."""
    argv = [sys.executable, "-m", "pip", *pip_args(requirement, constraints)]
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        output = f"exit status {result.returncode}\n{result.stdout}\n{result.stderr}"
        raise InstallError(requirement, subprocess.list2cmdline(argv), _tail(output))


def import_launch():
    """The WebUI's ``launch`` module, or ``None`` outside the WebUI."""
    try:
        import launch
    except ImportError:
        return None
    return launch if hasattr(launch, "run_pip") else None


def install(requirements: Sequence[Requirement], runner: Callable[[Requirement, Path], None],
            version_of: VersionOf = installed_version) -> list[InstallError]:
    """Install each requirement still unmet (an earlier one may have brought it) with ``runner``.

    Prints one line per package installed; returns the failures (already printed).
    """
    failures = []
    with tempfile.TemporaryDirectory(prefix="easyphoto-install-") as folder:
        constraints = Path(folder) / "webui-pins.txt"
        constraints.write_text(constraints_text(version_of), encoding="utf-8")
        for requirement in requirements:
            before = version_of(requirement.name)
            if before is not None and satisfies(before, requirement.specifier):
                continue
            try:
                runner(requirement, constraints)
                after = version_of(requirement.name)
                if after is None or not satisfies(after, requirement.specifier):
                    raise InstallError(requirement, "pip", f"pip reported success but "
                                       f"{requirement.name} is {after or 'still missing'}")
            except InstallError as failure:
                report_failure(failure, constraints.read_text(encoding="utf-8"))
                failures.append(failure)
                continue
            was = f"replaced {before}" if before else "was missing"
            print(f"{PREFIX} installed {requirement.name} {after} ({was})")
    return failures


def report_failure(failure: InstallError, constraints: str) -> None:
    """Print which package failed, the pip command, the held pins and the end of pip's output."""
    held = ", ".join(line for line in constraints.splitlines() if not line.startswith("#"))
    print(f"{PREFIX} ERROR: could not install {failure.requirement} "
          f"(required by the EasyPhoto extension)")
    print(f"{PREFIX}   pip command: {failure.command}")
    print(f"{PREFIX}   WebUI packages held where they are: {held}")
    print(f"{PREFIX}   pip said (last lines):")
    for line in failure.output.splitlines():
        print(f"{PREFIX}     {line}")


# --- dependencies held back by the host -------------------------------------------------------

def unmet_dependencies(requirements: Sequence[Requirement],
                       version_of: VersionOf = installed_version) -> list[str]:
    """Dependencies of our installed requirements that the environment does not satisfy.

    Typically a package the WebUI pins and restores at each start (WebUI 1.8+ pins
    protobuf==3.20.0; mediapipe 0.10.21 needs protobuf>=4.25.3). Needs ``packaging``; without
    it nothing is reported. Metadata only: no import of the packages themselves.
    """
    try:
        from packaging.requirements import InvalidRequirement
        from packaging.requirements import Requirement as Pep508
    except ImportError:
        return []
    problems = []
    for requirement in requirements:
        version = version_of(requirement.name)
        if version is None:
            continue
        try:
            declared = importlib.metadata.requires(requirement.name) or ()
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in declared:
            try:
                dependency = Pep508(text)
            except InvalidRequirement:
                continue
            if dependency.marker and not dependency.marker.evaluate({"extra": ""}):
                continue
            found = version_of(normalise(dependency.name))
            if found is None or not satisfies(found, str(dependency.specifier)):
                problems.append(f"{requirement.name} {version} needs {dependency.name}"
                                f"{dependency.specifier}, but {dependency.name} is "
                                f"{found or 'not installed'}")
    return problems


def main(path: Path = REQUIREMENTS_FILE) -> int:
    """Install what is missing. Exit status: 0 all satisfied, 1 an install failed, 2 a bad
    requirements file, 3 anything else. Never raises: the WebUI goes on starting either way."""
    try:
        requirements = read_requirements(path)
        todo = to_install(requirements)
        if not todo:
            print(f"{PREFIX} requirements satisfied, nothing to install")
            failures = []
        else:
            print(f"{PREFIX} to install: {', '.join(str(r) for r in todo)}")
            launch = import_launch()
            runner = run_with_pip if launch is None else functools.partial(run_with_launch, launch)
            failures = install(todo, runner)
        for problem in unmet_dependencies(requirements):
            print(f"{PREFIX} warning: {problem}; parts of EasyPhoto that use it may fail "
                  "(another package or the WebUI holds it at that version)")
    except RequirementsError as exc:
        print(f"{PREFIX} ERROR: {exc}")
        return 2
    except Exception as exc:  # never a traceback in the WebUI's start-up log
        print(f"{PREFIX} ERROR: install.py failed unexpectedly: {type(exc).__name__}: {exc}")
        return 3
    if failures:
        names = ", ".join(str(f.requirement) for f in failures)
        print(f"{PREFIX} {len(failures)} requirement(s) not installed: {names} (see above)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
