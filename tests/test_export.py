"""``convlens export``: one self-contained HTML file, opened from ``file://`` in headless
Chromium with every non-file request aborted (and counted), checked against the model's own
numbers; and the command's bad inputs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from torch import nn

pytest.importorskip("fastapi", reason="the web extra is not installed")

from convlens.cli import main
from convlens.errors import ConvlensError
from convlens.model import load_model
from convlens.offline.page import read_front_end
from convlens.probe import record_all

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "cnn-explainer"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "export"
IMAGES = ["panda_1.jpeg", "bus_1.jpeg"]
METHODS = "grad-cam,saliency"


def _fixture() -> Path:
    if not (FIXTURE / "model.json").is_file():
        pytest.skip(f"CNN Explainer fixture not found at {FIXTURE}")
    return FIXTURE


def _number(text: str) -> float:
    """The last number of an arithmetic line, as the page prints it (with a real minus sign)."""
    found = re.findall(r"[−-]?\d+(?:\.\d+)?(?:e[−+-]?\d+)?", text.split("=")[-1])
    return float(found[-1].replace("−", "-"))


# --------------------------------------------------------------------------- the page itself


def test_the_page_loads_every_module_of_the_front_end() -> None:
    parts = read_front_end()
    js = Path(__file__).resolve().parents[1] / "src" / "convlens" / "web" / "static" / "js"
    reachable = {f"js/{p.name}" for p in js.glob("*.js")}
    assert set(parts.modules) == reachable  # every module main.js reaches, and only those
    assert parts.classic == []  # no third-party script (the overview draws its own edges)
    for name, source in parts.modules.items():  # every relative import was rewritten
        assert not re.search(r"""from\s*['"]\.""", source), name
    assert "/static/" not in parts.html and "/api/" not in parts.html


def _static(tmp: Path, modules: dict[str, str], head: str = "") -> Path:
    (tmp / "js").mkdir(parents=True)
    for name, source in modules.items():
        (tmp / "js" / name).write_text(source)
    (tmp / "index.html").write_text(
        f'<html><head>{head}<script type="module" src="/static/js/main.js"></script></head></html>'
    )
    return tmp


def test_the_page_builder_refuses_what_a_file_page_cannot_load(tmp_path: Path) -> None:
    cyclic = {"main.js": "import { b } from './b.js';", "b.js": "import './main.js';"}
    with pytest.raises(ConvlensError, match=r"cycle: js/main.js → js/b.js → js/main.js"):
        read_front_end(_static(tmp_path / "a", cyclic))
    missing = {"main.js": "import { x } from './gone.js';"}
    with pytest.raises(ConvlensError, match=r"js/main.js imports './gone.js'"):
        read_front_end(_static(tmp_path / "b", missing))
    remote = '<link rel="stylesheet" href="https://cdn.example/x.css">'
    with pytest.raises(ConvlensError, match=r"names 'https://cdn.example/x.css'"):
        read_front_end(_static(tmp_path / "c", {"main.js": ""}, remote))
    ok = read_front_end(_static(tmp_path / "d", {"main.js": "import * as u from './u.js';",
                                                  "u.js": "export const u = 1;"}))  # fmt: skip
    assert ok.modules["js/main.js"] == "import * as u from 'convlens-module:js/u.js';"


# --------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = _fixture()
    out = tmp_path_factory.mktemp("export") / "explainer.html"
    images = [str(root / "images" / n) for n in IMAGES]
    # the spelling: --images A B (the second one is the command's trailing argument)
    argv = ["export", "--model", str(root), "--images", *images, "--out", str(out)]
    assert main([*argv, "--methods", METHODS, "--quiet"]) == 0
    return out


def test_export_reports_its_size_and_keeps_it_small(
    exported: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = exported
    size = out.stat().st_size
    assert size < 4 * 2**20  # two 64×64 traces of Tiny VGG, uncapped, + 4 explanations
    root = _fixture()
    # the same command on a capped trace is smaller, and says how big it is
    small = out.with_name("small.html")
    argv = ["export", "-m", str(root), "-i", str(root / "images" / IMAGES[0]), "-o", str(small)]
    assert main([*argv, "--methods", "saliency", "--max-size", "16", "-q"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    shown = re.search(r"\(([\d.]+) (KiB|MiB):", line)
    assert shown, line
    kib = float(shown[1]) * (1024 if shown[2] == "MiB" else 1)
    assert kib == pytest.approx(small.stat().st_size / 1024, rel=0.01, abs=1)
    assert small.stat().st_size < size / 2


def test_an_unreadable_image_is_named_and_nothing_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "holiday.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # a PNG signature, then nothing real
    out = tmp_path / "explainer.html"
    out.write_text("earlier export")
    good = str(_fixture() / "images" / IMAGES[0])
    assert main(["export", "-m", "tiny-vgg", "--images", good, str(bad), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holiday.png" in err and err.startswith("error:")
    assert out.read_text() == "earlier export"
    # an unknown method: one line naming the methods, and the earlier file still whole
    assert main(["export", "-m", "tiny-vgg", "-i", good, "-o", str(out), "--methods", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown method 'x'" in err and "grad-cam" in err
    assert out.read_text() == "earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["explainer.html", "holiday.png"]


# --------------------------------------------------------------------------- in a browser


@pytest.mark.browser
@pytest.mark.slow
def test_the_export_opens_offline_and_computes_what_the_network_does(
    exported: Path, browser: Any
) -> None:
    out = exported
    model = load_model(str(_fixture())).eval()
    images = [_fixture() / "images" / n for n in IMAGES]
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    attempted: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)

    def refuse(route: Any) -> None:
        attempted.append(route.request.url)
        route.abort()

    page.route(lambda url: not url.startswith(("file:", "data:", "blob:")), refuse)
    try:
        page.goto(out.as_uri())
        page.wait_for_selector("body[data-ready=true]", timeout=20_000)
        assert page.locator("#samples button").count() == len(IMAGES)
        for k, image in enumerate(images):
            page.click(f"#samples button[data-id='sample-{k}']")
            probs = model.probabilities(model.load_image(image))[0]
            page.wait_for_function(
                "name => document.getElementById('predicted-class')?.textContent === name",
                arg=model.classes[int(probs.argmax())],
            )
        # the conv view of the second image: the window stepped along, the number = the net's
        page.click("canvas.neuron[data-layer='conv_1_2'][data-channel='4']")
        page.wait_for_selector("#detail[data-view=conv] #conv-result")
        for _ in range(40):
            page.click("#detail button.step")
        result = page.locator("#conv-result")
        i, j = int(result.get_attribute("data-row")), int(result.get_attribute("data-col"))
        assert (i, j) == (0, 40)
        acts, _ = record_all(model, model.load_image(images[1]))
        expected = float(acts["conv_1_2"][0, 4, i, j])
        assert float(result.get_attribute("data-value")) == pytest.approx(expected, abs=1e-4)
        assert _number(result.inner_text()) == pytest.approx(expected, abs=1.5e-3)
        # channel 0's line: the window of relu_1_1 times the layer's own kernel, term by term
        line = page.locator("#conv-arith").inner_text().splitlines()[0]
        conv = model.layer("conv_1_2")
        assert isinstance(conv, nn.Conv2d)
        weight = conv.weight.detach()[4, 0]  # (3, 3)
        window = acts["relu_1_1"][0, 0, i : i + 3, j : j + 3]
        terms = re.findall(r"(−?\d+\.\d+)×(−?\d+\.\d+)", line)
        assert len(terms) == 9
        for (x, w), want_x, want_w in zip(terms, window.flatten(), weight.flatten(), strict=True):
            assert float(x.replace("−", "-")) == pytest.approx(float(want_x), abs=6e-3)
            assert float(w.replace("−", "-")) == pytest.approx(float(want_w), abs=6e-3)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "export-conv.png"))
        page.keyboard.press("Escape")

        # every other detail view opens with its numbers
        for selector, view in [
            ("canvas.neuron[data-layer='relu_1_1'][data-channel='2']", "activation"),
            ("canvas.neuron[data-layer='max_pool_1'][data-channel='3']", "pool"),
            ("canvas.strip[data-layer='flatten']", "flatten"),
            (".outrow[data-channel='1']", "softmax"),
        ]:
            page.click(selector)
            page.wait_for_selector(f"#detail[data-view={view}] .result")
            page.keyboard.press("Escape")
        page.click(".outrow[data-channel='1']")
        page.wait_for_selector("#softmax-result")
        bus = model.probabilities(model.load_image(images[1]))[0]
        shown = float(page.locator("#softmax-result").get_attribute("data-value") or "nan")
        assert shown == pytest.approx(float(bus[1]), rel=1e-4, abs=1e-6)
        page.keyboard.press("Escape")

        # a precomputed explanation, and a plain line for one that was not precomputed
        page.select_option("#explain-method", "grad-cam")
        page.click("#explain-run")
        page.wait_for_selector("#explain-cards .explain-card[data-method=grad-cam]")
        offered = page.locator("#explain-method option").evaluate_all("os => os.map(o => o.value)")
        assert offered == METHODS.split(",")  # only what the file holds
        page.select_option("#explain-method", "saliency")
        other = page.locator("[data-param=reduce] option").nth(1).get_attribute("value")
        page.select_option("[data-param=reduce]", other)  # not the default: not precomputed
        page.click("#explain-run")
        page.wait_for_function(
            "() => document.getElementById('explain-status').textContent.includes('not in this')"
        )
        # the playground works as on the server
        page.fill("#pg-s", "3")
        page.dispatch_event("#pg-s", "change")
        page.locator("#playground").scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "export.png"), full_page=True)
        assert "does not tile" in page.locator("#pg-error").inner_text()
        assert not attempted, f"the exported page tried the network: {attempted}"
        assert not errors, errors
    finally:
        page.close()


@pytest.mark.browser
def test_names_from_the_model_stay_text_in_the_file(tmp_path: Path, browser: Any) -> None:
    """Class names (and anything else a model file says) are data: a name that closes the
    script tag it is embedded in neither breaks the page nor runs."""
    import torch
    import torch.nn as nn
    from PIL import Image

    from convlens.io.spec import InputSpec
    from convlens.offline.export import export_explainer

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 2))
    hostile = "</script><script>window.pwned = 1</script><!--"
    model = load_model(net, input_spec=InputSpec(3, 8, 8), classes=[hostile, "b</style>"])
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8), (200, 30, 90)).save(image)
    report = export_explainer(model, [image], tmp_path / "e.html", methods=["saliency"])
    assert report.bytes == (tmp_path / "e.html").stat().st_size
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.route(lambda url: not url.startswith(("file:", "data:", "blob:")), lambda r: r.abort())
        page.goto((tmp_path / "e.html").as_uri())
        page.wait_for_selector("body[data-ready=true]", timeout=20_000)
        probs = model.probabilities(model.load_image(image))[0]
        assert page.locator("#predicted-class").inner_text() == model.classes[int(probs.argmax())]
        assert page.evaluate("window.pwned") is None
        assert not errors, errors
    finally:
        page.close()
