"""The standalone app in a real browser (headless Chromium through Selenium).

Starts ``python -m easyphoto ui`` (tiny-random models, lite face backend, a temporary data
folder, run from an unrelated working folder as an installed app would be) and, as a user:
uploads five photos and sees every verdict (the reference marked, the other person flagged);
types a user id and sees it is free; trains with the quick tiny settings while the progress bar
climbs to 100 % and the face_id and validation renders appear; reloads the page and finds the
finished training shown; picks a gallery template on the Inference tab, generates, and sees
the result next to its template with a download; finds the new id on the Users tab. A
screenshot of each tab goes to ``test-artifacts/``.

Skipped (with the reason) only when /usr/bin/chromium or /usr/bin/chromedriver is missing
(``apt-get install -y chromium chromium-driver``). Selenium never downloads a driver here:
the driver path and the browser binary are given and ``SE_OFFLINE`` is set.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
PHOTOS = ("obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg", "biden.jpg")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
    reason="browser test needs /usr/bin/chromium and /usr/bin/chromedriver "
           "(apt-get install -y chromium chromium-driver)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The real standalone app on a free loopback port; yields its URL."""
    base = tmp_path_factory.mktemp("app")
    port = _free_port()
    log = (base / "app.log").open("w")
    command = [sys.executable, "-m", "easyphoto", "ui", "--port", str(port), "--data-dir",
               str(base / "data"), "--base", "tiny-random", "--face-backend", "lite"]
    server = subprocess.Popen(command, cwd=base, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=2).close()
                break
            except OSError:
                assert server.poll() is None, (base / "app.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the app did not start in 120 s"
                time.sleep(0.3)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
        log.close()
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(base / "app.log", ARTIFACTS / "browser-app.log")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must not fetch anything
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--no-first-run", "--window-size=1440,1800",
                     f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
                     # nothing but the app: web fonts and the like fail at once, offline
                     "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)),
                              options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


# -- small page helpers ---------------------------------------------------------------------------
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


def open_tab(driver, elem_id: str) -> None:
    css(driver, f"#{elem_id}-button").click()


def progress(driver, prefix: str) -> tuple[str, float, str]:
    """The bar's status, percent and job id (read in one go: the bar is replaced as it moves)."""
    status, percent, job = driver.execute_script(
        "const bar = document.querySelector(arguments[0]);"
        "return bar ? [bar.dataset.status, bar.dataset.percent, bar.dataset.job || ''] "
        ": ['missing', '0', ''];", f"#easyphoto_{prefix}_progress .easyphoto-progress")
    return status, float(percent), job


def screenshot(driver, name: str) -> Path:
    """The whole page (the window grows to the page's height for the shot)."""
    ARTIFACTS.mkdir(exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1440, max(900, min(int(height) + 40, 6000)))
    path = ARTIFACTS / f"browser-{name}.png"
    driver.save_screenshot(str(path))
    driver.set_window_size(1440, 1800)
    return path


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


# -- the walk-through ---------------------------------------------------------------------------
def test_train_generate_and_list_in_a_browser(app, browser, photo):
    driver = browser
    driver.get(app + "/")
    wait_for(lambda: css(driver, "#easyphoto_train_upload input[type=file]"), 60, "the page")
    _upload_and_check(driver, [str(photo(name)) for name in PHOTOS])
    _train(driver)
    driver.refresh()  # a reload shows the finished training again (page-load event)
    wait_for(lambda: progress(driver, "train")[0] == "done", 30, "the restored training")
    assert "finished" in text_of(driver, "easyphoto_train_message")
    _generate(driver)
    _users(driver)


def _upload_and_check(driver, paths: list[str]) -> None:
    css(driver, "#easyphoto_train_upload input[type=file]").send_keys("\n".join(paths))
    rows = wait_for(lambda: len(css_all(driver, "#easyphoto_train_verdicts tbody tr")) == 5
                    and css_all(driver, "#easyphoto_train_verdicts tbody tr"), 60, "verdicts")
    verdicts = [row.get_attribute("data-verdict") for row in rows]
    assert verdicts == ["ok"] * 4 + ["other_person"]
    table = text_of(driver, "easyphoto_train_verdicts")
    assert "★ reference" in table and "probably another person" in table
    gallery = text_of(driver, "easyphoto_train_gallery")
    assert "4 ★ reference" in gallery and "5 ✗ other person" in gallery
    assert len(css_all(driver, "#easyphoto_train_gallery img")) == 5
    type_into(driver, "easyphoto_train_user_id", "obama")
    wait_for(lambda: "is free" in text_of(driver, "easyphoto_train_user_id_msg"), 20,
             "the user id verdict")
    screenshot(driver, "train-photos")


def _train(driver) -> None:
    type_into(driver, "easyphoto_train_max_train_steps", "3")
    type_into(driver, "easyphoto_train_validation_steps", "2")
    css(driver, "#easyphoto_train_skin_retouch input[type=checkbox]").click()
    css(driver, "#easyphoto_train_start").click()
    seen = follow_job(driver, "train", timeout=300)
    assert seen[-1] == 100.0 and seen == sorted(seen), seen
    assert any(0 < p < 100 for p in seen), f"the bar never showed progress: {seen}"
    wait_for(lambda: css_all(driver, "#easyphoto_train_face_id img"), 30, "the face_id image")
    wait_for(lambda: len(css_all(driver, "#easyphoto_train_renders img")) >= 1, 30, "renders")
    assert "step 3" in text_of(driver, "easyphoto_train_renders")
    assert "checkpoint-3.safetensors" in text_of(driver, "easyphoto_train_summary")
    assert css(driver, "#easyphoto_train_log textarea").get_attribute("value").strip()
    screenshot(driver, "train-done")


def _generate(driver) -> None:
    open_tab(driver, "easyphoto_tab_infer")
    wait_for(lambda: css(driver, "#easyphoto_infer_user_1 input").get_attribute("value")
             == "obama", 30, "the trained id in the first face's dropdown")
    thumbs = wait_for(lambda: css_all(driver, "#easyphoto_infer_template_gallery img"), 30,
                      "the template gallery")
    thumbs[0].click()
    wait_for(lambda: "Template:" in text_of(driver, "easyphoto_infer_selected_msg"), 20,
             "the selected template")
    css(driver, "#easyphoto_infer_generate").click()
    seen = follow_job(driver, "infer", timeout=300)
    assert seen[-1] == 100.0
    wait_for(lambda: css_all(driver, "#easyphoto_infer_results img"), 30, "the result")
    wait_for(lambda: css_all(driver, "#easyphoto_infer_before img")
             and css_all(driver, "#easyphoto_infer_after img"), 30, "before/after")
    assert "obama" in text_of(driver, "easyphoto_infer_detail")
    assert ".png" in text_of(driver, "easyphoto_infer_files")
    screenshot(driver, "inference")


def _users(driver) -> None:
    open_tab(driver, "easyphoto_tab_users")
    wait_for(lambda: "obama" in text_of(driver, "easyphoto_users_table"), 30, "the users table")
    assert "tiny-random" in text_of(driver, "easyphoto_users_table")
    wait_for(lambda: css_all(driver, "#easyphoto_users_gallery img"), 30, "the face_id thumbnail")
    screenshot(driver, "users")
