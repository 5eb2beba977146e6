"""How ``--engine ray`` sizes its actor pools (pure arithmetic: runs without Ray)."""

from __future__ import annotations

import pytest

from myriad.engines.ray_engine import plan_actors


def test_without_an_lmm_every_cpu_gets_an_expert_actor_leaving_half_a_cpu_to_read_and_write():
    plan = plan_actors(2, 0, use_gpu=False, has_lmm=False)
    assert (plan.experts, plan.myriad) == (2, 0) and plan.cpus_per_actor == pytest.approx(0.75)
    assert plan_actors(8, 0, use_gpu=False, has_lmm=False).cpus_per_actor == pytest.approx(7.5 / 8)


def test_with_an_lmm_the_cpus_are_split_between_expert_and_myriad_actors():
    plan = plan_actors(2, 0, use_gpu=False, has_lmm=True)
    assert (plan.experts, plan.myriad, plan.myriad_gpus) == (1, 1, 0.0)
    assert plan.cpus_per_actor * (plan.experts + plan.myriad) <= 1.5
    plan = plan_actors(8, 0, use_gpu=False, has_lmm=True, workers=3)
    assert (plan.experts, plan.myriad) == (3, 3) and plan.cpus_per_actor == 1.0  # 6 of 8 CPUs


def test_with_gpus_there_is_one_myriad_actor_per_gpu_and_the_experts_take_the_cpus():
    plan = plan_actors(16, 2, use_gpu=True, has_lmm=True)
    assert (plan.myriad, plan.myriad_gpus, plan.experts) == (2, 1.0, 14)
    assert plan.cpus_per_actor * (plan.experts + plan.myriad) <= 15.5
