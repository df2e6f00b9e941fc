"""The Search tab in a real browser (headless Chromium, as tests/test_web.py drives it), against the running
system: a person logs in, opens Search, drops a photo of someone and sees the archive's photos of that person
as a grid of thumbnails with the face boxed and marked as matches; clicks "search this face" on one and gets
that face first; drops a file that is not a photo and is told so. The screenshot is saved as
var/test-artifacts/web-search.png (or under FACEREC_TEST_ARTIFACTS)."""

from __future__ import annotations

from tests.system import API_KEY, call, wait_for_job
from tests.test_search import INBOX, TRAIN, archive  # noqa: F401 - the indexed archive, as a fixture
from tests.test_web import ARTIFACTS, WAIT_S, browser  # noqa: F401 - the headless browser, as a fixture

PERSON = "Hugo_Chavez"
DRAWN = ("const c = arguments[0]; const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
         "let lit = 0; for (let i = 0; i < d.length; i += 4) lit += d[i] + d[i + 1] + d[i + 2] > 0; return lit;")


def test_drop_a_photo_see_the_photos_of_that_person_then_search_one_of_their_faces(system, archive, browser,  # noqa: F811
                                                                                  lfw_dir, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    site = system["base"].removesuffix("/v1")
    wait = WebDriverWait(browser, WAIT_S)
    browser.get(f"{site}/search")
    assert browser.current_url == f"{site}/login?next=/search"
    browser.find_element(By.ID, "api_key").send_keys(API_KEY)
    browser.find_element(By.ID, "login").click()
    wait.until(ec.url_to_be(f"{site}/search"))
    assert browser.find_element(By.CSS_SELECTOR, "nav a[aria-current=page]").text == "Search"

    Select(browser.find_element(By.ID, "index")).select_by_value("archive")
    photo = sorted((lfw_dir / PERSON).glob("*.jpg"))[TRAIN + INBOX]  # not in the archive
    browser.find_element(By.ID, "photo").send_keys(str(photo))
    try:
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "faces match"))
    except Exception:
        browser.save_screenshot(str(ARTIFACTS / "web-search-failed.png"))
        raise AssertionError(f"no answer; status: {browser.find_element(By.ID, 'status').text!r}") from None
    hits = browser.find_elements(By.CSS_SELECTOR, "#hits li.hit")
    keys = [hit.get_attribute("data-key") for hit in hits]
    assert all(PERSON in key for key in keys[:INBOX]), keys
    assert len(browser.find_elements(By.CSS_SELECTOR, "#hits li.hit.match")) >= INBOX - 1
    # Each thumbnail is drawn from the photo (its signed link), the face boxed; the face searched is boxed too.
    wait.until(lambda _: all(browser.execute_script(DRAWN, canvas) > 1000
                             for canvas in browser.find_elements(By.CSS_SELECTOR, "#hits canvas")[:INBOX]))
    assert browser.find_element(By.CSS_SELECTOR, "#boxes .box.query").size["width"] > 40
    browser.set_window_size(1280, 1400)  # the query and two rows of the grid in one picture
    browser.save_screenshot(str(ARTIFACTS / "web-search.png"))

    # Search again from one of the faces found: that face comes first, as itself.
    second = hits[1]
    second_key = second.get_attribute("data-key")
    second.find_element(By.TAG_NAME, "button").click()
    wait.until(lambda _: browser.find_elements(By.CSS_SELECTOR, "#hits li.hit")
               and browser.find_element(By.CSS_SELECTOR, "#hits li.hit").get_attribute("data-key") == second_key)
    first = browser.find_element(By.CSS_SELECTOR, "#hits li.hit .similarity").text
    assert first == "1.000"

    # A file that is not a photo: the page says what is wrong.
    not_a_photo = tmp_path / "notes.jpg"
    not_a_photo.write_text("this is not a photo")
    browser.find_element(By.ID, "photo").send_keys(str(not_a_photo))
    wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "Could not search"))
    assert "not a photo" in browser.find_element(By.ID, "status").text

    # The batch form: a search job's page links to its report, every person's photos as thumbnails.
    job = wait_for_job(system, call(system, "POST", "/jobs/search", json={"model": "album", "index": "archive"})
                       .json()["id"])
    browser.get(f"{site}/jobs/{job['id']}")
    browser.find_element(By.LINK_TEXT, "Where each person appears (report with thumbnails)").click()
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "section h2")))
    people = [h2.text for h2 in browser.find_elements(By.CSS_SELECTOR, "section h2")]
    assert any(h2.startswith(PERSON) for h2 in people), people
    assert len(browser.find_elements(By.CSS_SELECTOR, "figure img")) >= 4 * (INBOX - 1)
    browser.save_screenshot(str(ARTIFACTS / "web-search-job-report.png"))
