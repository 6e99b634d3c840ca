"""A real browser on the landing page: headless Chromium driven by Selenium.

Usage: browser.py URL DOWNLOAD_DIR PROFILE_DIR
Opens URL (the server's `/`), reads the elements with ids `name`, `size` and `blake3`,
clicks the `download` link, and waits (at most 60 s) until the download directory holds
a finished file (no `.crdownload` or hidden temporary file left). Prints `KEY<TAB>VALUE` lines: name, size,
blake3, files (the directory's names, `/`-separated). The Rust side judges them.
"""

import os
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

url, downloads, profile = sys.argv[1:4]
opts = Options()
opts.binary_location = "/usr/bin/chromium"
for flag in [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--no-proxy-server",
    "--user-data-dir=" + profile,
]:
    opts.add_argument(flag)
opts.add_experimental_option(
    "prefs",
    {
        "download.default_directory": downloads,
        "download.prompt_for_download": False,
        "safebrowsing.enabled": False,
    },
)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
try:
    driver.set_page_load_timeout(30)
    driver.get(url)
    for key in ["name", "size", "blake3"]:
        print(f"{key}\t{driver.find_element(By.ID, key).text}")
    driver.find_element(By.ID, "download").click()
    files = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        files = sorted(os.listdir(downloads))
        # Chromium writes a hidden temporary file, then NAME.crdownload, then renames it.
        if files and not any(f.endswith(".crdownload") or f.startswith(".") for f in files):
            break
        time.sleep(0.1)
    print("files\t" + "/".join(files))
finally:
    driver.quit()
