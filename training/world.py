"""The shapes world: procedural images whose ground truth is known exactly.

Each scene holds 1–4 copies of one kind of object (a shape in a colour), in one
region of the image. One kind per scene is what makes the fixed JSON schema
(shape, colour, count, position) an exact description, so JSON answers can be
scored field by field. Sizes, exact positions, colour shades and background
noise vary; the ground truth does not depend on them.

Positions are defined on the group's centroid with a margin (scenes that would be
ambiguous between, say, left and top are never drawn), so a label is always a
function of the picture.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Any

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (40, 180, 60),
    "blue": (30, 60, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 50, 180),
    "orange": (245, 130, 20),
}
POSITIONS = ("left", "right", "top", "bottom", "center")
MAX_COUNT = 4
NUMBER_WORDS = ("zero", "one", "two", "three", "four")

# Geometry in units of the image's shorter side.
_RADIUS = (0.12, 0.17)
_GAP = 0.03  # minimum free space between two objects
_CENTER_BOX = 0.1  # centroid within this of the middle -> "center"
_MARGIN = 0.1  # |dx| must beat |dy| by this for left/right (and vice versa)
_SUPERSAMPLE = 4


def shapes_schema() -> dict[str, Any]:
    """The fixed JSON schema of the shapes world: the one definition (tests/data/schemas/shapes.json is a copy)."""
    return {
        "type": "object",
        "properties": {
            "shape": {"type": "string", "enum": list(SHAPES)},
            "color": {"type": "string", "enum": list(COLOURS)},
            "count": {"type": "integer", "minimum": 1, "maximum": MAX_COUNT},
            "position": {"type": "string", "enum": list(POSITIONS)},
        },
        "required": ["shape", "color", "count", "position"],
    }


@dataclass(frozen=True)
class Placed:
    """One drawn object: centre and radius in units of the shorter image side."""

    x: float
    y: float
    radius: float


@dataclass(frozen=True)
class Scene:
    """The ground truth of one image, and everything needed to redraw it."""

    shape: str
    colour: str
    count: int
    position: str
    objects: tuple[Placed, ...]
    width: int
    height: int
    noise: float
    seed: int

    def truth(self) -> dict[str, Any]:
        """The scene as the shapes schema describes it (key order = schema order)."""
        return {"shape": self.shape, "color": self.colour, "count": self.count, "position": self.position}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def position_of(points: list[tuple[float, float]]) -> str | None:
    """The region named by the points' centroid, or None when it is too close to call."""
    dx = sum(x for x, _ in points) / len(points) - 0.5
    dy = sum(y for _, y in points) / len(points) - 0.5
    if max(abs(dx), abs(dy)) <= _CENTER_BOX:
        return "center"
    if abs(dx) >= abs(dy) + _MARGIN:
        return "left" if dx < 0 else "right"
    if abs(dy) >= abs(dx) + _MARGIN:
        return "top" if dy < 0 else "bottom"
    return None


def _in_region(position: str, x: float, y: float) -> bool:
    """Every object of a left/right/top/bottom group lies in that half of the image."""
    return {"left": x < 0.5, "right": x > 0.5, "top": y < 0.5, "bottom": y > 0.5}.get(position, True)


def _place(rng: random.Random, count: int, position: str, width: int, height: int) -> tuple[Placed, ...]:
    """Rejection-sample non-overlapping objects whose group reads as `position`."""
    side = min(width, height)
    scale = 1.0
    for attempt in range(4000):
        if attempt and attempt % 200 == 0:
            scale *= 0.9  # crowded: shrink the objects a little and try again
        placed: list[Placed] = []
        for _ in range(count):
            radius = rng.uniform(*_RADIUS) * scale
            rx, ry = radius * side / width, radius * side / height
            x, y = rng.uniform(rx, 1 - rx), rng.uniform(ry, 1 - ry)
            if not _in_region(position, x, y):
                break
            pixel = (x * width / side, y * height / side)
            if any(math.dist(pixel, (p.x * width / side, p.y * height / side)) < radius + p.radius + _GAP for p in placed):
                break
            placed.append(Placed(round(x, 4), round(y, 4), round(radius, 4)))
        if len(placed) == count and position_of([(p.x, p.y) for p in placed]) == position:
            return tuple(placed)
    raise RuntimeError(f"could not place {count} objects at {position}")  # not reached for the ranges above


def sample_scene(rng: random.Random, *, noise_fraction: float = 0.3, non_square_fraction: float = 0.25) -> Scene:
    """Draw one scene's ground truth from `rng` (deterministic for a seeded generator)."""
    shape = rng.choice(SHAPES)
    colour = rng.choice(list(COLOURS))
    count = rng.randint(1, MAX_COUNT)
    position = rng.choice(POSITIONS)
    width = height = 64
    if rng.random() < non_square_fraction:
        if rng.random() < 0.5:
            width = 80
        else:
            height = 80
    objects = _place(rng, count, position, width, height)
    noise = round(rng.uniform(4, 14), 2) if rng.random() < noise_fraction else 0.0
    return Scene(shape, colour, count, position, objects, width, height, noise, rng.getrandbits(31))


def _outline(shape: str, cx: float, cy: float, r: float, rotation: float) -> list[tuple[float, float]]:
    # Every outline stays within radius r of the centre, so objects placed apart never touch.
    if shape == "square":
        half = r * 0.7  # corners at 0.99 r
        corners = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        return [(cx + half * a, cy + half * b) for a, b in corners]
    if shape == "triangle":
        angles = [rotation - math.pi / 2 + k * 2 * math.pi / 3 for k in range(3)]
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in angles]
    if shape == "star":
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.45
            angle = rotation - math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        return points
    raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene) -> Image.Image:
    """Draw the scene (anti-aliased by supersampling); the same scene always gives the same pixels."""
    rng = random.Random(scene.seed)
    side = min(scene.width, scene.height) * _SUPERSAMPLE
    canvas = Image.new("RGB", (scene.width * _SUPERSAMPLE, scene.height * _SUPERSAMPLE), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    base = COLOURS[scene.colour]
    for obj in scene.objects:
        shade = tuple(max(0, min(255, c + rng.randint(-15, 15))) for c in base)
        cx, cy, r = obj.x * scene.width * _SUPERSAMPLE, obj.y * scene.height * _SUPERSAMPLE, obj.radius * side
        rotation = rng.uniform(-0.25, 0.25)
        if scene.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=shade)
        else:
            draw.polygon(_outline(scene.shape, cx, cy, r, rotation), fill=shade)
    image = canvas.resize((scene.width, scene.height), Image.Resampling.BOX)
    if scene.noise:
        image = _add_noise(image, scene.noise, rng)
    return image


def _add_noise(image: Image.Image, sigma: float, rng: random.Random) -> Image.Image:
    import numpy as np

    pixels = np.asarray(image, dtype=np.float32)
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0.0, sigma, pixels.shape)
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))
