"""The UI in a browser under gradio 3.41.2, the WebUI's version (the standalone app is 5.x).

Serves ``build_ui`` from the host-pins environment (.venv-host, see dev/host_env.sh) and, in
headless Chromium: the three tabs render; a page load fills the lists and the (empty) job
status; an invalid user id gets its inline message; the template gallery lists the packaged
templates and a click selects one; two people show two face dropdowns; Generate with no
trained id answers with a message through gradio 3's queue (a generator handler); the Users
tab says there is no id yet; the page logs no script error. A screenshot of each tab goes to
``test-artifacts/browser-gradio3-*.png``.

Skipped, with the reason, when the browser or .venv-host is missing. No face models and no
training are needed (the host environment may lack them).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from browser_helpers import (
    MISSING_BROWSER,
    browser_missing,
    css,
    css_all,
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

ROOT = Path(__file__).resolve().parents[2]
HOST_PYTHON = Path(os.environ.get("EASYPHOTO_HOST_PYTHON", ROOT / ".venv-host/bin/python"))

pytestmark = [  # pytest takes a list of marks (not a tuple)
    pytest.mark.skipif(browser_missing(), reason=MISSING_BROWSER),
    pytest.mark.skipif(not HOST_PYTHON.is_file(),
                       reason=f"needs the host-pins environment {HOST_PYTHON} "
                              "(bash dev/host_env.sh)"),
]


@pytest.fixture(scope="module")
def gradio3_app(tmp_path_factory):
    base = tmp_path_factory.mktemp("gradio3")
    port = free_port()
    log_path = base / "server.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRADIO_ANALYTICS_ENABLED": "False"}
    with log_path.open("w") as log:
        server = subprocess.Popen([str(HOST_PYTHON), str(Path(__file__).with_name(
            "gradio3_server.py")), str(port), str(base / "data")], cwd=base, env=env,
            stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}/"
            wait_until_serving(server, url, log_path)
            yield url
        finally:
            stop(server)


def test_tabs_work_under_gradio_3(browser, gradio3_app):
    driver = browser
    driver.get(gradio3_app)
    wait_for(lambda: progress(driver, "train")[0] == "idle", 60, "the page load")
    assert "gradio" in driver.page_source.lower()
    type_into(driver, "easyphoto_train_user_id", "bad id\t")  # typed fast, then leaves the box
    wait_for(lambda: "contains ' '" in text_of(driver, "easyphoto_train_user_id_msg"), 20,
             "the inline user id message")
    screenshot(driver, "gradio3-train")

    open_tab(driver, "Inference")
    thumbs = wait_for(lambda: css_all(driver, "#easyphoto_infer_template_gallery img"), 30,
                      "the template gallery")
    thumbs[0].click()
    wait_for(lambda: "Template:" in text_of(driver, "easyphoto_infer_selected_msg"), 20,
             "the selected template")
    people = css(driver, "#easyphoto_infer_people input[type=number]")
    people.clear()
    people.send_keys("2\n")
    wait_for(lambda: css(driver, "#easyphoto_infer_user_2").is_displayed(), 20,
             "the second face's dropdown")
    css(driver, "#easyphoto_infer_generate").click()
    wait_for(lambda: "every user id is 'none'" in text_of(driver, "easyphoto_infer_message"),
             30, "the message for a generation without a trained id")
    screenshot(driver, "gradio3-inference")

    open_tab(driver, "Users")
    wait_for(lambda: "No user ids yet" in text_of(driver, "easyphoto_users_table"), 20,
             "the empty users table")
    screenshot(driver, "gradio3-users")
    errors = js_errors(driver)
    assert errors == [], "\n".join(errors)
