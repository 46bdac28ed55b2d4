"""What `world(n).run` accepts as the function: anything a rank can import by pickle; the rest is refused
in one line that says what to do, before anything is sent (the warm pool stays usable)."""
from __future__ import annotations

import functools
import os

import pytest
import torch

from ascend_conformance.errors import ConfigError
from ascend_conformance.harness import rank_context


def scaled_rank(scale, offset=0.0):
    return scale * rank_context().rank + offset


class Scaler:
    def __init__(self, scale):
        self.scale = scale

    def times_rank(self, offset=0):
        return self.scale * rank_context().rank + offset

    @classmethod
    def name(cls):
        return cls.__name__

    @staticmethod
    def pid():
        return os.getpid()

    def __call__(self):
        return self.scale + rank_context().rank


def test_a_partial_of_a_module_level_function(world):
    assert world(2).run(functools.partial(scaled_rank, 10.0, offset=1.0)) == [1.0, 11.0]
    assert world(2).run(functools.partial(functools.partial(scaled_rank, 3.0), offset=2.0)) == [2.0, 5.0]


def test_bound_class_and_static_methods_and_callable_objects(world):
    assert world(2).run(Scaler(5).times_rank, offset=1) == [1, 6]
    assert world(2).run(Scaler.name) == ["Scaler", "Scaler"]
    assert len(set(world(2).run(Scaler.pid))) == 2
    assert world(2).run(Scaler(7)) == [7, 8]


def test_a_builtin_reachable_by_name(world):
    ones = world(2).run(torch.ones, 3, dtype=torch.float64)
    assert all(torch.equal(t, torch.ones(3, dtype=torch.float64)) for t in ones)


def _one_line_error(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text, f"not one line: {text!r}"
    return text


def test_a_partial_of_a_lambda_is_refused_in_one_line_and_the_pool_stays(world, world_runner):
    pids = world(2).run(Scaler.pid)
    with pytest.raises(ConfigError) as excinfo:
        world(2).run(functools.partial(lambda x: x, 1))
    text = _one_line_error(excinfo)
    assert "cannot ship functools.partial(<function" in text and "define it at module level" in text, text
    assert set(pids) <= set(world_runner.rank_pids), "a refused call must not cost the warm pool"


def test_a_lambda_or_local_function_argument_is_named(world):
    def local_helper():
        return 1

    with pytest.raises(ConfigError) as excinfo:
        world(2).run(scaled_rank, lambda: 2)
    text = _one_line_error(excinfo)
    assert text.startswith("world(n).run cannot ship argument 0 (<function") and "pass picklable values" in text, text
    with pytest.raises(ConfigError) as excinfo:
        world(2).run(scaled_rank, 1.0, offset=local_helper)
    text = _one_line_error(excinfo)
    assert "cannot ship keyword argument offset=<function" in text and "local_helper" in text, text


def test_the_refusal_is_a_type_error_too(world):
    """Code that caught the old TypeError for an unshippable callable keeps working."""
    with pytest.raises(TypeError):
        world(2).run(functools.partial(lambda: 1))
