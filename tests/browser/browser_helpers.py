"""Page helpers of the browser tests: waiting, finding, typing, the progress bar, screenshots,
starting a server and waiting for it."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from pathlib import Path

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
#: Console errors of resources the offline browser is kept from (gradio's web fonts, CDN).
OFFLINE_NOISE = ("ERR_NAME_NOT_RESOLVED", "fonts.googleapis.com", "cdnjs.cloudflare.com",
                 "favicon")
MISSING_BROWSER = ("browser tests need /usr/bin/chromium and /usr/bin/chromedriver "
                   "(apt-get install -y chromium chromium-driver)")


def browser_missing() -> bool:
    return not (CHROMIUM.is_file() and CHROMEDRIVER.is_file())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_serving(server: subprocess.Popen, url: str, log: Path, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            assert server.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"{url} did not answer in {timeout} s"
            time.sleep(0.3)


def stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(15)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(5)


def wait_for(check, timeout: float = 60, what: str = "", poll: float = 0.2):
    """``check()``'s first truthy value within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except Exception:  # noqa: BLE001 — the page is still rendering
            value = None
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(poll)


def css(driver, selector: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def css_all(driver, selector: str) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def text_of(driver, elem_id: str) -> str:
    return css(driver, f"#{elem_id}").text


def type_into(driver, elem_id: str, text: str) -> None:
    field = css(driver, f"#{elem_id} input, #{elem_id} textarea")
    field.clear()
    field.send_keys(text)


def open_tab(driver, label: str) -> None:
    """Click the tab button labelled ``label`` (gradio 3 and 5 name their buttons alike)."""
    buttons = [b for b in css_all(driver, "button") if b.text.strip() == label]
    assert buttons, f"no tab button {label!r}"
    buttons[0].click()


def progress(driver, prefix: str) -> tuple[str, float, str]:
    """The bar's status, percent and job id (read in one go: the bar is replaced as it moves)."""
    status, percent, job = driver.execute_script(
        "const bar = document.querySelector(arguments[0]);"
        "return bar ? [bar.dataset.status, bar.dataset.percent, bar.dataset.job || ''] "
        ": ['missing', '0', ''];", f"#easyphoto_{prefix}_progress .easyphoto-progress")
    return status, float(percent), job


def follow_job(driver, prefix: str, timeout: float) -> list[float]:
    """Watch the tab's progress bar until the job has finished; the percentages seen."""
    seen: list[float] = []
    deadline = time.monotonic() + timeout
    while True:
        status, percent, _ = progress(driver, prefix)
        if not seen or seen[-1] != percent:
            seen.append(percent)
        if status in ("done", "failed", "cancelled"):
            assert status == "done", text_of(driver, f"easyphoto_{prefix}_message")
            return seen
        assert time.monotonic() < deadline, f"{prefix} job still {status} at {percent} %"
        time.sleep(0.1)


def screenshot(driver, name: str) -> Path:
    """The whole page (the window grows to the page's height for the shot)."""
    ARTIFACTS.mkdir(exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1440, max(900, min(int(height) + 40, 6000)))
    path = ARTIFACTS / f"browser-{name}.png"
    driver.save_screenshot(str(path))
    driver.set_window_size(1440, 1800)
    return path


def js_errors(driver) -> list[str]:
    """Uncaught script errors of the page (not failed resources nor gradio's own console
    reports, e.g. a stream aborted by a reload)."""
    entries = driver.get_log("browser")
    return [e["message"] for e in entries if e.get("level") == "SEVERE"
            and e.get("source") == "javascript"
            and not any(blocked in e["message"] for blocked in OFFLINE_NOISE)]
