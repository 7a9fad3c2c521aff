"""The demo page in a real headless Chromium (Debian's chromium and chromium-driver, driven by selenium): type a
prompt, click, wait for both images and save a screenshot: to the test's temporary folder, or where
DEMO_SCREENSHOT says (``DEMO_SCREENSHOT=docs/demo/screenshot.png`` retakes the README's)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.demo_server import require, require_modules

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT_S = 60


@pytest.fixture
def browser():
    require_modules("selenium")
    how = "apt-get install -y chromium chromium-driver (.ci/run does)"
    require(f"Chromium ({CHROMIUM})", CHROMIUM.is_file(), how)
    require(f"its driver ({CHROMEDRIVER})", CHROMEDRIVER.is_file(), how)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager fetch a browser or driver
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,1100", "--hide-scrollbars"):  # --no-sandbox: CI runs as root
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_page_shows_stock_and_tgate_side_by_side_after_one_click(browser, demo_url, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, WAIT_S)
    browser.get(demo_url)
    prompt = wait.until(seen.element_to_be_clickable((By.CSS_SELECTOR, "#prompt textarea")))
    prompt.send_keys(Keys.CONTROL, "a")  # as a user would: the page's own input events follow each key
    prompt.send_keys(Keys.DELETE)
    prompt.send_keys("a handwritten digit three")
    browser.find_element(By.CSS_SELECTOR, "#run").click()

    images = [wait.until(seen.visibility_of_element_located((By.CSS_SELECTOR, f"#{box}-image img")))
              for box in ("stock", "tgate", "diff")]
    wait.until(seen.text_to_be_present_in_element((By.CSS_SELECTOR, "#summary"), "TGATE speedup"))
    assert all(image.get_attribute("naturalWidth") == "256" for image in images)  # the 16x16 toy, x16
    labels = browser.find_element(By.CSS_SELECTOR, "#stock-image").text, browser.find_element(By.CSS_SELECTOR, "#tgate-image").text
    assert "stock:" in labels[0] and "MACs" in labels[0] and "TGATE gate 10:" in labels[1]
    assert "error" not in browser.find_element(By.TAG_NAME, "body").text.lower()

    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, height + 140)  # the whole page, summary included (plus the window's frame)
    screenshot = Path(os.environ.get("DEMO_SCREENSHOT") or tmp_path / "screenshot.png")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000
