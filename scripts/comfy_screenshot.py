"""A screenshot of the pack's example workflow loaded in ComfyUI's web page (headless Chromium).

    .venv/bin/python scripts/comfy_screenshot.py [--out comfyui/docs/workflow.png]

Needs the ComfyUI venv with the server's packages (`make comfy-env`), Debian's chromium and
chromium-driver, and Selenium (in the main venv). It starts ComfyUI's server the way the server test
does (tests/comfyui/server.py: `main.py --cpu`, a temporary base directory, the pack in its
custom_nodes), opens the page, loads comfyui/example_workflows/tgate_sd15.json with the frontend's
own `app.loadGraphData`, and saves the window. The canvas statistics and the minimap are turned off
through the user's settings; two runs on the same machine gave byte-identical PNGs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "comfyui"))

from server import WORKFLOW, Server, png_size, prepare_base  # noqa: E402

SETTINGS = {  # the first-run dialogs closed before the page opens (user/default/comfy.settings.json)
    "Comfy.TutorialCompleted": True,
    "Comfy.InstalledVersion": "1.47.12",
    "Comfy.Workflow.ShowMissingModelsWarning": False,
    "Comfy.Workflow.ShowMissingNodesWarning": False,
    "Comfy.Graph.CanvasInfo": False,  # the render statistics (FPS...) would differ between shots
    "Comfy.Minimap.Visible": False,
}


def browser(width: int, height: int):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser") or "chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={width},{height}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def shoot(comfy_venv: Path, out: Path, width: int, height: int) -> None:
    base = Path(tempfile.mkdtemp(prefix="crossgate-comfy-shot-"))
    server = driver = None
    try:
        prepare_base(base)
        # the workflow's checkpoint name, as an empty file: the page lists it instead of warning that
        # it is missing (nothing is sampled here)
        (base / "models" / "checkpoints" / "v1-5-pruned-emaonly.safetensors").touch()
        settings = base / "user" / "default" / "comfy.settings.json"
        settings.parent.mkdir(parents=True, exist_ok=True)
        settings.write_text(json.dumps(SETTINGS))
        server = Server(comfy_venv, base)
        driver = browser(width, height)
        driver.set_script_timeout(60)
        driver.get(server.url)
        deadline = time.monotonic() + 120
        while not driver.execute_script("return !!(window.app && window.app.graph && window.app.canvas)"):
            if time.monotonic() > deadline:
                raise TimeoutError("the ComfyUI page did not start")
            time.sleep(0.5)
        workflow = json.loads(WORKFLOW.read_text())
        driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "window.app.loadGraphData(arguments[0]).then(() => done(true), (e) => done(String(e)));",
            workflow,
        )
        time.sleep(3)  # the canvas draws on animation frames
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
        print(f"{out}: the page at {png_size(out.read_bytes())} px")
    finally:
        if driver is not None:
            driver.quit()
        if server is not None:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--comfy-venv", type=Path, default=ROOT / ".venv-comfy")
    parser.add_argument("--out", type=Path, default=ROOT / "comfyui" / "docs" / "workflow.png")
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=900)
    args = parser.parse_args(argv)
    shoot(args.comfy_venv.resolve(), args.out, args.width, args.height)
    return 0


if __name__ == "__main__":
    sys.exit(main())
