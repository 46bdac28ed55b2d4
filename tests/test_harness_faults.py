"""The fault matrix of the multi-rank runtime: every way a rank can fail reaches the test with the
rank's number and its evidence, survivors never stay blocked, and the next run starts clean."""
import signal

import pytest

from ascend_conformance.harness.pool import RankFailure
from tests import rank_functions as fns

pytest_plugins = ["pytester"]


def test_results_come_back_in_rank_order(world):
    assert world(4).run(fns.all_reduce_rank_numbers) == [10, 10, 10, 10]


def test_rank_context_and_seeds(world, request):
    infos = world(4).run(fns.describe_rank)
    assert [i["rank"] for i in infos] == [0, 1, 2, 3]
    assert {i["world_size"] for i in infos} == {4}
    assert {i["device"] for i in infos} == {"cpu"}
    devices = [i["device_index"] for i in infos]
    assert len(set(devices)) == 4 and all(0 <= d < 8 for d in devices)
    assert len({i["seed"] for i in infos}) == 4, "per-rank seeds must differ"
    assert len({i["world_seed"] for i in infos}) == 1, "the world seed must agree across ranks"
    assert {i["test_id"] for i in infos} == {request.node.nodeid}
    again = world(4).run(fns.describe_rank)
    for first, second in zip(infos, again):
        assert first["seed"] == second["seed"] and first["randn"].equal(second["randn"]), \
            "seeds derive from the test id: the same test must draw the same numbers"


def test_warm_pool_is_reused(world, world_runner):
    first = world(2).run(fns.describe_rank)
    second = world(2).run(fns.describe_rank)
    # A pool is bound to its devices. Under xdist another worker may hold them, and the lease then takes
    # free devices (a second pool) rather than wait; on the same devices the same processes must serve.
    if [i["device_index"] for i in first] == [i["device_index"] for i in second]:
        assert [i["pid"] for i in first] == [i["pid"] for i in second]
    assert {i["pid"] for i in first} <= set(world_runner.rank_pids), "the first pool must still be warm"


def test_exception_names_rank_and_remote_traceback_and_aborts_survivors(world):
    with pytest.raises(RankFailure) as failure:
        world(4).run(fns.raise_on, 2)
    text = str(failure.value)
    assert text.startswith("rank 2 of 4 raised builtins.ValueError: deliberate failure on rank 2")
    assert "--- rank 2 traceback ---" in text and "in raise_on" in text
    assert "ranks [0, 1, 3] were still running" in text
    # The survivors were aborted, not waited for: had they been, the run would have ended by its timeout
    # ("world of 4 ranks timed out"), not with rank 2's exception and the survivors' stacks in the barrier.
    assert "--- rank 0 stack ---" in text and "in barrier" in text, "survivors' stacks show where they were blocked"


def test_exit_code_is_reported_and_next_run_is_clean(world, world_runner, tmp_path):
    with pytest.raises(RankFailure, match=r"^rank 1 of 2 exited with code 7"):
        world(2).run(fns.exit_on, 1, 7, str(tmp_path))
    failed_pool = {int(p.read_text()) for p in tmp_path.glob("rank*.pid")}
    assert len(failed_pool) == 2
    assert world(2).run(fns.all_reduce_rank_numbers) == [3, 3]
    assert not failed_pool & set(world_runner.rank_pids), "a failed pool must be replaced, not reused"


@pytest.mark.parametrize("signum", [signal.SIGSEGV, signal.SIGKILL], ids=["SIGSEGV", "SIGKILL"])
def test_fatal_signal_is_reported(world, signum):
    with pytest.raises(RankFailure) as failure:
        world(2).run(fns.signal_on, 0, signum)
    text = str(failure.value)
    assert text.startswith(f"rank 0 of 2 was killed by {signum.name}")
    if signum == signal.SIGSEGV:
        # faulthandler wrote the Python stack of the crash into the rank log, whose tail is attached
        assert "Fatal Python error: Segmentation fault" in text and "in signal_on" in text
    assert world(2).run(fns.all_reduce_rank_numbers) == [3, 3]


def test_hang_fails_with_every_rank_stack_then_recovers(world):
    with pytest.raises(RankFailure) as failure:
        world(2, timeout=3).run(fns.sleep_forever_on, 1)  # a rank that never returns: only the timeout ends it
    text = str(failure.value)
    assert text.startswith("world of 2 ranks timed out after 3s")
    assert "--- rank 0 stack ---" in text and "--- rank 1 stack ---" in text
    assert "in sleep_forever_on" in text and "in barrier" in text
    assert world(2).run(fns.all_reduce_rank_numbers) == [3, 3]


def failing_assert():
    from ascend_conformance.harness import rank_context

    value = rank_context().rank + 2
    assert value == 3


def test_assert_in_rank_is_explained(world):
    with pytest.raises(RankFailure) as failure:
        world(2).run(failing_assert)
    # pytest's assertion rewriting applies to test modules imported inside ranks too
    assert "assert 2 == 3" in str(failure.value)


def test_skip_in_every_rank_skips_the_test(world):
    with pytest.raises(pytest.skip.Exception, match="backend lacks the op under test"):
        world(2).run(fns.skip_everywhere)


def test_skip_in_some_ranks_is_a_failure(world):
    with pytest.raises(RankFailure, match="rank 0 of 2 raised .*Skipped"):
        world(2).run(fns.skip_on_rank0_only)


def test_state_left_by_a_test_is_cleaned(world):
    assert world(2).run(fns.leave_state_behind) == [1, 1]
    assert world(2).run(fns.count_state) == [(0, 0), (0, 0)]


def test_rank_output_goes_to_its_log(world):
    paths = world(2).run(fns.print_marker, "marker-7f3a")
    for path in paths:
        with open(path) as log:
            assert "marker-7f3a" in log.read()


def test_unpicklable_result_is_a_clear_failure(world):
    with pytest.raises(RankFailure, match="the return value could not be sent to the parent"):
        world(2).run(fns.return_unpicklable)


def test_local_function_is_refused_before_spawning(world):
    def local():
        return 1

    with pytest.raises(TypeError, match="module-level function"):
        world(2).run(local)


def test_too_few_devices_skips_before_spawning(pytester):
    pytester.makepyfile(test_big="""
        def noop():
            return None
        def test_big(world):
            world(16).run(noop)
    """)
    result = pytester.runpytest_subprocess("-rs", "--devices", "8")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*needs 16 cpu devices, 8 available*"])


def test_rank_timeout_option_end_to_end(pytester):
    """`--rank-timeout 5`: a hanging rank fails its test with every rank's stack, and the next test passes."""
    pytester.makepyfile(test_hang="""
        import threading
        import torch.distributed as dist
        from ascend_conformance.harness import rank_context
        def hang_on_rank1():
            if rank_context().rank == 1:
                threading.Event().wait()  # never returns: only --rank-timeout ends the run
            dist.barrier()
        def ok():
            dist.barrier()
            return rank_context().rank
        def test_warm(world):
            assert world(2).run(ok) == [0, 1]  # the pool's start is not part of the hang's time
        def test_hangs(world):
            world(2).run(hang_on_rank1)
        def test_next(world):
            assert world(2).run(ok) == [0, 1]
    """)
    result = pytester.runpytest_subprocess("--rank-timeout", "5", "-vv")
    result.assert_outcomes(passed=2, failed=1)
    # The hang never ends by itself, so the session ending at all, with this message, is --rank-timeout's doing.
    result.stdout.fnmatch_lines(["*world of 2 ranks timed out after 5s*", "*--- rank 0 stack ---*",
                                 "*--- rank 1 stack ---*", "*in hang_on_rank1*"])


def test_plugin_loads_by_name_outside_the_checkout(pytester, monkeypatch):
    """`pytest -p ascend_conformance` (the pytest11 entry point) gives the world fixture anywhere."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(test_outside="""
        import torch.distributed as dist
        def size():
            return dist.get_world_size()
        def test_world(world):
            assert world(2).run(size) == [2, 2]
    """)
    result = pytester.runpytest_subprocess("-p", "ascend_conformance")
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize("n", [0, -2, 2.5, True])
def test_a_bad_world_size_is_an_error_not_a_skip(world, n):
    from ascend_conformance.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"world size must be a whole number >= 1, got {n!r}"):
        world(n)


@pytest.mark.parametrize("option, value", [("--devices", "0"), ("--rank-timeout", "-1"), ("--lease-timeout", "0"),
                                           ("--max-warm-ranks", "0"), ("--hccl-port-base", "80")])
def test_bad_options_are_one_line_usage_errors(pytester, option, value):
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    result = pytester.runpytest_subprocess(option, value)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.startswith("ERROR:")]
    assert len(errors) == 1 and option in errors[0] and value in errors[0], result.stderr.lines
