"""The demo page and the API docs in a real headless Chromium, against the real server, offline.

Every request the browser makes to anything but the server under test is aborted and recorded: the
page and the docs must need nothing else. Screenshots are saved under the session's pytest temporary
directory, in `screenshots/` (or in $CENTERMASK_SCREENSHOTS when set).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from centermask_client.overlay import font_size
from centermask_client.rle import decode
from tests.helpers import TINY_SERVER_KEY, LiveServer
from training.data.clips import moving_frames, write_clip
from training.data.shapes import CLASSIC, SHAPE_CLASSES, render_scene
from training.examples import EXAMPLES

CHROMIUM = Path(os.environ.get("CENTERMASK_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    """Playwright's driver, one per module: its sync API allows one at a time in a thread."""
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (.ci/run installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed: pip install -e '.[browser]' (part of '.[test]')")
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Any) -> Iterator[Any]:
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("CENTERMASK_SCREENSHOTS") or tmp_path_factory.getbasetemp() / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class OfflinePage:
    """A fresh browser tab that may reach one server only; `outside` lists what it tried beyond."""

    def __init__(self, browser: Any, server: LiveServer) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.outside: list[str] = []
        allowed = urlsplit(server.url).netloc

        def guard(route: Any) -> None:
            url = route.request.url
            if urlsplit(url).netloc == allowed or url.startswith(("blob:", "data:")):
                route.continue_()
            else:
                self.outside.append(url)
                route.abort()

        self.context.route("**/*", guard)
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.errors: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tab(browser: Any, bundled_server: LiveServer) -> Iterator[OfflinePage]:
    tab = OfflinePage(browser, bundled_server)
    yield tab
    tab.close()
    assert tab.outside == [], "the page reached outside the service"
    assert tab.errors == [], "the page raised"


def shapes_image(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A generated 360×480 scene of a circle, a rectangle, a ring and a triangle, as a PNG file."""
    image = render_scene(np.random.default_rng([7, 7]), CLASSIC, 360, 480, num_objects=4).image
    path = tmp_path / "shapes.png"
    Image.fromarray(image).save(path)
    return path, image


def canvas_pixels(page: Any) -> np.ndarray:
    """The canvas as an (H, W, 3) uint8 array, read losslessly through a PNG data URL."""
    url = page.evaluate("() => document.getElementById('canvas').toDataURL('image/png')")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


def drawn_list(page: Any) -> list[dict[str, Any]]:
    return page.eval_on_selector_all(
        "#instances li",
        """items => items.map(item => ({
            index: Number(item.dataset.index), class_name: item.dataset.className,
            score: Number(item.dataset.score), text: item.querySelector('.label').textContent}))""",
    )


def expected_list(result: dict[str, Any], threshold: float) -> list[dict[str, Any]]:
    return [
        {"index": index, "class_name": instance["class_name"], "score": instance["score"]}
        for index, instance in enumerate(result["instances"])
        if instance["score"] >= threshold
    ]


def without_text(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{key: value for key, value in item.items() if key != "text"} for item in items]


def annotation_zone(instances: list[dict[str, Any]], height: int, width: int) -> np.ndarray:
    """Where boxes and labels may be drawn: each box widened by its lines, plus a label band above."""
    zone = np.zeros((height, width), dtype=bool)
    size = font_size(height, width)
    for instance in instances:
        x1, y1, x2, y2 = instance["box"]
        label_width = int(0.75 * size * (len(instance["class_name"]) + 5)) + 12
        left = max(0, min(int(x1), width - label_width) - 3)
        zone[max(0, int(y1) - size - 12) : int(y2) + 3, left : max(int(x2), left + label_width) + 3] = True
    return zone


def test_upload_draws_every_listed_instance_and_the_slider_filters(
    tab: OfflinePage, bundled_server: LiveServer, tmp_path: Path, screenshots: Path
) -> None:
    page = tab.page
    path, original = shapes_image(tmp_path)
    page.goto(f"{bundled_server.url}/")
    page.wait_for_function("() => document.getElementById('model').textContent.includes(' on cpu')")
    threshold = float(page.input_value("#score"))
    assert threshold == 0.3  # the service's default score_threshold, from /v1/model
    # Before anything is dropped on it, the page says this is the demo model and how to serve a COCO one.
    assert page.is_visible("#knows.demo")
    knows = page.text_content("#knows")
    assert "bundled demo model" in knows and "CENTERMASK_WEIGHTS=" in knows

    page.set_input_files("#file", str(path))
    page.wait_for_selector("body[data-state=done]")
    result = json.loads(page.text_content("#json"))
    direct = httpx.post(
        f"{bundled_server.url}/segment?score_threshold=0",
        files={"image": ("shapes.png", path.read_bytes(), "image/png")},
        timeout=60,
    ).json()
    assert result["instances"] == direct["instances"]

    listed = drawn_list(page)
    expected = expected_list(result, threshold)
    assert len(expected) >= 2
    assert without_text(listed) == expected
    assert all(item["text"] == f"{item['class_name']} {item['score']:.2f}" for item in listed)
    assert {item["class_name"] for item in listed} <= set(SHAPE_CLASSES)

    pixels = canvas_pixels(page)
    assert pixels.shape == original.shape
    visible = [result["instances"][item["index"]] for item in expected]
    masks = [decode(instance["mask"]) for instance in visible]
    for instance, mask in zip(visible, masks, strict=True):
        assert mask.any()
        changed = (pixels[mask] != original[mask]).any(axis=1)
        assert changed.all(), f"{instance['class_name']}: {int((~changed).sum())} mask pixels not drawn"
    far = ~(np.logical_or.reduce(masks) | annotation_zone(visible, *original.shape[:2]))
    assert far.mean() > 0.3
    np.testing.assert_array_equal(pixels[far], original[far])
    page.screenshot(path=str(screenshots / "demo-page.png"), full_page=True)

    # Hovering the best instance highlights it in the list.
    ys, xs = masks[0].nonzero()
    middle = len(ys) // 2  # a pixel of the mask itself (a ring's centre is not)
    box = page.locator("#canvas").bounding_box()
    scale = box["width"] / original.shape[1]
    page.mouse.move(box["x"] + (xs[middle] + 0.5) * scale, box["y"] + (ys[middle] + 0.5) * scale)
    page.wait_for_selector(f"#instances li.hover[data-index='{expected[0]['index']}']")
    page.screenshot(path=str(screenshots / "demo-page-hover.png"), full_page=True)
    page.mouse.move(0, 0)

    # A higher threshold: the list shrinks without a new request, and hidden masks are not drawn.
    scores = sorted(item["score"] for item in expected)
    higher = round((scores[-1] + scores[-2]) / 2, 2)
    page.fill("#score", str(higher))
    page.wait_for_function("n => document.querySelectorAll('#instances li').length < n", arg=len(listed))
    kept = expected_list(result, higher)
    assert without_text(drawn_list(page)) == kept and len(kept) < len(expected)
    pixels = canvas_pixels(page)
    shown = [result["instances"][item["index"]] for item in kept]
    still = np.logical_or.reduce([decode(i["mask"]) for i in shown]) | annotation_zone(
        shown, *original.shape[:2]
    )
    np.testing.assert_array_equal(pixels[~still], original[~still])
    page.screenshot(path=str(screenshots / "demo-page-filtered.png"), full_page=True)

    # A class toggle hides its instances.
    page.fill("#score", "0")
    page.wait_for_function(
        "n => document.querySelectorAll('#instances li').length === n", arg=len(result["instances"])
    )
    hidden = result["instances"][0]["class_id"]
    page.uncheck(f"#classes input[data-class-id='{hidden}']")
    remaining = [i for i in result["instances"] if i["class_id"] != hidden]
    assert len(drawn_list(page)) == len(remaining)


def test_an_example_image_segments_with_one_click(tab: OfflinePage, bundled_server: LiveServer) -> None:
    page = tab.page
    page.goto(f"{bundled_server.url}/")
    page.click(f".example[title='{EXAMPLES[1].file_name}']")
    page.wait_for_selector("body[data-state=done]")
    listed = drawn_list(page)
    scene = EXAMPLES[1].render()
    drawn_classes = {SHAPE_CLASSES[o.shape.class_id] for o in scene.objects}
    assert drawn_classes <= {item["class_name"] for item in listed}
    assert "shapes-2.png" in page.text_content("#status")


def test_errors_are_shown_with_their_code(
    tab: OfflinePage, bundled_server: LiveServer, tmp_path: Path
) -> None:
    page = tab.page
    page.goto(f"{bundled_server.url}/")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    page.set_input_files("#file", str(broken))
    page.wait_for_selector("body[data-state=error]")
    assert "400 invalid_image" in page.text_content("#status")


def test_the_api_key_stays_in_the_tab(browser: Any, tiny_server: LiveServer, tmp_path: Path) -> None:
    tab = OfflinePage(browser, tiny_server)
    try:
        page = tab.page
        page.goto(f"{tiny_server.url}/")
        page.wait_for_function("() => document.getElementById('model').textContent.includes('API key')")
        path, _ = shapes_image(tmp_path)
        page.set_input_files("#file", str(path))
        page.wait_for_selector("body[data-state=error]")
        assert "401 unauthorized" in page.text_content("#status")
        page.fill("#api-key", TINY_SERVER_KEY)
        page.dispatch_event("#api-key", "change")
        page.wait_for_function("() => document.getElementById('model').textContent.includes(' on cpu')")
        page.set_input_files("#file", str(path))
        page.wait_for_selector("body[data-state=done]")
        stored = page.evaluate("() => [sessionStorage.getItem('centermask-api-key'), localStorage.length]")
        assert stored == [TINY_SERVER_KEY, 0]
        assert tab.outside == [] and tab.errors == []
    finally:
        tab.close()


def test_the_api_docs_render_offline(tab: OfflinePage, bundled_server: LiveServer, screenshots: Path) -> None:
    page = tab.page
    page.goto(f"{bundled_server.url}/docs")
    page.wait_for_selector(".opblock-summary-path")
    paths = set(page.eval_on_selector_all(".opblock-summary-path", "els => els.map(e => e.textContent)"))
    assert {"/segment", "/segment/batch", "/v1/model", "/readyz"} <= {p.replace("\u200b", "") for p in paths}
    page.screenshot(path=str(screenshots / "swagger-ui.png"))
    page.goto(f"{bundled_server.url}/redoc")
    page.wait_for_selector("text=Segment one image")
    page.screenshot(path=str(screenshots / "redoc.png"))


DELIVER = """async ([how, src, name]) => {
    const blob = await (await fetch(src)).blob();
    const data = new DataTransfer();
    data.items.add(new File([blob], name, { type: blob.type }));
    const event = how === "drop"
        ? new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true })
        : new ClipboardEvent("paste", { clipboardData: data, bubbles: true, cancelable: true });
    (how === "drop" ? document.getElementById("drop") : document).dispatchEvent(event);
}"""


@pytest.mark.parametrize("how", ["drop", "paste"])
def test_an_image_can_be_dropped_or_pasted(tab: OfflinePage, bundled_server: LiveServer, how: str) -> None:
    page = tab.page
    page.goto(f"{bundled_server.url}/")
    name = f"{how}ped.png" if how == "drop" else "clipboard.png"
    page.evaluate(DELIVER, [how, f"static/examples/{EXAMPLES[2].file_name}", name])
    page.wait_for_selector("body[data-state=done]")
    assert page.text_content("#status").startswith(f"{name}: 400×300")
    assert len(drawn_list(page)) >= len(EXAMPLES[2].render().objects)


def write_y4m(path: Path, frames: Iterable[np.ndarray], fps: int) -> Path:
    """Frames as a YUV4MPEG2 file (4:2:0, JFIF's full-range BT.601): what Chromium's fake camera plays."""
    frames = list(frames)
    height, width = frames[0].shape[:2]
    with path.open("wb") as file:
        file.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            r, g, b = (frame[..., channel].astype(np.float64) for channel in range(3))
            y = 0.299 * r + 0.587 * g + 0.114 * b
            u = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
            v = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b

            def quarter(plane: np.ndarray) -> np.ndarray:
                return plane.reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3))

            file.write(b"FRAME\n")
            for plane in (y, quarter(u), quarter(v)):
                file.write(np.clip(np.rint(plane), 0, 255).astype(np.uint8).tobytes())
    return path


@pytest.fixture(scope="module")
def camera_browser(playwright: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Chromium whose camera is a generated clip of moving shapes (its fake device, allowed without asking)."""
    clip = write_y4m(tmp_path_factory.mktemp("camera") / "shapes.y4m", moving_frames(20, 240, 320), fps=10)
    camera = [
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={clip}",
    ]
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS + camera)
    yield browser
    browser.close()


def test_the_camera_streams_to_the_service_and_its_masks_are_drawn_live(
    camera_browser: Any, bundled_server: LiveServer, screenshots: Path
) -> None:
    tab = OfflinePage(camera_browser, bundled_server)
    try:
        page = tab.page
        page.goto(f"{bundled_server.url}/")
        page.wait_for_function("() => document.getElementById('model').textContent.includes(' on cpu')")
        answered_before = bundled_server.metric("centermask_stream_frames_total", {"outcome": "answered"})
        page.click("#camera")
        page.wait_for_function("() => Number(document.body.dataset.answered) >= 3")
        assert re.fullmatch(r"[\d.]+ fps · \d+ ms latency · \d+ instances", page.text_content("#live-stats"))
        assert canvas_pixels(page).shape == (240, 320, 3)
        answer = json.loads(page.text_content("#json"))
        assert answer["dropped"] == 0  # one frame in flight: nothing to drop
        assert drawn_list(page), "no shape found in the camera's frames"
        page.screenshot(path=str(screenshots / "demo-page-camera.png"), full_page=True)
        page.click("#camera")
        page.wait_for_function("() => document.body.dataset.live === undefined")
        bundled_server.wait_for(
            lambda: bundled_server.metric("centermask_streams_open") == 0, "the stream closed"
        )
        assert (
            bundled_server.metric("centermask_stream_frames_total", {"outcome": "answered"})
            >= answered_before + 3
        )
        assert tab.outside == [] and tab.errors == []
    finally:
        tab.close()


def test_a_video_is_drawn_frame_by_frame_as_its_lines_arrive(
    tab: OfflinePage, bundled_server: LiveServer, tmp_path: Path, screenshots: Path
) -> None:
    page = tab.page
    clip = tmp_path / "shapes.webm"
    write_clip(clip, 5, 240, 320, fps=5)
    page.goto(f"{bundled_server.url}/")
    page.wait_for_function("() => document.getElementById('model').textContent.includes(' on cpu')")
    page.set_input_files("#video-file", str(clip))
    page.wait_for_selector("body[data-state=done]")
    assert page.evaluate("() => document.body.dataset.answered") == "5"
    assert "5 frames segmented" in page.text_content("#status")
    assert page.text_content("#live-stats") == "frame 4 at 0.80 s · 5 of 5 frames"
    shown = json.loads(page.text_content("#json"))
    lines = httpx.post(
        f"{bundled_server.url}/segment/video?score_threshold=0&mask_format=rle",
        content=clip.read_bytes(),
        headers={"Content-Type": "video/webm"},
        timeout=120,
    ).text.splitlines()
    assert shown == json.loads(lines[-1])
    assert drawn_list(page) and canvas_pixels(page).shape == (240, 320, 3)
    assert all("track_id" not in instance for instance in shown["instances"])
    page.screenshot(path=str(screenshots / "demo-page-video.png"), full_page=True)

    # Ticked, the box asks for track ids: the page labels each tracked instance with its id.
    page.check("#track")
    page.set_input_files("#video-file", [])
    page.set_input_files("#video-file", str(clip))
    page.wait_for_function(
        "() => document.getElementById('json').textContent.includes('track_id')"
        " && document.body.dataset.state === 'done'"
    )
    assert page.evaluate("() => document.body.dataset.answered") == "5"
    tracked = json.loads(page.text_content("#json"))
    ids = [instance["track_id"] for instance in tracked["instances"] if instance.get("track_id") is not None]
    assert ids, "no instance of the last frame was tracked"
    labels = [item["text"] for item in drawn_list(page)]
    assert {f"#{track_id}" for track_id in ids} <= {label.split()[0] for label in labels}


def test_a_large_image_is_shown_downscaled_with_its_masks_sampled_at_that_size(
    tab: OfflinePage, bundled_server: LiveServer, tmp_path: Path
) -> None:
    page = tab.page
    # A 2400 × 1600 scene (shapes drawn at 5×): shown at 2048 × 1365; the tiling switch is sent along.
    small = render_scene(np.random.default_rng([7, 8]), CLASSIC, 320, 480, num_objects=3).image
    image = np.asarray(Image.fromarray(small).resize((2400, 1600), Image.Resampling.NEAREST))
    path = tmp_path / "large.png"
    Image.fromarray(image).save(path)
    sent: list[str] = []
    page.on("request", lambda request: sent.append(request.url) if "/segment" in request.url else None)
    page.goto(f"{bundled_server.url}/")
    page.select_option("#tiling", "off")
    page.set_input_files("#file", str(path))
    page.wait_for_selector("body[data-state=done]")
    assert any("tiling=off" in url for url in sent)
    assert "2400×1600 (shown at 2048×1365)" in page.text_content("#status")
    pixels = canvas_pixels(page)
    assert pixels.shape == (1365, 2048, 3)
    result = json.loads(page.text_content("#json"))
    visible = [instance for instance in result["instances"] if instance["score"] >= 0.3]
    assert visible
    for instance in visible:
        # The display pixels whose centres fall in the mask are tinted.
        mask = decode(instance["mask"])
        ys = np.floor((np.arange(1365) + 0.5) * 1600 / 1365).astype(int)
        xs = np.floor((np.arange(2048) + 0.5) * 2400 / 2048).astype(int)
        sampled = mask[ys[:, None], xs[None, :]]
        shown = np.asarray(Image.fromarray(image).resize((2048, 1365), Image.Resampling.BOX))
        # Inside (away from edges, where resampling filters differ) the image is flat: there the page's
        # pixels must differ from the image's by the tint.
        inside = ndimage.binary_erosion(sampled, iterations=3)
        assert inside.any()
        changed = (pixels[inside] != shown[inside]).any(axis=1)
        assert changed.all(), instance["class_name"]
    # And outside every mask and box, far from them, the image itself.
    untouched = pixels[-60:, :60].astype(int) - np.asarray(shown)[-60:, :60].astype(int)
    assert np.abs(untouched).max() <= 2
