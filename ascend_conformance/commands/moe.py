"""`ascend-conformance moe`: run one MoE scenario on a fresh world and compare it with the dense oracle.

    python -m ascend_conformance moe --method mc2 --world-size 4 --dp 2 --tp 2 --experts 16 --top-k 2 \\
        --tokens 5 --hidden 8 --intermediate 4 --dtype bfloat16 --seed 7 --dump /tmp/moe-case

``--hidden``, ``--intermediate``, ``--dtype`` and ``--seed`` may be left out: H 1024 and I 256 (sizes the real
MC2 ops accept on both A2 and A3), bfloat16 (what torch_npu's dispatch / combine take) and seed 0. The repro
line always names all of them.

It prints one JSON object (the scenario, tokens per DP rank, the op provider, ``max_abs_err`` against the
float32 oracle, the policy's rtol / atol, ``ok``, the repro command) and exits 0 when every rank is within
tolerance, 1 when not. With ``--dump DIR`` it writes ``DIR/rank{r}.pt`` per rank: a dict of ``x [n_r, H]``,
``topk_ids [n_r, K]``, ``topk_weights [n_r, K]``, ``w13 [E, 2I, H]`` and ``w2 [E, H, I]`` (global) and
``out [n_r, H]``, plus ``DIR/summary.json``; the files appear together (written to a temporary directory
that is renamed into place) or not at all.

Ranks hold different token counts, up to N: one DP rank (seed mod DP) holds N and the others a seeded
count in [0, N]. Beyond the contract, ``--tokens-per-dp 3,0`` fixes the counts and ``--placement
scattered`` uses a seeded non-contiguous, uneven expert_map; the suites' repro lines use them. Bad
arguments: one ``error: ...`` line, exit 2; so is ``--method mc2`` with a scenario the real MC2 ops of the
host's SoC do not take (``moe/mc2_applicability.py``, e.g. float32 or no token at all; the golden models on
CPU take every one).

``--sut`` picks the system under test: ``reference`` (default, the project's methods) or ``vllm-ascend``
(the installed release's own MoE layer and comm method, driven by :mod:`ascend_conformance.sut.vllm_ascend_moe`,
on the device type ``--device-type`` emulates with the torch_npu stand-in, the expert map ``--expert-map``
given the way the release takes it, the scheduler's ``--max-num-seqs`` from which the release derives its MC2
token capacity). The release's own selection must pick ``--method`` for the batch (else the JSON says
``"reached": false`` with the method it selected, exit 1); ``--force-method`` installs the method in the
forward context instead (a contract check; the ``permuted`` map needs it). The JSON adds ``"sut"``
(``reference`` or the installed release, e.g. ``vllm_ascend 0.18.0``, ``vllm_ascend main@182b75ea84``) and
``"ops"`` (``golden`` or ``torch_npu``). An unknown SUT, one that is not installed, or a configuration the
release refuses: one ``error: ...`` line naming the release, exit 2.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

from ascend_conformance.errors import ConfigError

NAME = "moe"
HELP = "run one MoE scenario (a comm method on a fresh world) against the dense oracle"

METHOD_CHOICES = ("native_allgather", "allgather", "alltoall", "mc2")
DTYPE_CHOICES = ("float32", "float16", "bfloat16")
DEFAULT_HIDDEN, DEFAULT_INTERMEDIATE, DEFAULT_DTYPE = 1024, 256, "bfloat16"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", required=True, choices=METHOD_CHOICES)
    parser.add_argument("--world-size", type=int, required=True, metavar="W", help="ranks; EP = the world")
    parser.add_argument("--dp", type=int, default=None, metavar="D", help="data parallel size (default W / T)")
    parser.add_argument("--tp", type=int, default=1, metavar="T", help="tensor parallel size (default 1)")
    parser.add_argument("--experts", type=int, required=True, metavar="E")
    parser.add_argument("--top-k", type=int, required=True, metavar="K")
    parser.add_argument("--tokens", type=int, required=True, metavar="N", help="tokens of the fullest DP rank")
    parser.add_argument("--hidden", type=int, default=DEFAULT_HIDDEN, metavar="H",
                        help=f"hidden size (default {DEFAULT_HIDDEN}: the real MC2 ops need 1024..8192 on A3, a "
                             f"multiple of 32 on A2)")
    parser.add_argument("--intermediate", type=int, default=DEFAULT_INTERMEDIATE, metavar="I",
                        help=f"expert intermediate size (default {DEFAULT_INTERMEDIATE})")
    parser.add_argument("--dtype", default=DEFAULT_DTYPE, choices=DTYPE_CHOICES,
                        help=f"activation and weight dtype (default {DEFAULT_DTYPE}, as torch_npu's dispatch needs)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="seed of every input (default 0)")
    parser.add_argument("--dump", metavar="DIR", help="write DIR/rank{r}.pt (inputs, global weights, output)")
    parser.add_argument("--tokens-per-dp", metavar="N0,N1,...",
                        help="token count of every DP rank (max must be --tokens); default: seeded, up to N")
    parser.add_argument("--placement", choices=("contiguous", "scattered"), default="contiguous",
                        help="experts per rank: contiguous E/W (default) or a seeded non-contiguous uneven expert_map")
    parser.add_argument("--sut", default="reference", metavar="{reference,vllm-ascend}",
                        help="system under test: the reference methods (default) or the installed vllm-ascend's")
    parser.add_argument("--device-type", default=None, metavar="{A2,A3,A5}",
                        help="vllm-ascend only: the device type the torch_npu stand-in emulates (default A3)")
    parser.add_argument("--expert-map", default="contiguous", metavar="MAP",
                        help="vllm-ascend only: contiguous (default), permuted, eplb or eplb-redundant: how the "
                             "experts reach the release")
    parser.add_argument("--max-num-seqs", type=int, default=None, metavar="M",
                        help="vllm-ascend only: the scheduler's max_num_seqs, which sizes the release's MC2 token "
                             "capacity (default 64)")
    parser.add_argument("--force-method", action="store_true",
                        help="vllm-ascend only: install --method in the forward context instead of the release's "
                             "selection (a contract check)")
    parser.add_argument("--rank-timeout", type=float, default=300.0, metavar="SECONDS",
                        help="bound on the run; a hang dumps every rank's stack (default 300)")


def scenario_from_args(args: argparse.Namespace):
    from ascend_conformance.moe.scenario import Scenario

    counts = None
    if args.tokens_per_dp is not None:
        try:
            counts = tuple(int(part) for part in args.tokens_per_dp.split(","))
        except ValueError:
            raise ConfigError(f"--tokens-per-dp must be comma-separated whole numbers, got {args.tokens_per_dp!r}") from None
    return Scenario(method=args.method, world_size=args.world_size, dp=args.dp, tp=args.tp, experts=args.experts,
                    top_k=args.top_k, tokens=args.tokens, hidden=args.hidden, intermediate=args.intermediate,
                    dtype=args.dtype, seed=args.seed, tokens_per_dp=counts, placement=args.placement)


def _check_dump_target(path: str) -> str:
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"--dump {path} exists and is not a directory")
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise ConfigError(f"--dump {path}: parent directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"--dump {path}: parent directory {parent} is not writable")
    return path


def write_dump(path: str, scenario, rank_results: list[dict], summary: dict) -> None:
    """Every rank's file into a temporary sibling directory, then renamed to `path` (replacing it)."""
    import torch

    w13, w2 = scenario.weights()
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", dir=os.path.dirname(path))
    try:
        for rank, result in enumerate(rank_results):
            tensors = result["tensors"]
            torch.save({"x": tensors["x"], "topk_ids": tensors["topk_ids"], "topk_weights": tensors["topk_weights"],
                        "w13": w13, "w2": w2, "out": tensors["out"]}, os.path.join(staging, f"rank{rank}.pt"))
        with open(os.path.join(staging, "summary.json"), "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)
        if os.path.isdir(path):
            retired = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old.", dir=os.path.dirname(path))
            os.rename(path, os.path.join(retired, "dump"))
            os.rename(staging, path)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.rename(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _system_under_test(args: argparse.Namespace, scenario):
    """(sut name, the vllm-ascend case or None); ConfigError for an unknown, missing or refusing SUT."""
    from ascend_conformance.sut import CLI_NAMES, REFERENCE, VLLM_ASCEND, stack

    name = CLI_NAMES.get(args.sut)
    if name not in (REFERENCE, VLLM_ASCEND):
        raise ConfigError(f"--sut must be one of reference, vllm-ascend, got {args.sut!r}")
    if name == REFERENCE:
        for flag, value, default in (("--device-type", args.device_type, None),
                                     ("--expert-map", args.expert_map, "contiguous"),
                                     ("--max-num-seqs", args.max_num_seqs, None),
                                     ("--force-method", args.force_method, False)):
            if value != default:
                raise ConfigError(f"{flag} applies to --sut vllm-ascend only, got {flag} {value} with --sut reference")
        return name, None
    reason = stack.unavailable_reason(VLLM_ASCEND)
    if reason:
        raise ConfigError(f"--sut vllm-ascend: {reason}")
    from ascend_conformance.sut import lines
    from ascend_conformance.sut.vllm_ascend_moe import ADAPTER, DEVICE_TYPES, MAX_NUM_SEQS, SutCase, release_label

    label = release_label()
    args.device_type = args.device_type or "A3"
    if args.device_type not in DEVICE_TYPES:
        raise ConfigError(f"--device-type must be one of {', '.join(DEVICE_TYPES)}, got {args.device_type!r}")
    for feature in ("comm_methods", f"device_{args.device_type}"):
        try:
            lines.check_feature(ADAPTER, VLLM_ASCEND, feature)
        except (lines.NotInRelease, lines.ShimMismatch) as exc:
            raise ConfigError(f"--sut vllm-ascend: {exc}") from None
    try:
        return name, SutCase(scenario, args.expert_map, MAX_NUM_SEQS if args.max_num_seqs is None else args.max_num_seqs,
                             args.force_method)
    except ConfigError as exc:
        message = str(exc)
        raise ConfigError(message if message.startswith(label) else f"{label} refuses: {message}") from None


def run(args: argparse.Namespace) -> int:
    scenario = scenario_from_args(args)
    sut, case = _system_under_test(args, scenario)
    dump = _check_dump_target(args.dump) if args.dump else None

    from ascend_conformance import platform as platforms
    from ascend_conformance.harness.host_register import default_lease_dir
    from ascend_conformance.harness.pool import RankFailure, prestart_forkserver
    from ascend_conformance.harness.world import WorldOptions, WorldRunner, physical_device_ids
    from ascend_conformance.moe.scenario_on_rank import run_scenarios
    from ascend_conformance.moe.scenario_verdict import summarize

    plat = platforms.require(platforms.get())
    if plat.virtual_devices:
        plat.slots = max(plat.slots, scenario.world_size)  # cpu slots / emulated NPUs: made up, over shared cores
    # Ranks of a system under test fork with its heavy dependencies already imported.
    prestart_forkserver(["ascend_conformance.sut.dependency_preload"] if case is not None else [])
    with tempfile.TemporaryDirectory(prefix="ascend-conformance-moe-") as logs:
        runner = WorldRunner(WorldOptions(platform=plat, physical_ids=physical_device_ids(plat, plat.slots),
                                          lease_dir=default_lease_dir(plat.name), log_root=logs,
                                          rank_timeout=args.rank_timeout))
        reason = runner.skip_reason(scenario.world_size)
        if reason:
            raise ConfigError(f"cannot run a world of {scenario.world_size} ranks here: {reason}")
        if case is None:
            rank_fn, rank_args, repro = run_scenarios, ([scenario.to_dict()], dump is not None), scenario.repro()
        else:
            from ascend_conformance.sut.vllm_ascend_moe import run_cases

            rank_fn, rank_args = run_cases, ([case.to_dict()], args.device_type, None, dump is not None)
            repro = case.repro(args.device_type)
        try:
            if scenario.method == "mc2":  # the real MC2 ops' documented limits (the golden models have none)
                from ascend_conformance.moe.mc2_applicability import mc2_unsupported_reason, ops_soc

                soc = runner.run(scenario.world_size, ops_soc, (plat.device_type,), {}, "cli::moe::soc")[0]
                refusal = mc2_unsupported_reason(scenario, soc)
                if refusal:
                    raise ConfigError(f"--method mc2 cannot run this scenario here: {refusal}")
            per_rank = runner.run(scenario.world_size, rank_fn, rank_args, {}, "cli::moe")
        except RankFailure as failure:
            print(str(failure), file=sys.stderr)
            print(f"repro: {repro}", file=sys.stderr)
            return 1
        finally:
            runner.shutdown()
    results = [rank_results[0] for rank_results in per_rank]
    if case is None:
        summary = {**summarize(scenario, results), "sut": "reference"}
    else:
        from ascend_conformance.sut.vllm_ascend_moe import CaseCrashed
        from ascend_conformance.sut.vllm_ascend_moe import summarize as summarize_sut

        try:
            summary = summarize_sut(case, args.device_type, results)
        except CaseCrashed as crash:
            print(str(crash), file=sys.stderr)
            return 1
    summary = _sut_next_to_ok(summary)
    summary.update(platform=plat.name, dump=dump)
    if dump:
        write_dump(dump, scenario, results, summary)
    print(json.dumps(summary, indent=2))
    return 0 if summary["ok"] else 1


def _sut_next_to_ok(summary: dict) -> dict:
    """The summary with ``sut`` and ``ops`` placed right after ``ok`` (what was judged, then on what)."""
    ordered = {}
    for key, value in summary.items():
        if key in ("sut", "ops"):
            continue
        ordered[key] = value
        if key == "ok":
            ordered["sut"], ordered["ops"] = summary["sut"], summary["ops"]
    return ordered
