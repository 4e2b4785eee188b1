"""Growing or shrinking ``generations`` on an existing run (bug: the linear_decay schedule and the
fresh pool's offsets depend on the total, which the fingerprint leaves out)."""

import pytest

from chain_of_diffusion.chain import _check_generations
from chain_of_diffusion.config import load_config, to_yaml
from chain_of_diffusion.errors import RunDirError
from chain_of_diffusion.mix import real_fraction_at
from chain_of_diffusion.runs import RunDir


def _run_with(tmp_path, generations: int, mixed: list[int], *overrides: str) -> RunDir:
    run = RunDir(tmp_path / "run")
    run.root.mkdir(parents=True)
    run.config_path.write_text(to_yaml(load_config([], [f"generations={generations}", *overrides])))
    for g in mixed:
        run.stage_path(g, "train_set").mkdir(parents=True)
    return run


DECAY = ("mix.real_fraction=1.0", "mix.real_fraction_schedule=linear_decay")


def test_the_linear_schedule_depends_on_the_total():
    three, six = load_config([], ["generations=3", *DECAY]), load_config([], ["generations=6", *DECAY])
    assert [real_fraction_at(three, g) for g in range(3)] == [1.0, 1.0, 0.5]
    assert real_fraction_at(six, 2) != real_fraction_at(three, 2)  # why growing such a run is refused


def test_growing_a_linear_decay_run_after_generation_1_is_refused(tmp_path):
    run = _run_with(tmp_path, 3, [0, 1, 2], *DECAY)
    grown = load_config([], ["generations=6", *DECAY])
    with pytest.raises(RunDirError, match=r"linear_decay.*generations=3.*generations 1-2 were mixed.*generations=6"):
        _check_generations(run, grown)
    with pytest.raises(RunDirError, match="generations=2"):  # shrinking changes the schedule too
        _check_generations(run, load_config([], ["generations=2", *DECAY]))


def test_growing_is_allowed_where_nothing_depends_on_the_total(tmp_path):
    same = load_config([], ["generations=3", *DECAY])
    _check_generations(_run_with(tmp_path / "a", 3, [0, 1, 2], *DECAY), same)  # unchanged total
    # only generation 0 was mixed (all real): the schedule has not been used yet
    _check_generations(_run_with(tmp_path / "b", 3, [0], *DECAY), load_config([], ["generations=6", *DECAY]))
    for schedule in ("constant", "exponential_decay"):
        keys = ("mix.real_fraction=0.5", f"mix.real_fraction_schedule={schedule}")
        run = _run_with(tmp_path / schedule, 3, [0, 1, 2], *keys)
        _check_generations(run, load_config([], ["generations=6", *keys]))
