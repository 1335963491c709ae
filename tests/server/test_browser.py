"""End to end in a real browser: ``meddeblur serve`` on a free loopback port, driven by headless Chromium.

Uses Debian's ``chromium`` and ``chromium-driver`` (installed by .ci/run) through Selenium
with the driver's path given, so Selenium Manager never runs and nothing is downloaded.
Without the browser the tests skip, except under CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from conftest import cli_env
from PIL import Image

from meddeblur.data.synthetic import synthetic_dermoscopy
from meddeblur.io.decode import read_image
from meddeblur.models import ModelConfig, build_model, save_weights

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WIDTH, HEIGHT = 200, 136  # not multiples of 16: the server must pad and crop back


def _require_browser():
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    try:
        from selenium import webdriver  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if missing:
        message = f"{', '.join(missing)} missing; install Debian's chromium and chromium-driver (see .ci/run) and pip install -e '.[test]'"
        if os.environ.get("CI"):
            pytest.fail(f"browser test cannot run on CI: {message}")
        pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _serving(folder: Path, *options: str):
    """``python -m meddeblur serve OPTIONS`` on a free loopback port until the block ends; yields its URL."""
    port = _free_port()
    log = open(folder / "server.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "meddeblur", "serve", "--host", "127.0.0.1", "--port", str(port), *options],
                               stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=cli_env())
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # a slow, loaded machine imports torch slowly
        while True:
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}: {(folder / 'server.log').read_text()[-2000:]}")
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready: {(folder / 'server.log').read_text()[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    """The real server (``python -m meddeblur serve``) with a tiny model that visibly changes images."""
    _require_browser()
    folder = tmp_path_factory.mktemp("browser-server")
    config = ModelConfig(arch="nafnet", width=8)
    torch.manual_seed(0)
    network = build_model(config)
    torch.nn.init.normal_(network.ending.weight, std=0.02)
    weights = save_weights(network, config, folder / "tiny.safetensors")
    with _serving(folder, "--model", str(weights), "--max-upload-mb", "2") as url:
        yield url


@pytest.fixture(scope="module")
def psf_server(tmp_path_factory: pytest.TempPathFactory, estimators):
    """The real server with the shipped models, whose blur estimator always finds gauss:sigma=1 (method=psf)."""
    _require_browser()
    with _serving(tmp_path_factory.mktemp("psf-server"), "--estimator", str(estimators["gauss"])) as url:
        yield url


@pytest.fixture(scope="module")
def browser(server, tmp_path_factory: pytest.TempPathFactory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    folder = tmp_path_factory.mktemp("browser")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage", "--window-size=1280,1100",
                 f"--user-data-dir={folder / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER), log_output=str(folder / "chromedriver.log")),
                              options=options)
    downloads = folder / "downloads"
    downloads.mkdir()
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads  # where the download button's file lands
    try:
        yield driver
    finally:
        driver.quit()


def _wait_for_state(driver, timeout: float = 180) -> str:
    from selenium.webdriver.support.ui import WebDriverWait

    body = driver.find_element("tag name", "body")
    WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda _: body.get_attribute("data-state") in ("done", "error"))
    return body.get_attribute("data-state")


def _choose(driver, path: Path) -> None:
    driver.find_element("id", "file").send_keys(str(path))


def Select(element):  # noqa: N802  (selenium's own class name)
    from selenium.webdriver.support.ui import Select as _Select

    return _Select(element)


def test_upload_compare_and_download_in_chromium(server, browser, tmp_path):
    image = (synthetic_dermoscopy(HEIGHT, WIDTH, seed=3) * 255).round().astype(np.uint8)
    upload = tmp_path / "lesion.png"
    Image.fromarray(image).save(upload)
    browser.get(server + "/")
    assert "not for diagnosis alone" in browser.find_element("id", "disclaimer").text
    _choose(browser, upload)
    state = _wait_for_state(browser)
    browser.save_screenshot(str(tmp_path / "page.png"))
    assert state == "done", browser.find_element("id", "error").text
    assert (tmp_path / "page.png").stat().st_size > 10_000

    after, before = browser.find_element("id", "after"), browser.find_element("id", "before")
    natural = "return [arguments[0].naturalWidth, arguments[0].naturalHeight, arguments[0].complete]"
    assert browser.execute_script(natural, after) == [WIDTH, HEIGHT, True]
    assert browser.execute_script(natural, before) == [WIDTH, HEIGHT, True]
    assert after.is_displayed() and before.is_displayed()
    assert after.size == before.size and after.size["width"] > WIDTH  # same zoom, fitted to the page
    assert "model" in browser.find_element("id", "info").text and f"{WIDTH}x{HEIGHT}" in browser.find_element("id", "info").text

    # The slider moves the split between the two images.
    browser.execute_script("const s = document.getElementById('slider'); s.value = 20; s.dispatchEvent(new Event('input'));")
    assert "20%" in after.value_of_css_property("clip-path")

    link = browser.find_element("id", "download")
    assert link.is_displayed() and link.get_attribute("href").startswith("blob:")
    assert link.get_attribute("download") == "lesion_deblurred.png"
    link.click()
    target = browser.downloads / "lesion_deblurred.png"
    deadline = time.monotonic() + 30
    while not target.is_file() or list(browser.downloads.glob("*.crdownload")):
        assert time.monotonic() < deadline, f"no download in {list(browser.downloads.iterdir())}"
        time.sleep(0.2)
    downloaded = target.read_bytes()
    direct = httpx.post(server + "/v1/deblur", files={"file": ("lesion.png", upload.read_bytes(), "image/png")}, timeout=120)
    assert direct.status_code == 200 and downloaded == direct.content  # the page hands over exactly what the API answers
    result = read_image(target)
    assert result.rgb.shape == (HEIGHT, WIDTH, 3) and np.abs(result.rgb * 255 - image).max() >= 2


def test_bad_file_shows_a_readable_error(server, browser, tmp_path):
    notes = tmp_path / "notes.png"
    notes.write_text("not an image at all\n" * 10)
    browser.get(server + "/")
    _choose(browser, notes)
    assert _wait_for_state(browser) == "error"
    error = browser.find_element("id", "error")
    assert error.is_displayed() and "notes.png" in error.text and "not a readable image" in error.text
    assert not browser.find_element("id", "download").is_displayed()


def test_the_change_overlay_toggle_shows_the_heat_map_over_the_images(server, browser, tmp_path):
    image = (synthetic_dermoscopy(HEIGHT, WIDTH, seed=4) * 255).round().astype(np.uint8)
    upload = tmp_path / "lesion.png"
    Image.fromarray(image).save(upload)
    browser.get(server + "/")
    _choose(browser, upload)
    assert _wait_for_state(browser) == "done", browser.find_element("id", "error").text
    overlay, legend = browser.find_element("id", "overlay"), browser.find_element("id", "legend")
    assert not overlay.is_displayed()
    browser.find_element("id", "overlay-toggle").click()
    assert overlay.is_displayed() and legend.is_displayed()
    # The map covers the image exactly (its own pixels: the image's size); the colour bar sits beside, with the figures.
    size = "return [arguments[0].width, arguments[0].height]"
    assert browser.execute_script(size, overlay) == [WIDTH, HEIGHT]
    assert browser.execute_script(size, legend) == [70, 136]
    assert overlay.size == browser.find_element("id", "after").size
    painted = "return Array.from(arguments[0].getContext('2d').getImageData(0, 0, arguments[0].width, arguments[0].height).data).some((v, i) => i % 4 !== 3 && v > 40)"
    assert browser.execute_script(painted, overlay)
    assert "Change (8-bit levels): mean" in browser.find_element("id", "change-figures").text
    browser.save_screenshot(str(tmp_path / "overlay.png"))
    browser.find_element("id", "overlay-toggle").click()
    assert not overlay.is_displayed()


def test_estimating_the_blur_shows_the_kernel_its_figures_and_the_check(psf_server, browser, tmp_path):
    image = (synthetic_dermoscopy(160, 180, seed=5) * 255).round().astype(np.uint8)
    small = (synthetic_dermoscopy(100, 120, seed=6) * 255).round().astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "lesion.png")
    Image.fromarray(small).save(tmp_path / "small.png")
    browser.get(psf_server + "/")
    panel, kernel = browser.find_element("id", "psf"), browser.find_element("id", "kernel")
    Select(browser.find_element("id", "method")).select_by_value("psf")
    _choose(browser, tmp_path / "lesion.png")
    assert _wait_for_state(browser) == "done", browser.find_element("id", "error").text
    browser.save_screenshot(str(tmp_path / "psf.png"))
    assert panel.is_displayed() and kernel.is_displayed()
    natural = "return [arguments[0].naturalWidth, arguments[0].complete]"
    width, complete = browser.execute_script(natural, kernel)
    assert complete and width > 300  # the kernel beside its MTF, as deblur --explain draws it
    assert browser.find_element("id", "psf-figures").text == \
        "Estimated PSF: gauss:sigma=1 (family gauss, confidence 1.00, MTF50 0.188 cycles/px)."
    check = browser.find_element("id", "psf-check").text
    assert check.startswith("Consistency check: residual ratio ") and "(limit 4): " in check
    assert browser.find_element("id", "psf-result").text.startswith("Result: ")
    assert browser.find_element("id", "after").is_displayed()

    # Too small to estimate: no kernel, and the page says the blind network restored it.
    idle = "document.body.dataset.state = 'idle'"  # so that the wait below sees this upload's end, not the last one's
    browser.execute_script(idle)
    _choose(browser, tmp_path / "small.png")
    assert _wait_for_state(browser) == "done", browser.find_element("id", "error").text
    assert panel.is_displayed() and not kernel.is_displayed()
    assert browser.find_element("id", "psf-figures").text == "No PSF estimated."
    assert browser.find_element("id", "psf-result").text.startswith("Result: fell back to the blind network (the image is smaller")

    # The blind network: no panel.
    Select(browser.find_element("id", "method")).select_by_value("network")
    browser.execute_script(idle)
    _choose(browser, tmp_path / "lesion.png")
    assert _wait_for_state(browser) == "done", browser.find_element("id", "error").text
    assert not panel.is_displayed()
