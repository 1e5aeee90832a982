"""Stand-in for the WebUI's ``launch`` module, as far as EasyPhoto's install.py uses it.

``run_pip(args, desc)`` behaves like the WebUI's: it runs ``"<python>" -m pip <args>
--prefer-binary`` as one *shell* command line (so unquoted ``>`` or spaces break it, as they
would in the WebUI), prints ``Installing <desc>`` and raises RuntimeError carrying the command
and pip's output when pip fails. Every call is appended to the file named by
``$FAKE_WEBUI_PIP_LOG`` so a test can tell whether pip ran at all.
"""

from __future__ import annotations

import os
import subprocess
import sys


def run_pip(command: str, desc: str | None = None, live: bool = False) -> str:
    log = os.environ.get("FAKE_WEBUI_PIP_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(command + "\n")
    line = f'"{sys.executable}" -m pip {command} --prefer-binary'
    if desc:
        print(f"Installing {desc}")
    result = subprocess.run(line, shell=True, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError("\n".join([
            f"Couldn't install {desc}.", f"Command: {line}", f"Error code: {result.returncode}",
            f"stdout: {result.stdout}", f"stderr: {result.stderr}"]))
    return result.stdout


def is_installed(package: str) -> bool:
    """The WebUI's check: present or not, whatever the version."""
    import importlib.util

    return importlib.util.find_spec(package) is not None
