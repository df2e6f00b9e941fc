"""The web pages in a real browser: headless Chromium (Debian's chromium and chromium-driver, installed by
infra/scripts/install-browser.sh) driven by Selenium against the running system.

A person logs in with an API key, drops an LFW photo of a trained person on the Recognise page and sees the
right name on a box; moves the threshold slider and sees the label change without a new request; opens the
Jobs page and sees the finished training job. Screenshots are saved under var/test-artifacts/ (or
FACEREC_TEST_ARTIFACTS).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.system import API_KEY, REPO, call, wait_for_job

PEOPLE = ["Ariel_Sharon", "Hugo_Chavez", "Jean_Chretien", "John_Ashcroft"]
PERSON = "Hugo_Chavez"
ARTIFACTS = Path(os.environ.get("FACEREC_TEST_ARTIFACTS", REPO / "var" / "test-artifacts"))
WAIT_S = 60


@pytest.fixture(scope="module")
def trained(system, lfw_dir):
    files = [(person, (path.name, path.read_bytes(), "image/jpeg"))
             for person in PEOPLE for path in sorted((lfw_dir / person).glob("*.jpg"))[:10]]
    assert call(system, "POST", "/datasets/web", files=files).status_code == 201
    response = call(system, "POST", "/jobs/training", json={"model": "web", "dataset_prefix": "datasets/web"})
    job = wait_for_job(system, response.json()["id"])
    assert job["state"] == "succeeded", job
    return job


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
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def test_log_in_recognise_a_photo_and_see_the_finished_job(system, trained, browser, lfw_dir):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    site = system["base"].removesuffix("/v1")
    wait = WebDriverWait(browser, WAIT_S)

    # Pages need a login; the form keeps the key in a secure, HTTP-only cookie and never in a URL.
    browser.get(f"{site}/recognize")
    assert browser.current_url == f"{site}/login?next=/recognize"
    browser.find_element(By.ID, "api_key").send_keys("frk_wrong-key")
    browser.find_element(By.ID, "login").click()
    assert "That API key is not valid." in browser.find_element(By.CLASS_NAME, "error").text
    browser.find_element(By.ID, "api_key").send_keys(API_KEY)
    browser.find_element(By.ID, "login").click()
    wait.until(ec.url_to_be(f"{site}/recognize"))
    cookie = browser.get_cookie("facerec_session")
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    assert API_KEY not in browser.current_url and API_KEY not in browser.page_source
    assert browser.execute_script("return document.cookie") == ""  # scripts cannot read the session

    Select(browser.find_element(By.ID, "model")).select_by_value("web")
    photo = sorted((lfw_dir / PERSON).glob("*.jpg"))[20]  # not one of the training photos
    browser.find_element(By.ID, "photo").send_keys(str(photo))
    try:
        wait.until(ec.text_to_be_present_in_element((By.ID, "faces"), PERSON))
    except Exception:
        browser.save_screenshot(str(ARTIFACTS / "web-recognize-failed.png"))
        logs = browser.get_log("browser") if hasattr(browser, "get_log") else []
        raise AssertionError(f"no {PERSON} on the page; status: {browser.find_element(By.ID, 'status').text!r}; "
                             f"faces: {browser.find_element(By.ID, 'faces').text!r}; console: {logs}") from None
    label = browser.find_element(By.CSS_SELECTOR, "#boxes .box .label")
    assert label.text.startswith(PERSON) and "%" in label.text
    box = browser.find_element(By.CSS_SELECTOR, "#boxes .box")
    assert box.size["width"] > 40 and box.size["height"] > 40  # drawn over the face, scaled to the photo
    browser.save_screenshot(str(ARTIFACTS / "web-recognize.png"))

    # The slider re-labels the faces on the page, without asking the server again.
    requests_sent = ("return performance.getEntriesByType('resource')"
                     ".filter(e => e.name.includes('/v1/recognize')).length")
    assert browser.execute_script(requests_sent) == 1
    browser.execute_script("const s = document.getElementById('threshold'); s.value = s.max;"
                           "s.dispatchEvent(new Event('input'));")
    assert browser.find_element(By.CSS_SELECTOR, "#faces .face-name").text == "unknown"
    assert browser.execute_script(requests_sent) == 1

    # The Jobs page lists the finished training job (and keeps refreshing itself).
    browser.get(f"{site}/jobs")
    row = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, f"tr[data-id='{trained['id']}']")))
    assert "succeeded" in row.text and "training" in row.text
    wait.until(ec.text_to_be_present_in_element((By.ID, "live"), "live ·"))  # refreshed from /v1/jobs
    browser.save_screenshot(str(ARTIFACTS / "web-jobs.png"))
    row = browser.find_element(By.CSS_SELECTOR, f"tr[data-id='{trained['id']}'] a")
    row.click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "job-state"), "succeeded"))
    assert "Evaluation report" in browser.page_source

    browser.get(f"{site}/models")
    assert "web" in browser.find_element(By.CSS_SELECTOR, "article[data-model='web'] h2").text
    browser.save_screenshot(str(ARTIFACTS / "web-models.png"))
