"""Studio test fixtures: the cluster's studio with trained yaw and smile boundaries, and a headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
import uuid

import grpc
import pytest

from interfacegan.v1 import boundary_pb2, boundary_pb2_grpc, studio_pb2, studio_pb2_grpc

#: Chromium flags: headless, nothing fetched from the network, a profile of its own.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1000")


@pytest.fixture(scope="session")
def studio(cluster) -> dict:
    """The page of the cluster's studio, with yaw and smile boundaries trained on 1,000 samples of the default model
    (yaw's boundary is near perfect even so: moving along it turns the head the asked way)."""
    editor = cluster.services["editor"].address
    with grpc.insecure_channel(editor) as channel:
        stub = boundary_pb2_grpc.BoundaryServiceStub(channel)  # through the editor's relay
        updates = list(stub.TrainBoundaries(boundary_pb2.TrainBoundariesRequest(
            request_id=uuid.uuid4().hex, attributes=["yaw", "smile"], num_samples=1000, chosen_ratio=0.1, seed=11,
            reuse_dataset=True), timeout=600))
    assert {b.ref.attribute for b in updates[-1].boundaries} == {"yaw", "smile"}
    with grpc.insecure_channel(cluster.services["studio"].address) as channel:
        info = studio_pb2_grpc.StudioServiceStub(channel).GetStudioInfo(studio_pb2.GetStudioInfoRequest(), timeout=10)
    return {"url": info.url, "info": info, "editor": editor, "cluster": cluster}


def call(url: str, body: dict | bytes | None = None, *, headers: dict | None = None, method: str | None = None,
         content_type: str = "application/json", timeout: float = 120) -> tuple[int, dict, dict]:
    """One HTTP call: (status, JSON body or {"text": ...}, headers)."""
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"),
                                     headers={**({"Content-Type": content_type} if data is not None else {}),
                                              **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw, got = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as e:
        status, raw, got = e.code, e.read(), dict(e.headers)
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = {"text": raw.decode(errors="replace")}
    return status, parsed, got


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Debian's Chromium, driven by selenium through Debian's chromedriver (nothing is downloaded)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, ("the browser test needs Debian's chromium and chromium-driver: "
                                 "apt-get install -y chromium chromium-driver (make setup installs them)")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not look for browsers or drivers online
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    session = webdriver.Chrome(service=Service(driver), options=options)
    session.set_page_load_timeout(60)
    yield session
    session.quit()
