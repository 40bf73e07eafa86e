"""Draws docs/images/architecture.png: the layers of the code base (left) and the two data paths
(right). Run: python docs/tools/architecture_diagram.py"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

OUT = Path(__file__).resolve().parents[1] / "images" / "architecture.png"
W, H = 1620, 830
BG, INK, GREY = (255, 255, 255), (30, 30, 30), (120, 120, 120)
COLOURS = {
    "entry": (255, 226, 196),
    "eval": (214, 234, 248),
    "augment": (213, 245, 227),
    "mid": (235, 222, 240),
    "core": (244, 244, 244),
    "gl": (253, 237, 236),
    "next": (255, 255, 255),
}


def font(size: int):
    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default()


def box(draw, xy, title, lines, fill, dashed=False, size=17):
    x0, y0, x1, y1 = xy
    draw.rounded_rectangle(xy, radius=8, fill=fill, outline=GREY if dashed else INK, width=2)
    draw.text((x0 + 10, y0 + 6), title, fill=INK, font=font(size))
    for k, line in enumerate(lines):
        draw.text((x0 + 10, y0 + 30 + 18 * k), line, fill=(60, 60, 60), font=font(13))


def arrow(draw, a, b, colour=INK, width=3):
    draw.line([a, b], fill=colour, width=width)
    import math

    ang = math.atan2(b[1] - a[1], b[0] - a[0])
    for s in (-1, 1):
        tip = (b[0] - 12 * math.cos(ang + s * 0.45), b[1] - 12 * math.sin(ang + s * 0.45))
        draw.line([b, tip], fill=colour, width=width)


def pipeline(draw, x0, y0, names, notes, fill, highlighted, width=128, height=56, step=136):
    """One row of the data paths: boxes joined by arrows, a grey note under each box."""
    for k, (name, note) in enumerate(zip(names, notes)):
        bx = x0 + k * step
        box(draw, (bx, y0, bx + width - 14, y0 + height), name, [], fill if k in highlighted else COLOURS["core"], size=15)
        for j, line in enumerate(note.split("\n")):
            draw.text((bx, y0 + height + 6 + 15 * j), line, fill=GREY, font=font(11))
        if k:
            arrow(draw, (bx - 16, y0 + height // 2), (bx - 2, y0 + height // 2))


def main() -> None:
    img = Image.new("RGB", (W, H), BG)
    d = ImageDraw.Draw(img)
    d.text((20, 12), "Layers: each imports only from the rows below it (tests/test_layering.py checks it)", fill=INK, font=font(18))
    x0, x1 = 20, 720
    rows = [
        ("entry", "commands", ["cli.py  generate.py  demo.py  perf.py"], None),
        ("eval", "rap/eval", ["agent protocol, observe (Observation), config (EvalConfig),", "navsim + navsim_scene, wod_e2e"], None),
        ("augment", "rap/augment", ["targets (sample plans), recovery, cross_agent"], None),
        ("mid", "rap/render · rap/dataset", ["render: scene_raster (per-map mesh, per-tick render_state), style, rigs,", "session.open_renderer, job, projection_check  ·  dataset: sample, writer, reader, manifest"], None),
        ("mid", "rap/metrics · rap/sources", ["metrics: pdms (+ areas, collisions), comfort, rfs  ·  sources: registry (the only", "place that knows source kinds), womd, waymo_frame, wod_e2e, scenarionet, synthetic/"], None),
        ("mid", "rap/sim", ["bicycle (vehicle parameters, rollouts), tracker (LQR), idm (one IDM on Scene lanes),", "reference planner"], None),
        ("core", "rap core", ["scene.py  trajectory.py  geometry.py  kinematics.py  config.py  fileio.py  images.py"], None),
        ("gl", "rasterizer/", ["context (the one place GL contexts are made), camera, primitives, renderer", "— numpy primitives and cameras in, images out; no driving semantics"], None),
    ]
    y, hgt, gap = 48, 74, 10
    for kind, title, lines, _ in rows:
        box(d, (x0, y, x1, y + hgt), title, lines, COLOURS[kind])
        y += hgt + gap
    box(d, (x0, y + 4, x1, y + 4 + 58), "planners/  (next: the planners issue)", ["torch models, training, alignment; reads rap.dataset + rap.eval.observe; only rap/cli.py imports it"], COLOURS["next"], dashed=True)

    px = 780
    d.text((px, 12), "Data paths", fill=INK, font=font(18))
    d.text((px, 44), "training data", fill=GREY, font=font(15))
    pipeline(d, px, 70, ["source", "Scene", "augment", "Sample", "shard", "training"],
             ["sources/registry", "rap/scene.py", "targets · recovery ·\ncross_agent", "dataset/sample", "dataset/writer,\nreader", "planners/ (next) via\nobservation_from_sample"],
             COLOURS["augment"], (2, 3))  # fmt: skip
    d.text((px, 250), "evaluation", fill=GREY, font=font(15))
    pipeline(d, px, 276, ["Scene", "Observation", "agent", "simulation", "metrics", "report"],
             ["sources/registry", "eval/observe\n(+ render)", "eval/agent\n(protocol)", "sim: tracker,\nbicycle, idm", "metrics/pdms, rfs", "eval/navsim\n(json, md, html)"],
             COLOURS["eval"], (1, 2))  # fmt: skip
    note = [
        "One input type for planners: an Observation (views, camera records, ego status,",
        "history, requested sampling). Evaluators build it from a Scene with eval/observe.Observer;",
        "training builds it from a dataset Sample with observation_from_sample. Both read the",
        "same kinematics (rap/kinematics.py) under the same defaults (rap/config.py sections,",
        "configs/generate/default.yaml = configs/eval/default.yaml), and a test proves that the",
        "observation of a step equals the stored sample of that step.",
        "",
        "Rendering: render/session.open_renderer() opens the one context + renderer; a",
        "SceneRasterizer tessellates a map once; with_scene() and render_state() render new",
        "agent and light states (a simulation tick) without rebuilding the map.",
    ]
    for k, line in enumerate(note):
        d.text((px, 450 + 20 * k), line, fill=INK, font=font(14))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    img.save(OUT, optimize=True)
    print(OUT)


if __name__ == "__main__":
    main()
