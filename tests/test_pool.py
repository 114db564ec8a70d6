"""mdlcap.study.pool: one runner for independent jobs, in this process or in spawn workers, with
jobs that start once another is done, and errors that name the argument."""
from __future__ import annotations

import operator

import pytest

from mdlcap.study import pool


def test_in_process_jobs_run_on_the_given_state_and_then_adds_jobs_after_theirs():
    order = []

    def fn(state, job):
        order.append(job)
        return state["scale"] * job

    out = pool.run_jobs(fn, [1, 2], state={"scale": 10}, then=lambda job, r: [job + 10] if job < 10 else [])
    assert out == {1: 10, 2: 20, 11: 110, 12: 120}
    assert order == [1, 2, 11, 12]                       # an added job runs after the jobs already queued
    assert pool.run_jobs(fn, [], state={}) == {}


def test_worker_processes_start_from_setup_and_give_the_in_process_results():
    """Two spawn workers, each with the state setup(*setup_args) returns (builtins: importable in a
    spawned process); jobs `then` adds run there too."""
    state = {"a": 1, "b": 2, "c": 3}
    then = lambda job, r: ["c"] if job == "a" else []    # noqa: E731  (runs in this process)
    par = pool.run_jobs(operator.getitem, ["a", "b"], workers=2, setup=dict, setup_args=(state,), then=then)
    one = pool.run_jobs(operator.getitem, ["a", "b"], workers=1, state=state, then=then)
    assert par == one == {"a": 1, "b": 2, "c": 3}


@pytest.mark.parametrize("workers", [0, -1, 1.5, True, "2"])
def test_bad_workers_are_refused(workers):
    with pytest.raises(ValueError, match=r"^workers: must be an integer >= 1"):
        pool.run_jobs(operator.getitem, ["a"], workers=workers, state={"a": 1})


def test_each_path_needs_its_state():
    with pytest.raises(ValueError, match="^state: "):
        pool.run_jobs(operator.getitem, ["a"], workers=1)
    with pytest.raises(ValueError, match="^setup: "):
        pool.run_jobs(operator.getitem, ["a", "b"], workers=2)
