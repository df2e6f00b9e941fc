"""The Clusters tab in a real browser (headless Chromium, as tests/test_web.py drives it), against the running
system: a person opens Clusters, sees the strangers' clusters as grids of faces, types a name under the second
and enrols it; an empty name is refused by the form. The screenshot is saved as var/test-artifacts/web-clusters.png
(or under FACEREC_TEST_ARTIFACTS)."""

from __future__ import annotations

from tests.system import API_KEY, call, wait_for_job
from tests.test_clusters import lobby, subjects  # noqa: F401 - the clustered lobby, as a fixture
from tests.test_web import ARTIFACTS, WAIT_S, browser  # noqa: F401 - the headless browser, as a fixture


def test_the_clusters_tab_shows_each_cluster_as_faces_and_enrols_one_under_a_name(system, lobby, browser):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    site = system["base"].removesuffix("/v1")
    job = lobby["cluster"]
    wait = WebDriverWait(browser, WAIT_S)
    browser.get(f"{site}/clusters?job={job['id']}")
    if browser.current_url.startswith(f"{site}/login"):
        browser.find_element(By.ID, "api_key").send_keys(API_KEY)
        browser.find_element(By.ID, "login").click()
        wait.until(ec.url_contains("/clusters"))
    assert browser.find_element(By.CSS_SELECTOR, "nav a[aria-current=page]").text == "Clusters"
    cards = browser.find_elements(By.CSS_SELECTOR, "li.cluster")
    assert len(cards) >= 2
    chips = cards[0].find_elements(By.CSS_SELECTOR, ".chips img")
    assert len(chips) >= 3 and all(browser.execute_script("return arguments[0].naturalWidth", c) > 30 for c in chips)
    browser.set_window_size(1280, 1000)
    browser.save_screenshot(str(ARTIFACTS / "web-clusters.png"))

    # Marked as not one person, a cluster says so and offers no enrolment; marked back, it does again.
    cards[0].find_element(By.CSS_SELECTOR, "button.mixed").click()
    wait.until(lambda _: browser.find_elements(By.CSS_SELECTOR, "li.cluster .pill.failed"))
    wait.until(lambda _: browser.execute_script("return document.readyState") == "complete")  # its script ran
    first = browser.find_elements(By.CSS_SELECTOR, "li.cluster")[0]
    assert "not one person" in first.text and not first.find_elements(By.CSS_SELECTOR, "form.enrol")
    first.find_element(By.CSS_SELECTOR, "button.mixed").click()
    wait.until(lambda _: not browser.find_elements(By.CSS_SELECTOR, "li.cluster .pill.failed"))
    wait.until(lambda _: browser.execute_script("return document.readyState") == "complete")
    cards = browser.find_elements(By.CSS_SELECTOR, "li.cluster")

    clusters = call(system, "GET", f"/jobs/{job['id']}/clusters").json()["clusters"]
    second = cards[1]
    person = next(iter(subjects(clusters[int(second.get_attribute("data-cluster"))])))
    second.find_element(By.CSS_SELECTOR, "form.enrol button").click()  # no name yet: the form refuses
    assert browser.find_element(By.ID, "status").text == ""
    second.find_element(By.NAME, "name").send_keys(person)
    second.find_element(By.CSS_SELECTOR, "form.enrol button").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "is being enrolled as " + person))
    link = browser.find_element(By.CSS_SELECTOR, "#status a").get_attribute("href")
    enrolled = wait_for_job(system, link.rsplit("/", 1)[-1]) if len(link.rsplit("/", 1)[-1]) == 32 else None
    assert enrolled is not None and enrolled["state"] == "succeeded", enrolled
    assert enrolled["params"]["name"] == person and enrolled["params"]["cluster"]["job"] == job["id"]
