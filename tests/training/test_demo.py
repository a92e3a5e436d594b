"""The demo build's plumbing: the tower's pretraining runs in its own process, and its failure stops the build."""

import pytest

from training.demo import Recipe, _finish_tower, _start_tower


def test_a_failed_tower_pretraining_stops_the_build_with_its_exit_code(tmp_path, capfd):
    job = _start_tower(tmp_path / "no-model", tmp_path, tmp_path / "vision", Recipe())
    with pytest.raises(RuntimeError, match=r"vision tower pretraining failed \(exit code 1\)"):
        _finish_tower(job, tmp_path / "vision")
    assert "no-model" in capfd.readouterr().err  # the child's own traceback names what it could not load
    assert not (tmp_path / "vision").exists()


def test_the_tower_process_reports_its_own_time(tiny_model_dir, shapes_dir, tmp_path, capfd):
    recipe = Recipe(vision_steps=2, vision_batch_size=8, vision_pooled=())
    seconds = _finish_tower(_start_tower(tiny_model_dir, shapes_dir, tmp_path / "vision", recipe), tmp_path / "vision")
    assert seconds > 0
    assert (tmp_path / "vision" / "config.json").exists()
    assert "[vision] vision pretraining: 2 steps, batch 8, 48 images" in capfd.readouterr().out
