"""The studio in a real browser (Debian's headless Chromium, driven by selenium) on the real cluster: a slider drag
edits the face the asked way, a hold changes the boundary, a grid, a portrait upload is edited, its name is text."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from services.common import assets

#: A file name that is also markup: the page must show it as text and run nothing.
HOSTILE = '<img src=x onerror="document.body.dataset.pwned=1">'


def image(browser, element_id: str) -> np.ndarray:
    src = browser.find_element(By.ID, element_id).get_attribute("src")
    head, payload = src.split(",", 1)
    assert head == "data:image/png;base64", head
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(payload))).convert("RGB"), dtype=np.int16)


def shown_score(browser, attribute: str, column: str = "now") -> float:
    row = browser.find_element(By.CSS_SELECTOR, f'#scores tr[data-attribute="{attribute}"]')
    if column == "now":
        return float(row.find_element(By.CSS_SELECTOR, "td.now").get_attribute("data-value"))
    return float(row.find_elements(By.TAG_NAME, "td")[1].text.split()[0].rstrip("°y"))


def settled(browser, edits_before: int, timeout: float = 60) -> int:
    """Waits until the page showed a new edit and nothing is in flight or queued; returns the edit count."""
    def done(b):
        count = int(b.find_element(By.TAG_NAME, "body").get_attribute("data-edits") or 0)
        state = b.find_element(By.ID, "status").get_attribute("data-state")
        return count if count > edits_before and state != "busy" and b.execute_script(
            "return timer === null && !inflight && pending === null") else False
    return WebDriverWait(browser, timeout, poll_frequency=0.1).until(done)


def edits(browser) -> int:
    return int(browser.find_element(By.TAG_NAME, "body").get_attribute("data-edits") or 0)


def test_the_studio_in_a_browser(studio, browser, tmp_path):
    browser.get(studio["url"])
    count = settled(browser, 0)
    assert browser.find_element(By.ID, "status").get_attribute("data-state") == "idle"
    original = image(browser, "face")
    yaw_before = shown_score(browser, "yaw")

    # Drag yaw to the right end, then back a little, with the keyboard: every key press is an input event.
    slider = browser.find_element(By.CSS_SELECTOR, 'input[type=range][data-attribute="yaw"]')
    slider.send_keys(Keys.END)
    for _ in range(10):
        slider.send_keys(Keys.ARROW_LEFT)
    count = settled(browser, count)
    assert slider.get_attribute("value") == "2.5"
    assert browser.find_element(By.ID, "caption").text == "yaw+2.50"
    edited = image(browser, "face")
    assert np.abs(edited - original).mean() > 2, "the face did not change"
    assert shown_score(browser, "yaw") > yaw_before, "yaw did not move the asked way"
    assert shown_score(browser, "yaw", "unedited") == round(yaw_before, 1 if abs(yaw_before) >= 10 else 2)
    link = browser.find_element(By.CSS_SELECTOR, ".slider details a").get_attribute("href")
    assert "/api/boundary?" in link and "attribute=" in link
    facts = browser.find_element(By.ID, "facts").text
    assert "yaw v" in facts and "2.50" in facts and "round trip" in facts

    # Hold smile: moving yaw now follows the conditional boundary.
    browser.find_element(By.CSS_SELECTOR, 'input[data-hold="smile"]').click()
    count = settled(browser, count)
    assert "yaw|smile v" in browser.find_element(By.ID, "facts").text
    held = image(browser, "face")
    assert np.abs(held - edited).max() > 0  # another direction, another face

    # Hold automatically: the editor reports each other attribute's drift along the move.
    browser.find_element(By.CSS_SELECTOR, 'input[data-hold="smile"]').click()
    count = settled(browser, count)
    browser.find_element(By.ID, "hold-auto").click()
    count = settled(browser, count)
    assert "auto hold smile\n" in browser.find_element(By.ID, "facts").text

    # Sliders in the attribute's unit: yaw +10 degrees, the editor searches the distance.
    browser.find_element(By.ID, "hold-auto").click()
    browser.find_element(By.ID, "units").click()
    count = settled(browser, count)  # the face comes back unedited
    slider = browser.find_element(By.CSS_SELECTOR, 'input[type=range][data-attribute="yaw"]')
    assert slider.get_attribute("max") == "30"
    for _ in range(10):
        slider.send_keys(Keys.ARROW_RIGHT)
    count = settled(browser, count)
    facts = browser.find_element(By.ID, "facts").text
    assert "target\nyaw " in facts and "asked" in facts and "rounds" in facts
    browser.find_element(By.ID, "units").click()
    count = settled(browser, count)

    # A grid of yaw.
    browser.find_element(By.ID, "grid-attribute").send_keys("yaw")
    browser.find_element(By.ID, "grid-show").click()
    WebDriverWait(browser, 60).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#grid figure")) == 7)
    assert browser.find_elements(By.CSS_SELECTOR, "#grid figcaption")[-1].text.startswith("+3.00")

    # A portrait whose file name is markup: inverted once, then edited by the smile slider; the name is text.
    portrait = tmp_path / f"{HOSTILE}.jpg"
    portrait.write_bytes(assets.path_of("grace_hopper.jpg").read_bytes())
    browser.find_element(By.ID, "photo").send_keys(str(portrait))
    WebDriverWait(browser, 180, poll_frequency=0.2).until(
        lambda b: "ready" in b.find_element(By.ID, "status").text or
        b.find_element(By.ID, "status").get_attribute("data-state") == "error")
    assert browser.find_element(By.ID, "status").get_attribute("data-state") == "idle", \
        browser.find_element(By.ID, "status").text
    assert browser.find_element(By.ID, "status").text == f"{HOSTILE} ready"
    assert not browser.find_elements(By.CSS_SELECTOR, "img[src=x]")
    count = edits(browser)
    inverted = image(browser, "face")
    assert np.abs(inverted - image(browser, "original")).max() == 0
    assert "dB PSNR" in browser.find_element(By.ID, "facts").text
    assert browser.find_element(By.ID, "photo-box").is_displayed()
    smile = browser.find_element(By.CSS_SELECTOR, 'input[type=range][data-attribute="smile"]')
    smile.send_keys(Keys.END)
    count = settled(browser, count)
    assert np.abs(image(browser, "face") - inverted).mean() > 1, "the portrait was not edited"
    assert browser.find_element(By.ID, "download").get_attribute("download").endswith("_smile+3.00.png")
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-pwned") is None  # nothing ran

    shot = tmp_path / "studio.png"
    assert browser.save_screenshot(str(shot))
    assert Image.open(shot).size[0] >= 1000
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
