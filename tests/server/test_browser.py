"""End to end in a real browser: ``meddeblur serve`` on a free loopback port, driven by headless Chromium.

Uses Debian's ``chromium`` and ``chromium-driver`` (installed by .ci/run) through Selenium
with the driver's path given, so Selenium Manager never runs and nothing is downloaded.
Without the browser the tests skip, except under CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import base64
import contextlib
import io
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
from meddeblur.inference.change_map import _colour
from meddeblur.io.decode import read_image
from meddeblur.models import DEFAULT_WEIGHTS, PSF_WEIGHTS, ModelConfig, build_model, save_weights, weights_id
from meddeblur.psf.kernel import load_psf
from meddeblur.restore import registry

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


DEVICE_PSF = "gauss:sigma=1.2"  # what the dermatoscope's "calibrated" device.psf.json holds


@pytest.fixture(scope="module")
def psf_server(tmp_path_factory: pytest.TempPathFactory, estimators):
    """The real server with the shipped models, started with a calibrated ``--psf device.psf.json``, whose blur
    estimator always finds gauss:sigma=1 (method=psf)."""
    _require_browser()
    folder = tmp_path_factory.mktemp("psf-server")
    device = load_psf(DEVICE_PSF).save_json(folder / "device.psf.json")
    with _serving(folder, "--estimator", str(estimators["gauss"]), "--psf", str(device)) as url:
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


def _expected_rgba(level: float, scale: float) -> tuple[int, ...]:
    """The overlay's colour of a pixel changed by ``level`` over a colour scale ending at ``scale`` (page.html's rule)."""
    if level <= 0:
        return (0, 0, 0, 0)
    step = min(255, int(np.floor(255 * level / scale + 0.5)))
    return (*(int(c) for c in _colour(np.array(step / 255))), int(np.floor(230 * min(1.0, 2 * step / 255) + 0.5)))


def test_the_change_overlay_is_readable_at_100_percent_on_a_scale_fitted_to_the_image(server, browser, tmp_path):
    image = (synthetic_dermoscopy(HEIGHT, WIDTH, seed=4) * 255).round().astype(np.uint8)
    upload = tmp_path / "lesion.png"
    Image.fromarray(image).save(upload)
    browser.get(server + "/")
    Select(browser.find_element("id", "zoom")).select_by_value("actual")
    _choose(browser, upload)
    assert _wait_for_state(browser) == "done", browser.find_element("id", "error").text
    overlay, legend = browser.find_element("id", "overlay"), browser.find_element("id", "legend")
    assert not overlay.is_displayed()
    browser.find_element("id", "overlay-toggle").click()
    assert overlay.is_displayed() and legend.is_displayed()
    # The map covers the image exactly (its own pixels: the image's size, one per screen pixel at 100 %).
    size = "return [arguments[0].width, arguments[0].height]"
    assert browser.execute_script(size, overlay) == [WIDTH, HEIGHT]
    assert overlay.size == browser.find_element("id", "after").size == {"width": WIDTH, "height": HEIGHT}
    # The legend is a bar with tick labels, not a sliver: at least 300 × 48 CSS px whatever the image's height.
    assert legend.size["width"] >= 300 and legend.size["height"] >= 48, legend.size
    answer = httpx.post(server + "/v1/deblur", params={"change_levels": "true", "method": registry.NETWORK, "psf": ""},
                        files={"file": ("lesion.png", upload.read_bytes(), "image/png")}, timeout=120).json()
    scale = answer["change_scale"]
    packed = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["change_levels"]))).convert("RGB")).astype(np.float64)
    levels = (packed[..., 0] * 256 + packed[..., 1]) / 256
    assert scale < np.ceil(levels.max()) or scale == 255  # fitted to the change's 99th percentile, not to its largest
    assert legend.get_attribute("data-scale") == str(scale)
    ticks = [float(t) for t in legend.get_attribute("data-ticks").split(",")]
    assert ticks[0] == 0 and ticks[-1] == scale and len(ticks) >= 3
    label = browser.find_element("id", "scale-label").text
    assert label.startswith(f"Colour scale: 0–{scale} levels (automatic: the 99th percentile of the change, ")
    assert "Change (8-bit levels): mean" in browser.find_element("id", "change-figures").text

    # Each pixel: inferno over the scale, transparent where nothing changed, nearly opaque from half the scale up.
    read = ("const d = arguments[0].getContext('2d').getImageData(arguments[1], arguments[2], 1, 1).data; "
            "return [d[0], d[1], d[2], d[3]]")
    def check(scale_now: float) -> None:
        flat = levels.ravel()
        for index in {int(flat.argmax()), int(np.abs(flat - scale_now / 4).argmin()), int(flat.argmin())}:
            y, x = divmod(index, WIDTH)
            got, want = browser.execute_script(read, overlay, x, y), _expected_rgba(flat[index], scale_now)
            assert abs(got[3] - want[3]) <= 1, (x, y, flat[index], got, want)
            if want[3] >= 100:  # (the canvas keeps colour premultiplied: faint pixels' colours are not exact)
                assert max(abs(a - b) for a, b in zip(got[:3], want[:3])) <= 3, (x, y, flat[index], got, want)
    check(scale)
    browser.save_screenshot(str(tmp_path / "overlay.png"))
    # The slider sets another scale: the legend and the map follow.
    browser.execute_script("const s = document.getElementById('scale'); s.value = s.max; s.dispatchEvent(new Event('input'));")
    assert legend.get_attribute("data-scale") == "255" and overlay.get_attribute("data-scale") == "255"
    assert browser.find_element("id", "scale-label").text == f"Colour scale: 0–255 levels (set by the slider; automatic: {scale} levels)"
    check(255)
    browser.find_element("id", "overlay-toggle").click()
    assert not overlay.is_displayed()


def test_estimating_the_blur_shows_the_kernel_its_figures_and_the_check(psf_server, browser, tmp_path):
    image = (synthetic_dermoscopy(160, 180, seed=5) * 255).round().astype(np.uint8)
    small = (synthetic_dermoscopy(100, 120, seed=6) * 255).round().astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "lesion.png")
    Image.fromarray(small).save(tmp_path / "small.png")
    browser.get(psf_server + "/")
    panel, kernel = browser.find_element("id", "psf"), browser.find_element("id", "kernel")
    Select(browser.find_element("id", "method")).select_by_value(registry.ESTIMATED)
    assert not browser.find_element("id", "psf-spec").is_enabled()  # the PSF is estimated, not told
    _choose(browser, tmp_path / "lesion.png")
    assert _wait_for_state(browser) == "done", browser.find_element("id", "error").text
    browser.save_screenshot(str(tmp_path / "psf.png"))
    assert panel.is_displayed() and kernel.is_displayed()
    natural = "return [arguments[0].naturalWidth, arguments[0].complete]"
    width, complete = browser.execute_script(natural, kernel)
    assert complete and width > 300  # the kernel beside its MTF, as deblur --explain draws it
    assert browser.find_element("id", "psf-figures").text == \
        "Estimated PSF: gauss:sigma=1 (family gauss, confidence 1.00, 7×7 px, MTF50 0.188 cycles/px)."
    check = browser.find_element("id", "psf-check").text
    assert check.startswith("Consistency check: residual ratio ") and "(limit 4): " in check
    result = browser.find_element("id", "psf-result").text
    assert result.startswith("Result: ")
    assert browser.find_element("id", "after").is_displayed()
    # The header names the model that made this result: the kernel-conditioned network restored with the estimate.
    made = weights_id(PSF_WEIGHTS) if result.startswith("Result: restored") else weights_id(DEFAULT_WEIGHTS)
    assert browser.find_element("id", "model").text.startswith(f"Model {made} (")

    # Too small to estimate: no kernel, and the page says the blind network restored it.
    idle = "document.body.dataset.state = 'idle'"  # so that the wait below sees this upload's end, not the last one's
    browser.execute_script(idle)
    _choose(browser, tmp_path / "small.png")
    assert _wait_for_state(browser) == "done", browser.find_element("id", "error").text
    assert panel.is_displayed() and not kernel.is_displayed()
    assert browser.find_element("id", "psf-figures").text == "No PSF estimated."
    assert browser.find_element("id", "psf-result").text.startswith("Result: fell back to the blind network (the image is smaller")
    assert browser.find_element("id", "model").text.startswith(f"Model {weights_id(DEFAULT_WEIGHTS)} (the blind network) made this")

    # The blind network (the PSF field emptied: this server has a default PSF): no panel. Changing the method deblurs
    # the image on show again.
    browser.execute_script(idle + "; document.getElementById('psf-spec').value = ''")
    Select(browser.find_element("id", "method")).select_by_value(registry.NETWORK)
    assert _wait_for_state(browser) == "done", browser.find_element("id", "error").text
    assert not panel.is_displayed()


def _idle(driver) -> None:
    """So that the next wait sees the coming request's end, not the last one's."""
    driver.execute_script("document.body.dataset.state = 'idle'")


def _psf_line(spec_or_file: str, source: str, given: str) -> str:
    psf = load_psf(spec_or_file)
    return (f"PSF used: {source} ({given}), {psf.kernel.shape[1]}×{psf.kernel.shape[0]} px, "
            f"MTF50 {round(psf.mtf50, 5):.3f} cycles/px.")


def test_the_method_selector_offers_the_registry_and_a_change_deblurs_again(server, browser, tmp_path):
    from selenium.webdriver.common.keys import Keys

    Image.fromarray((synthetic_dermoscopy(HEIGHT, WIDTH, seed=7) * 255).round().astype(np.uint8)).save(tmp_path / "lesion.png")
    browser.get(server + "/")
    method, field = Select(browser.find_element("id", "method")), browser.find_element("id", "psf-spec")
    assert [o.get_attribute("value") for o in method.options] == list(registry.METHODS)
    assert [o.text for o in method.options] == [m.label for m in registry.METHODS.values()]
    assert [o.get_attribute("title") for o in method.options] == [m.summary for m in registry.METHODS.values()]
    assert method.first_selected_option.get_attribute("value") == registry.NETWORK
    assert field.get_attribute("value") == "" and field.is_enabled()  # this server has no default PSF
    _choose(browser, tmp_path / "lesion.png")
    assert _wait_for_state(browser) == "done", browser.find_element("id", "error").text
    assert f"method {registry.NETWORK}" in browser.find_element("id", "info").text

    # A known-blur method without a PSF: changing the method deblurs again at once, and the server's refusal is shown.
    _idle(browser)
    method.select_by_value("wiener")
    assert _wait_for_state(browser, 60) == "error"
    assert "method=wiener restores a known blur" in browser.find_element("id", "error").text
    # A PSF typed in and committed (Enter): deblurred with it; the PSF used is shown beside the result.
    _idle(browser)
    field.send_keys("gauss:sigma=1.6", Keys.ENTER)
    assert _wait_for_state(browser, 60) == "done", browser.find_element("id", "error").text
    assert browser.find_element("id", "psf").is_displayed()
    assert browser.find_element("id", "psf-figures").text == _psf_line("gauss:sigma=1.6", "gauss:sigma=1.6", "spec")
    assert "method wiener, model none" in browser.find_element("id", "info").text
    assert browser.find_element("id", "model").text.startswith("Wiener (no learned model) made this result")
    # Another method: deblurred again with the same PSF.
    _idle(browser)
    method.select_by_value("rl")
    assert _wait_for_state(browser, 60) == "done", browser.find_element("id", "error").text
    assert "method rl" in browser.find_element("id", "info").text
    assert browser.find_element("id", "psf-check").text.startswith("Restored by Richardson-Lucy — ")
    # The PSF emptied: the blind network again, no PSF panel.
    _idle(browser)
    method.select_by_value(registry.NETWORK)
    assert _wait_for_state(browser, 60) == "error"  # network told gauss:sigma=1.6 needs the kernel-conditioned model
    assert "this server cannot restore a known PSF this way" in browser.find_element("id", "error").text
    _idle(browser)
    field.send_keys(Keys.CONTROL, "a", Keys.NULL, Keys.DELETE, Keys.ENTER)
    assert _wait_for_state(browser, 60) == "done", browser.find_element("id", "error").text
    assert not browser.find_element("id", "psf").is_displayed()


def test_the_default_psf_is_shown_used_and_the_header_names_the_model_that_made_the_result(psf_server, browser, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    Image.fromarray((synthetic_dermoscopy(160, 180, seed=8) * 255).round().astype(np.uint8)).save(tmp_path / "lesion.png")
    browser.get(psf_server + "/")
    served, made = weights_id(DEFAULT_WEIGHTS), weights_id(PSF_WEIGHTS)
    header = browser.find_element("id", "model")
    WebDriverWait(browser, 30).until(lambda _: served in header.text)  # the card: the blind model served
    field = browser.find_element("id", "psf-spec")
    assert field.get_attribute("value") == "device.psf.json"
    psf = load_psf(DEVICE_PSF)
    assert f"This server's default PSF: device.psf.json, {psf.kernel.shape[1]}×{psf.kernel.shape[0]} px" in \
        browser.find_element("id", "psf-default").text
    assert Select(browser.find_element("id", "method")).first_selected_option.get_attribute("value") == registry.KNOWN_BLUR_DEFAULT
    _choose(browser, tmp_path / "lesion.png")
    assert _wait_for_state(browser) == "done", browser.find_element("id", "error").text
    browser.save_screenshot(str(tmp_path / "default-psf.png"))
    assert browser.find_element("id", "psf-figures").text == _psf_line(DEVICE_PSF, "device.psf.json", "server default")
    # The kernel-conditioned network made this result: the header says so, not the card's blind model.
    assert header.text.startswith(f"Model {made} (") and served not in header.text
    assert f"model {made}" in browser.find_element("id", "info").text
    if browser.execute_script("return CONFIG.explain"):
        assert browser.find_element("id", "kernel").is_displayed()  # the PSF used, drawn beside the result

    # Another PSF typed in: deblurred with it.
    _idle(browser)
    browser.execute_script("const f = document.getElementById('psf-spec'); f.value = 'defocus:radius=2'; "
                           "f.dispatchEvent(new Event('change'));")
    assert _wait_for_state(browser) == "done", browser.find_element("id", "error").text
    assert browser.find_element("id", "psf-figures").text == _psf_line("defocus:radius=2", "defocus:radius=2", "spec")


def test_the_estimate_says_its_result_once(server, browser):
    browser.get(server + "/")
    psf = {"source": "gauss:sigma=1", "family": "gauss", "confidence": 0.97, "size": [7, 7], "mtf50_cycles_per_pixel": 0.1875}
    check = {"ratio": 1.2, "limit": 4, "passed": True}
    said = "showPsf({restoration: arguments[0], psf: null, method: 'psf'}); return document.getElementById('psf-result').textContent"
    cases = [({"result": "restored", "reason": "restored with the estimated PSF"}, "Result: restored with the estimated PSF."),
             ({"result": "restored", "reason": "restored with the estimated PSF map"}, "Result: restored with the estimated PSF map."),
             ({"result": "blind", "reason": "blur estimate confidence 0.31 < 0.5"},
              "Result: fell back to the blind network (blur estimate confidence 0.31 < 0.5)."),
             ({"result": "unchanged", "reason": "no blur found"}, "Result: left unchanged (no blur found).")]
    for record, expected in cases:
        assert browser.execute_script(said, {"psf": psf, "consistency": check, **record}) == expected
