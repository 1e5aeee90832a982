"""The standalone app in a real browser (headless Chromium through Selenium).

Starts ``python -m easyphoto ui`` (tiny-random models, lite face backend, a temporary data
folder, run from an unrelated working folder as an installed app would be) and, as a user:
uploads five photos and sees every verdict (the reference marked, the other person flagged);
types a user id and sees it is free; trains with the quick tiny settings while the progress bar
climbs to 100 % and the face_id and validation renders appear; reloads the page and finds the
finished training shown; picks a gallery template on the Inference tab, generates, and sees
the result next to its template with a download; finds the new id on the Users tab. A
screenshot of each tab goes to ``test-artifacts/``; the page logs no script error.

Skipped (with the reason) only when /usr/bin/chromium or /usr/bin/chromedriver is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from browser_helpers import (
    ARTIFACTS,
    MISSING_BROWSER,
    browser_missing,
    css,
    css_all,
    follow_job,
    free_port,
    js_errors,
    open_tab,
    progress,
    screenshot,
    stop,
    text_of,
    type_into,
    wait_for,
    wait_until_serving,
)

PHOTOS = ("obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg", "biden.jpg")

pytestmark = pytest.mark.skipif(browser_missing(), reason=MISSING_BROWSER)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The real standalone app on a free loopback port; yields its URL."""
    base = tmp_path_factory.mktemp("app")
    port = free_port()
    log_path = base / "app.log"
    command = [sys.executable, "-m", "easyphoto", "ui", "--port", str(port), "--data-dir",
               str(base / "data"), "--base", "tiny-random", "--face-backend", "lite"]
    with log_path.open("w") as log:
        server = subprocess.Popen(command, cwd=base, stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_serving(server, url + "/health", log_path)
            yield url
        finally:
            stop(server)
            ARTIFACTS.mkdir(exist_ok=True)
            shutil.copy(log_path, ARTIFACTS / "browser-app.log")


# -- the walk-through ---------------------------------------------------------------------------
def test_train_generate_and_list_in_a_browser(browser, app, photo):
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
    errors = js_errors(driver)
    assert errors == [], "\n".join(errors)


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
    open_tab(driver, "Inference")
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
    open_tab(driver, "Users")
    wait_for(lambda: "obama" in text_of(driver, "easyphoto_users_table"), 30, "the users table")
    assert "tiny-random" in text_of(driver, "easyphoto_users_table")
    wait_for(lambda: css_all(driver, "#easyphoto_users_gallery img"), 30, "the face_id thumbnail")
    screenshot(driver, "users")
