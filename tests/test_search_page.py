"""The page ``ssl-zoo serve`` serves at ``GET /``, driven in Debian's headless Chromium (selenium with
chromium-driver), and the routes it uses: ``/collection``, ``/map`` and ``/match``.

Without a browser the browser test skips, saying what to install; with ``SSL_ZOO_REQUIRE_BROWSER=1``
(as ``.ci/run`` sets) it fails instead. ``SSL_ZOO_SCREENSHOTS=DIR`` keeps its screenshots in DIR
(the README's come from ``SSL_ZOO_SCREENSHOTS=docs/assets``)."""

import os
import shutil
import tempfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import CIFAR10_JPEG, needs_cifar10
from PIL import Image
from test_serving import ServerProcess

import zoo
from zoo.eval.figures import cell_matches
from zoo.retrieval.embed import embed_collection
from zoo.retrieval.index import build_index

pytestmark = needs_cifar10
KEY = "page-key"
MODEL = "simclr-cifar10"
QUERY = CIFAR10_JPEG / "train" / "cat" / "0003.jpg"  # not in the collection (test images)


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """30 test images per class, labelled by folder, embedded by the bundled SimCLR encoder and indexed."""
    root = tmp_path_factory.mktemp("page-collection")
    for folder in sorted((CIFAR10_JPEG / "test").iterdir()):
        (root / "images" / folder.name).mkdir(parents=True)
        for image in sorted(folder.glob("*.jpg"))[:30]:
            (root / "images" / folder.name / image.name).symlink_to(image)
    embed_collection(root / "images", MODEL, root / "out", workers=0, progress=False)
    build_index(root / "out")
    return root / "out"


@pytest.fixture(scope="module")
def server(collection):
    s = ServerProcess(MODEL, "--index", str(collection), env={"SSL_ZOO_API_KEY": KEY})
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver

        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--window-size=1000,1200",
                     f"--user-data-dir={tempfile.mkdtemp(prefix='ssl-zoo-chromium-')}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(
            shutil.which("chromedriver") or "/usr/bin/chromedriver"))
    except Exception as e:  # no selenium, no chromium, or it would not start
        message = (f"no headless Chromium could be started ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                   "install it with `apt-get install chromium chromium-driver` and `pip install selenium`")
        if os.environ.get("SSL_ZOO_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    yield driver
    driver.quit()


def _auth() -> dict:
    return {"authorization": f"Bearer {KEY}"}


def _wait(driver, condition, what: str, seconds: float = 90):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds).until(lambda d: condition(d), message=f"timed out waiting for {what}")


def _screenshot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    driver.save_screenshot(str(path))
    if os.environ.get("SSL_ZOO_SCREENSHOTS"):
        shutil.copyfile(path, Path(os.environ["SSL_ZOO_SCREENSHOTS"]) / name)
    return path


def test_the_page_searches_shows_matches_and_maps_as_the_api_answers(server, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(f"{server.url}/")
    _wait(browser, lambda d: "API key" in d.find_element(By.ID, "status").text, "the page to ask for the key")
    key = browser.find_element(By.ID, "key")
    key.send_keys(KEY + Keys.TAB)  # the page then asks the server with it
    _wait(browser, lambda d: MODEL in d.find_element(By.ID, "model").text, "the model's name")

    browser.find_element(By.ID, "query-file").send_keys(str(QUERY))
    neighbors = _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#neighbors[data-done='true']"), "results")
    expected = httpx.post(f"{server.url}/search", params={"k": 8}, headers=_auth(), timeout=60,
                          files=[("images", (QUERY.name, QUERY.read_bytes(), "image/jpeg"))]).json()["results"][0]
    assert neighbors.get_attribute("data-rows") == ",".join(str(h["row"]) for h in expected["neighbors"])
    assert browser.find_element(By.ID, "prediction").text == f"k-NN class: {expected['label']}"
    _wait(browser, lambda d: d.execute_script(
        "return [...document.querySelectorAll('#neighbors img')].every(i => i.complete && i.naturalWidth > 0)"),
        "the neighbours' thumbnails")

    first = browser.find_elements(By.CSS_SELECTOR, "#neighbors li")[0]
    first.click()
    _wait(browser, lambda d: d.find_element(By.ID, "match").get_attribute("data-row") == str(expected["neighbors"][0]
                                                                                              ["row"]), "the match")
    grids = httpx.post(f"{server.url}/match", params={"row": expected["neighbors"][0]["row"]}, headers=_auth(),
                       files=[("images", (QUERY.name, QUERY.read_bytes(), "image/jpeg"))], timeout=60).json()
    assert f"{grids['similarity']:.3f}" in browser.find_element(By.ID, "match-caption").text
    _screenshot(browser, tmp_path, "page-search.png")

    browser.find_element(By.ID, "tab-map").click()
    canvas = _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#map[data-points]"), "the map", 180)
    points = httpx.get(f"{server.url}/map", headers=_auth(), timeout=180).json()["points"]
    assert int(canvas.get_attribute("data-points")) == len(points) == 300
    point = points[0]  # hover over one point: its image and row appear
    size = canvas.size
    ActionChains(browser).move_to_element_with_offset(
        canvas, int((8 + point["x"] * (640 - 16)) * size["width"] / 640 - size["width"] / 2),
        int((8 + (1 - point["y"]) * (640 - 16)) * size["height"] / 640 - size["height"] / 2)).perform()
    _wait(browser, lambda d: d.find_element(By.ID, "map-tip").is_displayed(), "the hover tip")
    _wait(browser, lambda d: d.execute_script("const i = document.getElementById('map-tip-image');"
                                              "return i.complete && i.naturalWidth > 0"), "the hover image")
    assert browser.find_element(By.ID, "map-tip-text").text.startswith("row ")
    shot = _screenshot(browser, tmp_path, "page-map.png")
    assert shot.stat().st_size > 10_000


def test_match_answers_the_cells_best_similarities_and_the_embeddings_cosine(server):
    images = [CIFAR10_JPEG / "test" / c / "0005.jpg" for c in ("dog", "cat")]
    r = httpx.post(f"{server.url}/match", headers=_auth(), timeout=60,
                   files=[("images", (p.name, p.read_bytes(), "image/jpeg")) for p in images])
    assert r.status_code == 200, r.text
    encoder = zoo.load(MODEL)
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in images]
    best_a, best_b = cell_matches(encoder, arrays[0][None], arrays[1][None])
    np.testing.assert_allclose(r.json()["query"], best_a[0].numpy(), atol=1e-4)
    np.testing.assert_allclose(r.json()["other"], best_b[0].numpy(), atol=1e-4)
    a, b = encoder.embed(images, normalize=True)
    assert r.json()["similarity"] == pytest.approx(float(a @ b), abs=1e-3)


def test_the_pages_routes_refuse_what_they_cannot_answer(server, collection):
    assert httpx.get(f"{server.url}/").status_code == 200  # the page itself needs no key
    assert httpx.get(f"{server.url}/map").status_code == 401  # what it shows does
    for row, status in (("abc", 400), ("300", 404), ("-1", 404)):
        r = httpx.get(f"{server.url}/collection", params={"row": row}, headers=_auth())
        assert r.status_code == status and "row" in r.json()["error"]
    r = httpx.get(f"{server.url}/collection", params={"row": "0"}, headers=_auth())
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg" and r.content[:2] == b"\xff\xd8"
    one = [("images", ("a.jpg", QUERY.read_bytes(), "image/jpeg"))]
    r = httpx.post(f"{server.url}/match", headers=_auth(), files=one, timeout=60)
    assert r.status_code == 400 and "two images" in r.json()["error"]
