"""The shapes world: deterministic by seed, and its ground truth is what the pixels show."""

import json
import random
from pathlib import Path

import numpy as np
import pytest

from engine.structured import parse_and_validate
from training.world import COLOURS, POSITIONS, SHAPES, position_of, render, sample_scene, shapes_schema

REPO = Path(__file__).resolve().parents[2]


def _scenes(seed: int, n: int = 40):
    rng = random.Random(seed)
    return [sample_scene(rng) for _ in range(n)]


def test_same_seed_same_scenes_and_pixels():
    first, second = _scenes(7), _scenes(7)
    assert first == second
    assert all(np.array_equal(np.asarray(render(a)), np.asarray(render(b))) for a, b in zip(first[:10], second[:10]))
    assert _scenes(8) != first


def test_world_covers_every_shape_colour_count_and_position():
    scenes = _scenes(0, 600)
    assert {s.shape for s in scenes} == set(SHAPES) and len(SHAPES) >= 4
    assert {s.colour for s in scenes} == set(COLOURS) and len(COLOURS) >= 6
    assert {s.count for s in scenes} == {1, 2, 3, 4}
    assert {s.position for s in scenes} == set(POSITIONS)
    assert any(s.noise for s in scenes) and any(not s.noise for s in scenes)
    assert any(s.width != s.height for s in scenes)
    radii = [o.radius for s in scenes for o in s.objects]
    assert max(radii) / min(radii) > 1.5  # sizes vary


def _components(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """4-connected components of a boolean mask (a plain flood fill)."""
    seen = np.zeros_like(mask)
    parts = []
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        stack, part = [(y, x)], []
        seen[y, x] = True
        while stack:
            cy, cx = stack.pop()
            part.append((cy, cx))
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        parts.append(part)
    return parts


@pytest.mark.parametrize("seed", range(5))
def test_ground_truth_matches_the_pixels(seed):
    for scene in _scenes(seed, 30):
        pixels = np.asarray(render(scene), dtype=np.int32)
        target = np.array(COLOURS[scene.colour])
        mask = np.abs(pixels - target).max(axis=2) < 60  # the object's colour, whatever the noise and shade
        parts = [p for p in _components(mask) if len(p) >= 6]
        assert len(parts) == scene.count, scene
        others = [c for c in COLOURS if c != scene.colour]
        for other in others:  # no object of another colour is drawn
            assert (np.abs(pixels - np.array(COLOURS[other])).max(axis=2) < 20).sum() < 4
        centres = [(np.mean([x for _, x in p]) / scene.width, np.mean([y for y, _ in p]) / scene.height) for p in parts]
        placed = [(o.x, o.y) for o in scene.objects]
        for placed_centre in placed:  # every object is drawn where the truth says
            assert min(np.hypot(cx - placed_centre[0], cy - placed_centre[1]) for cx, cy in centres) < 0.06
        assert position_of(placed) == scene.position


def test_truth_follows_the_shapes_schema_which_the_repo_copy_equals():
    schema = shapes_schema()
    assert json.loads((REPO / "tests/data/schemas/shapes.json").read_text()) == schema
    assert list(schema["properties"]) == ["shape", "color", "count", "position"]
    for scene in _scenes(1):
        value, error = parse_and_validate(json.dumps(scene.truth()), schema)
        assert error is None and value == scene.truth()


def test_position_rules():
    assert position_of([(0.5, 0.5)]) == "center"
    assert position_of([(0.2, 0.5)]) == "left"
    assert position_of([(0.8, 0.45), (0.7, 0.55)]) == "right"
    assert position_of([(0.5, 0.1)]) == "top"
    assert position_of([(0.45, 0.85)]) == "bottom"
    assert position_of([(0.2, 0.2)]) is None  # a corner is neither left nor top: such scenes are never drawn
