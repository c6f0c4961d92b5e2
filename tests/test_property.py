"""Property: every call equals the same call on a freshly built pipeline in the same crossgate state.

Hypothesis draws sequences of apply / remove / enabled / calls (random prompts, batch sizes, step
counts, guidance, schedulers) and calls that raise midway, over two pipelines that share every model
(`Pipeline(**pipe.components)`); each call is compared `torch.equal` against a deep copy of the
untouched template with the same scheduler and the same crossgate config applied.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import crossgate
import crossgate.pipeline
from conftest import run

SCHEDULERS = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler, "dpm": DPMSolverMultistepScheduler}
PROMPTS = ["a red circle", "a blue square", "two green triangles", ""]

gate = st.sampled_from([1, 2, 3, 0.5, "auto"])
call_args = st.fixed_dictionaries(
    {
        "prompt": st.sampled_from(PROMPTS),
        "steps": st.integers(2, 5),
        "batch": st.integers(1, 2),
        "guidance": st.sampled_from([1.0, 5.0]),
        "seed": st.integers(0, 3),
    }
)
operation = st.one_of(
    st.tuples(st.just("apply"), st.integers(0, 1), gate),
    st.tuples(st.just("remove"), st.integers(0, 1)),
    st.tuples(st.just("call"), st.integers(0, 1), call_args),
    st.tuples(st.just("enabled_call"), st.integers(0, 1), gate, call_args),
    st.tuples(st.just("raise_at"), st.integers(0, 1), st.integers(0, 2), call_args),
    st.tuples(st.just("scheduler"), st.integers(0, 1), st.sampled_from(sorted(SCHEDULERS))),
)


class Interrupt(Exception):
    pass


def _call(pipe, args, **extra):
    return run(
        pipe,
        args["prompt"],
        steps=args["steps"],
        seed=args["seed"],
        guidance_scale=args["guidance"],
        num_images_per_prompt=args["batch"],
        **extra,
    )


def _fresh(template, scheduler_name, config):
    fresh = copy.deepcopy(template)
    fresh.scheduler = SCHEDULERS[scheduler_name].from_config(fresh.scheduler.config)
    if config is not None:
        crossgate.apply(fresh, config)
    return fresh


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(operation, min_size=2, max_size=6))
def test_every_call_equals_a_fresh_pipeline_in_the_same_state(_sd_template, operations):
    first = copy.deepcopy(_sd_template)
    second = StableDiffusionPipeline(**{**first.components, "scheduler": copy.deepcopy(first.scheduler)})
    pipes = [first, second]
    schedulers = ["ddim", "ddim"]

    def check(index, args, config):
        got = _call(pipes[index], args)
        expected = _call(_fresh(_sd_template, schedulers[index], config), args)
        assert torch.equal(got, expected), (index, args, config)

    for op in operations:
        kind, index = op[0], op[1]
        pipe = pipes[index]
        if kind == "apply":
            crossgate.apply(pipe, gate_step=op[2])
        elif kind == "remove":
            crossgate.remove(pipe)
        elif kind == "call":
            check(index, op[2], crossgate.pipeline.configuration(pipe))
        elif kind == "enabled_call":
            before = crossgate.pipeline.configuration(pipe)
            with crossgate.enabled(pipe, gate_step=op[2]):
                check(index, op[3], crossgate.pipeline.configuration(pipe))
            assert crossgate.pipeline.configuration(pipe) == before
        elif kind == "raise_at":
            args = op[3]
            stop_at = min(op[2], args["steps"] - 1)

            def explode(p, step, timestep, kwargs, last=stop_at):
                if step == last:
                    raise Interrupt
                return kwargs

            with contextlib.suppress(Interrupt):
                _call(pipe, args, callback_on_step_end=explode)
        elif kind == "scheduler":
            pipe.scheduler = SCHEDULERS[op[2]].from_config(pipe.scheduler.config)
            schedulers[index] = op[2]
