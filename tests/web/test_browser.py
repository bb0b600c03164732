"""The play page in a real browser (issue 21): Debian's headless chromium loads the page from a live
`helios serve --web-port` on the toy world, plays its frames, and is driven by the keyboard.

Frames are read back from the page (`window.helios`: each frame's indices as received, the decoded
pixels of recent frames) and the agent is found in them with the simulator's own detector
(`helios_runtime.sim.agent_mask`), so "the agent moved right" is measured, not assumed.
"""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import numpy as np
import pytest

from helios_runtime.chunk import FRAMES_PER_CHUNK
from helios_runtime.sim import agent_mask

from .conftest import TOKEN

pytestmark = pytest.mark.timeout(1200)
WAIT = 300.0  # a chunk of the toy world takes a few seconds on a busy 2-core machine


def wait_for(driver, script: str, timeout: float = WAIT, what: str = ""):
    """Poll a JavaScript expression until it is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(f"return {script};")
        if value:
            return value
        time.sleep(0.1)
    state = driver.execute_script(
        "return window.helios && [helios.state, helios.errors, helios.frames.length];"
    )
    pytest.fail(f"timed out waiting for {what or script} (page: {state})")


def connect(driver, url: str, token: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(url + "?connect=0")
    wait_for(driver, "window.helios", what="the page's module")
    field = driver.find_element(By.ID, "token")
    field.clear()
    field.send_keys(token)
    driver.find_element(By.ID, "connect").click()


def agent_at(driver, frame_index: int) -> tuple[float, float]:
    """The agent's centre in a frame the page decoded, found by the simulator's detector."""
    got = driver.execute_async_script(
        "helios.pixels(arguments[0]).then(arguments[arguments.length - 1]);", frame_index
    )
    assert got is not None, f"frame {frame_index} is no longer held by the page"
    rgba = np.frombuffer(base64.b64decode(got["rgba"]), np.uint8).reshape(got["height"], got["width"], 4)
    ys, xs = np.nonzero(agent_mask(rgba[..., :3]))
    assert len(xs) >= 4, f"no agent in frame {frame_index}"
    return float(xs.mean()), float(ys.mean())


def hold(driver, key: str, what: str) -> int:
    """Hold `key` until the page has received a whole chunk made with it held; return that chunk."""
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).key_down(key).perform()
    try:
        seq = wait_for(driver, f"(helios.sent.find((a) => {what}) || {{}}).seq", what=f"an action with {key}")
        return wait_for(
            driver,
            f"(() => {{ const f = helios.frames.filter((r) => r.seq === {seq}); "
            f"return f.length === {FRAMES_PER_CHUNK} ? f[0].chunk : null; }})()",
            what=f"the chunk of action {seq}",
        )
    finally:
        ActionChains(driver).key_up(key).perform()


def test_the_page_plays_the_world_in_order_and_the_keys_move_it(browser, served):
    from selenium.webdriver.common.by import By

    connect(browser, served.url, TOKEN)
    wait_for(browser, "helios.state === 'playing' && helios.frames.length >= 33", what="chunk 0")
    info = browser.execute_script("return helios.info;")
    assert info["model"]["name"] == "toy" and info["auth_required"] is True
    assert "toy" in browser.find_element(By.ID, "model").text, "the page shows the model"
    session = browser.execute_script("return helios.session;")
    assert (session["mode"], session["encoding"], session["started_from"]) == ("lockstep", "jpeg", "image")
    browser.find_element(By.ID, "view").click()  # the keys go to the world

    chunk = hold(browser, "d", "a.keys && a.keys.includes('d')")
    start = agent_at(browser, chunk * FRAMES_PER_CHUNK)
    end = agent_at(browser, chunk * FRAMES_PER_CHUNK + FRAMES_PER_CHUNK - 1)
    dx, dy = end[0] - start[0], end[1] - start[1]
    assert dx > 6 and abs(dy) < dx, f"holding D for a chunk moved the agent by ({dx:.1f}, {dy:.1f}) px"

    # L turns the camera right: the view pans east, so the agent slides left across it.
    chunk = hold(browser, "l", "a.camera && a.camera.yaw > 0")
    start = agent_at(browser, chunk * FRAMES_PER_CHUNK)
    end = agent_at(browser, chunk * FRAMES_PER_CHUNK + FRAMES_PER_CHUNK - 1)
    assert end[0] - start[0] < -6, f"panning right moved the agent by {end[0] - start[0]:.1f} px"

    prompt = browser.find_element(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys("a desert at dusk with rocks\n")
    seq = wait_for(browser, "(helios.sent.find((a) => a.prompt) || {}).seq", what="the prompt update")
    wait_for(browser, f"helios.frames.some((r) => r.seq === {seq})", what="a chunk after the prompt")
    wait_for(browser, "helios.stats.fps > 0 && helios.shown > 66", what="play-out")

    frames = browser.execute_script("return helios.frames;")
    indices = [f["frame"] for f in frames]
    assert indices == list(range(len(indices))), "every frame arrived, once, in order"
    for f in frames:
        assert f["frame"] == f["chunk"] * FRAMES_PER_CHUNK + f["inChunk"]
        assert f["decodeMs"] is not None and f["transportMs"] >= -50  # one machine, one clock
    seqs = {}
    for f in frames:
        seqs.setdefault(f["chunk"], set()).add(f["seq"])
    assert all(len(s) == 1 for s in seqs.values()), "a chunk's frames share their action's seq"
    stats = browser.execute_script("return helios.stats;")
    assert stats["latencyMs"] is not None and stats["latencyMs"] > 0
    assert browser.execute_script("return helios.errors;") == []
    severe = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [], "the page logged errors"

    shot = os.environ.get("HELIOS_SCREENSHOT")
    if shot:
        Path(shot).parent.mkdir(parents=True, exist_ok=True)
        browser.execute_script("window.scrollTo(0, 0); document.activeElement.blur();")
        browser.save_screenshot(shot)
    browser.get("about:blank")  # closes the socket: its session ends
    assert served.wait_sessions(0) == 0


def test_a_missing_or_wrong_token_is_refused(browser, served):
    from selenium.webdriver.common.by import By

    before = served.active_sessions()
    browser.get(served.url)  # connects at once, with no token
    wait_for(browser, "helios.state === 'unauthenticated'", what="the refusal")
    error = browser.execute_script("return helios.errors[0];")
    assert error["code"] == "UNAUTHENTICATED" and "token" in error["message"]
    assert "UNAUTHENTICATED" in browser.find_element(By.ID, "error").text, "the page says why"
    connect(browser, served.url, "not-the-token")
    wait_for(browser, "helios.state === 'unauthenticated'", what="the refusal of a wrong token")
    assert browser.execute_script("return helios.errors[0].message;") == "wrong token"
    assert browser.execute_script("return helios.closeCode;") == 1008
    assert browser.execute_script("return helios.frames.length;") == 0
    assert served.active_sessions() == before
    browser.get("about:blank")


def test_closing_the_tab_frees_its_session(browser, served):
    first = browser.current_window_handle
    assert served.wait_sessions(0) == 0
    browser.switch_to.new_window("tab")
    connect(browser, served.url, TOKEN)
    wait_for(browser, "helios.state === 'playing'", what="the session")
    assert served.active_sessions() == 1
    browser.close()  # the tab
    browser.switch_to.window(first)
    assert served.wait_sessions(0) == 0, "the session outlived its tab"
