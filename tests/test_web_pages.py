"""The pages' templates and scripts at their hard edges: a failed upload on the Recognise page, the
confirmation before a promote, a failed job's error.

Fast: the real templates (api/templates) and script (api/static/app.js) are served by a small Flask app
in the test whose /v1 routes answer with canned JSON in the API's shapes (no workers, no login), and
the scripts run in headless Chromium as in tests/test_web.py. The whole flow against the live API is
tests/test_web.py.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask, jsonify, render_template, request
from werkzeug.serving import make_server

REPO = Path(__file__).resolve().parents[1]
USER = {"name": "tester", "scope": "admin"}
MODELS = [{"name": "lfw", "current_version": "v2", "versions": [
    {"version": "v1", "model_type": "embedding", "metrics": {"accuracy": 0.9}},
    {"version": "v2", "model_type": "embedding", "metrics": {"accuracy": 0.95}}]}]
FACE = {"box": [60.0, 60.0, 120.0, 120.0], "identity": "Hugo_Chavez", "score": 0.9, "confidence": 0.97,
        "best_guess": "Hugo_Chavez"}
ANSWER = {"width": 250, "height": 250, "main_face": 0, "model": "lfw", "model_version": "v2", "threshold": 0.5,
          "faces": [FACE]}
NOT_A_PHOTO = "the upload is not a photo Pillow can read (UnidentifiedImageError)"
WAIT_S = 20


class Site:
    """The pages, served from the repository's templates and static files, with canned /v1 answers."""

    def __init__(self) -> None:
        self.recognize_answers: list[tuple[dict, int]] = []
        self.posted: list[str] = []
        app = Flask("pages", template_folder=str(REPO / "api" / "templates"),
                    static_folder=str(REPO / "api" / "static"))

        @app.get("/recognize")
        def recognize_page():
            return render_template("recognize.html", user=USER, csrf="token", active="recognize", models=MODELS)

        @app.get("/models")
        def models_page():
            return render_template("models.html", user=USER, csrf="token", active="models", models=MODELS)

        @app.get("/v1/models/<name>")
        def model(name: str):
            return jsonify(MODELS[0])

        @app.post("/v1/recognize")
        def recognize():
            return self.recognize_answers.pop(0)

        @app.post("/v1/models/<name>/promote")
        def promote(name: str):
            self.posted.append(request.path)
            return jsonify(name=name, current_version=request.json["version"])

        self.app = app
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"


@pytest.fixture
def site() -> Iterator[Site]:
    served = Site()
    thread = threading.Thread(target=served.server.serve_forever, daemon=True)
    thread.start()
    yield served
    served.server.shutdown()


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.fail("chromium and chromedriver are needed for the browser test: run infra/scripts/install-browser.sh")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
                     "--disable-gpu"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


def test_a_failed_upload_clears_the_previous_answer_and_shows_the_error(site: Site, browser, lfw_dir: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT_S)
    site.recognize_answers = [(ANSWER, 200), ({"error": NOT_A_PHOTO}, 400)]
    first, second = sorted((lfw_dir / "Hugo_Chavez").glob("*.jpg"))[:2]
    browser.get(f"{site.url}/recognize")
    browser.find_element(By.ID, "photo").send_keys(str(first))
    wait.until(ec.text_to_be_present_in_element((By.ID, "faces"), "Hugo_Chavez"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#boxes .box")) == 1

    browser.find_element(By.ID, "photo").send_keys(str(second))
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), NOT_A_PHOTO))
    wait.until(lambda driver: driver.execute_script("return document.getElementById('preview').complete"))
    # The page redraws on a resize and on the slider: neither may bring back the first photo's answer.
    browser.execute_script("window.dispatchEvent(new Event('resize'));"
                           "document.getElementById('threshold').dispatchEvent(new Event('input'));")

    assert browser.find_elements(By.CSS_SELECTOR, "#boxes .box") == []
    assert "Hugo_Chavez" not in browser.find_element(By.ID, "faces").text
    assert browser.find_element(By.ID, "status").text == f"Could not recognise the photo: {NOT_A_PHOTO}"


def test_promote_asks_first_as_roll_back_does(site: Site, browser) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{site.url}/models")
    asked = "window.asked = []; window.confirm = (question) => { window.asked.push(question); return %s; };"
    browser.execute_script(asked % "false")
    browser.find_element(By.CSS_SELECTOR, "button.promote[data-version='v1']").click()

    assert browser.execute_script("return window.asked") == ["Make v1 the current version of lfw?"]
    assert site.posted == []

    browser.execute_script(asked % "true")
    browser.find_element(By.CSS_SELECTOR, "button.promote[data-version='v1']").click()
    for _ in range(WAIT_S * 10):
        if site.posted:
            break
        threading.Event().wait(0.1)
    assert site.posted == ["/v1/models/lfw/promote"]


def test_a_failed_job_shows_its_error_message(site: Site) -> None:
    job = {"id": "0" * 32, "type": "training", "state": "failed", "params": {"model": "lfw"},
           "progress": {"done": 0, "total": 10}, "created_at": "2025-01-01T00:00:00Z", "started_at": None,
           "finished_at": "2025-01-01T00:00:05Z", "result": None,
           "error": {"message": "no labelled photos under 'datasets/none/'", "type": "ValueError"}}
    with site.app.test_request_context():
        page = render_template("job.html", user=USER, csrf="token", active="jobs", job=job)

    assert '<p class="error" role="alert">no labelled photos under &#39;datasets/none/&#39;</p>' in page
    assert "ValueError" not in page.split("<h2>Parameters</h2>")[0]
