"""ComfyUI's real server running the pack's example workflow: facts for tests/test_comfyui.py.

Runs in any Python (standard library only); the server itself runs in the ComfyUI venv:

    python tests/comfyui/server.py [--comfy-venv .venv-comfy] [--json facts.json]

What it does: a temporary base directory (``--base-directory``: models, custom_nodes, input, output,
user) with the tiny UNet as ``models/checkpoints/crossgate-tiny-sd15.safetensors``, the pack
(``comfyui/``) and the test-only loader (``tests/comfyui/server_nodes``) in its ``custom_nodes``;
``main.py --cpu --listen 127.0.0.1 --port <free>``; the example workflow
(``comfyui/example_workflows/tgate_sd15.json``, UI format) converted to the API format with the
server's own ``/object_info``; the checkpoint loader swapped for the test-only one and the latent set
to the tiny model's 64x64; ``POST /prompt``; ``/history`` polled until done; the saved PNG read from
the output folder and through ``/view``. ``start_server`` is shared with scripts/comfy_screenshot.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PACK = ROOT / "comfyui"
WORKFLOW = PACK / "example_workflows" / "tgate_sd15.json"
TINY_UNET = (
    ROOT
    / "src"
    / "crossgate"
    / "embedded"
    / "crossgate-shapes-32"
    / "unet"
    / "diffusion_pytorch_model.safetensors"
)
TINY_CKPT = "crossgate-tiny-sd15.safetensors"
LOADER = "CrossgateTinyCheckpointLoader"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_base(base: Path) -> None:
    """The server's base directory: the tiny checkpoint, the pack and the test-only loader."""
    (base / "models" / "checkpoints").mkdir(parents=True)
    shutil.copyfile(TINY_UNET, base / "models" / "checkpoints" / TINY_CKPT)
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(PACK, base / "custom_nodes" / "crossgate-tgate", ignore=ignore)
    shutil.copytree(HERE / "server_nodes", base / "custom_nodes" / "crossgate_test_nodes", ignore=ignore)
    for name in ("input", "output", "user", "temp"):
        (base / name).mkdir(exist_ok=True)


class Server:
    """``main.py`` of the venv's ComfyUI on a free port, its log in ``base/server.log``."""

    def __init__(self, comfy_venv: Path, base: Path, timeout: float = 180.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "server.log"
        env = dict(os.environ, CROSSGATE_HARNESS=str(HERE), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        command = [
            str(comfy_venv / "bin" / "python"),
            str(comfy_venv / "ComfyUI" / "main.py"),
            "--cpu",
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--base-directory",
            str(base),
            "--database-url",
            "sqlite:///:memory:",
            "--disable-auto-launch",
            "--disable-api-nodes",
        ]
        self.log = self.log_path.open("wb")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.started = time.perf_counter()
        self._wait_ready(timeout)
        self.startup_s = time.perf_counter() - self.started

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited ({self.process.returncode}):\n{self.tail()}")
            try:
                self.get("/object_info/TGATE")
                return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"ComfyUI did not answer within {timeout} s:\n{self.tail()}")

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return response.read()

    def get_json(self, path: str):
        return json.loads(self.get(path))

    def post_json(self, path: str, payload: dict):
        request = urllib.request.Request(
            self.url + path, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"POST {path}: {e.code} {e.read().decode(errors='replace')}") from e

    def tail(self, lines: int = 40) -> str:
        self.log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def _widget_spec(spec: list) -> tuple[bool, dict]:
    kind = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return isinstance(kind, list) or kind in WIDGET_TYPES, options


def to_api(workflow: dict, object_info: dict) -> dict:
    """A UI-format workflow as the API format ``POST /prompt`` takes: links become ``[node, slot]``,
    ``widgets_values`` are matched to the node's widget inputs in the server's ``input_order`` (the
    frontend's extra "control after generate" value follows each input that declares it)."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) != 0:
            continue  # muted or bypassed
        info = object_info[node["type"]]
        inputs = {}
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                link = links[slot["link"]]
                inputs[slot["name"]] = [str(link[1]), link[2]]
        values = list(node.get("widgets_values", []))
        specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        order = info["input_order"].get("required", []) + info["input_order"].get("optional", [])
        for name in order:
            is_widget, options = _widget_spec(specs[name])
            if name in inputs or not is_widget or not values:
                continue
            inputs[name] = values.pop(0)
            if options.get("control_after_generate"):
                values.pop(0)
        if values:
            raise ValueError(f"node {node['id']} ({node['type']}): widget values left over: {values}")
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG from its IHDR chunk, or None if ``data`` is not a PNG."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def run_example(comfy_venv: Path, timeout: float = 300.0) -> dict:
    base = Path(tempfile.mkdtemp(prefix="crossgate-comfy-server-"))
    facts: dict = {}
    server = None
    try:
        prepare_base(base)
        server = Server(comfy_venv, base)
        facts["startup_s"] = round(server.startup_s, 1)
        object_info = server.get_json("/object_info")
        facts["nodes_registered"] = {n: n in object_info for n in ("TGATE", LOADER)}
        workflow = json.loads(WORKFLOW.read_text())
        prompt = to_api(workflow, object_info)
        facts["api_prompt"] = json.loads(json.dumps(prompt))
        loaders = [k for k, v in prompt.items() if v["class_type"] == "CheckpointLoaderSimple"]
        for key in loaders:
            prompt[key] = {"class_type": LOADER, "inputs": {"ckpt_name": TINY_CKPT}}
        for node in prompt.values():
            if node["class_type"] == "EmptyLatentImage":
                node["inputs"].update(width=64, height=64)
        t0 = time.perf_counter()
        queued = server.post_json("/prompt", {"prompt": prompt, "client_id": "crossgate-test"})
        prompt_id = queued["prompt_id"]
        entry = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = server.get_json(f"/history/{prompt_id}")
            entry = history.get(prompt_id)
            if entry:  # the server writes the history entry when the prompt ends (success or error)
                break
            if server.process.poll() is not None:
                break
            time.sleep(0.5)
        facts["run_s"] = round(time.perf_counter() - t0, 1)
        facts["status"] = (entry or {}).get("status")
        images = [img for out in (entry or {}).get("outputs", {}).values() for img in out.get("images", [])]
        facts["images"] = images
        files = []
        for image in images:
            path = base / image["type"] / image.get("subfolder", "") / image["filename"]
            data = path.read_bytes() if path.is_file() else b""
            query = urllib.parse.urlencode({k: image.get(k, "") for k in ("filename", "subfolder", "type")})
            served = server.get(f"/view?{query}")
            files.append(
                {"exists": path.is_file(), "png_size": png_size(data), "served_equal": served == data}
            )
        facts["files"] = files
        log = server.tail(400)
        facts["tgate_log"] = [line for line in log.splitlines() if "TGATE: gate" in line]
        facts["log_tail"] = server.tail(30)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)
    return facts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--comfy-venv", type=Path, default=ROOT / ".venv-comfy")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    facts = run_example(args.comfy_venv.resolve())
    text = json.dumps(facts, indent=1)
    if args.json:
        args.json.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
