"""One MoE scenario: global inputs from a seed, one method's forward on a world, the dense oracle.

Shared by the CLI (``python -m ascend_conformance moe``), the suites and the benchmarks. A
:class:`Scenario` is a small frozen value; everything else derives from it deterministically, on any rank
and in the parent process alike:

* the parallel layout: ``world_size = dp · tp`` ranks, EP = the world, one PP stage;
* tokens per DP rank (:meth:`Scenario.token_counts`): ``tokens_per_dp`` when given, else one DP rank
  (``seed mod DP``) holds ``tokens`` and the others a seeded count in ``[0, tokens]`` — uneven, up to N;
* per DP rank d: ``x [n_d, H]`` ~ N(0, 1), ``topk_ids [n_d, K]`` int32 (K distinct experts per token),
  ``topk_weights [n_d, K]`` float32 (positive, summing to 1); the TP ranks of a DP group share them;
* global weights ``w13 [E, 2I, H]`` ~ N(0, 1/H), ``w2 [E, H, I]`` ~ N(0, 1/I), in the scenario dtype;
* the expert placement: ``contiguous`` (no expert_map) or ``scattered`` (a seeded non-contiguous,
  uneven expert_map, ``ExpertPlacement.scattered``).

:func:`run_scenarios` is the rank function (a batch of scenarios in one world run, the same order on every
rank); :func:`summarize` folds the per-rank results into the JSON-able summary the CLI prints.
Every summary carries the one-line repro command (:meth:`Scenario.repro`).
"""
from __future__ import annotations

import dataclasses
import math
import shlex
import zlib
from typing import Any

import torch

from ascend_conformance.tolerance import Kind, assert_close, tolerance
from ascend_conformance.errors import ConfigError
from ascend_conformance.moe.context import gather_forward_context
from ascend_conformance.moe.methods import COMPUTING_METHODS, METHODS, method_class
from ascend_conformance.moe.mlp import ExpertMLP
from ascend_conformance.moe.oracle import dense_moe
from ascend_conformance.moe.parallel import moe_groups
from ascend_conformance.moe.placement import ExpertPlacement
from ascend_conformance.topology import ParallelConfig

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PLACEMENTS = ("contiguous", "scattered")


def _whole(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be a whole number >= {low}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Scenario:
    method: str
    world_size: int
    experts: int
    top_k: int
    tokens: int
    hidden: int
    intermediate: int
    dtype: str
    seed: int
    dp: int | None = None  # default world_size / tp
    tp: int = 1
    tokens_per_dp: tuple[int, ...] | None = None
    placement: str = "contiguous"

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        for name, low in (("world_size", 1), ("experts", 1), ("top_k", 1), ("tokens", 0), ("hidden", 1),
                          ("intermediate", 1), ("tp", 1), ("seed", 0)):
            _whole(name, getattr(self, name), low)
        if self.dp is None:
            object.__setattr__(self, "dp", self.world_size // self.tp if self.world_size % self.tp == 0 else 0)
        if self.dp < 1 or self.dp * self.tp != self.world_size:
            raise ConfigError(f"dp*tp must equal world_size (EP = the world): dp {self.dp} * tp {self.tp} != "
                              f"{self.world_size}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.top_k > self.experts:
            raise ConfigError(f"top_k {self.top_k} > experts {self.experts}: a token picks K distinct experts")
        if self.placement not in PLACEMENTS:
            raise ConfigError(f"placement must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}")
        if self.placement == "contiguous" and self.experts % self.world_size:
            raise ConfigError(f"experts {self.experts} must be a multiple of the EP size {self.world_size} "
                              f"(world size) without an expert_map; use placement scattered for uneven ones")
        if self.experts < self.world_size:
            raise ConfigError(f"experts {self.experts} < EP size {self.world_size}: every rank needs an expert")
        if self.tokens_per_dp is not None:
            counts = tuple(self.tokens_per_dp)
            object.__setattr__(self, "tokens_per_dp", counts)
            if len(counts) != self.dp or any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in counts):
                raise ConfigError(f"tokens_per_dp must list {self.dp} counts >= 0 (one per DP rank), got {list(counts)}")
            if max(counts) != self.tokens:
                raise ConfigError(f"tokens {self.tokens} must be the largest of tokens_per_dp {list(counts)}")

    # -- derived values --------------------------------------------------------------------------

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def config(self) -> ParallelConfig:
        return ParallelConfig(world_size=self.world_size, tp=self.tp, pp=1, dp=self.dp)

    def _generator(self, *tag) -> torch.Generator:
        key = ":".join(str(t) for t in (self.seed, *tag))
        return torch.Generator().manual_seed(zlib.crc32(key.encode()))

    def token_counts(self) -> tuple[int, ...]:
        if self.tokens_per_dp is not None:
            return self.tokens_per_dp
        counts = torch.randint(0, self.tokens + 1, (self.dp,), generator=self._generator("counts")).tolist()
        counts[self.seed % self.dp] = self.tokens
        return tuple(counts)

    def expert_placement(self) -> ExpertPlacement:
        if self.placement == "contiguous":
            return ExpertPlacement.contiguous(self.experts, self.world_size)
        return ExpertPlacement.scattered(self.experts, self.world_size, zlib.crc32(f"{self.seed}:placement".encode()))

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        gen = self._generator("weights")
        w13 = torch.randn((self.experts, 2 * self.intermediate, self.hidden), generator=gen) / math.sqrt(self.hidden)
        w2 = torch.randn((self.experts, self.hidden, self.intermediate), generator=gen) / math.sqrt(self.intermediate)
        return w13.to(self.torch_dtype), w2.to(self.torch_dtype)

    def inputs(self, dp_rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x, topk_ids, topk_weights) of DP rank `dp_rank`."""
        n = self.token_counts()[dp_rank]
        gen = self._generator("inputs", dp_rank)
        x = torch.randn((n, self.hidden), generator=gen).to(self.torch_dtype)
        topk_ids = torch.rand((n, self.experts), generator=gen).argsort(dim=1)[:, :self.top_k].to(torch.int32)
        raw = torch.rand((n, self.top_k), generator=gen) + 0.1
        return x, topk_ids, raw / raw.sum(dim=1, keepdim=True)

    # -- description -----------------------------------------------------------------------------

    def cli_args(self) -> list[str]:
        args = ["--method", self.method, "--world-size", str(self.world_size), "--dp", str(self.dp),
                "--tp", str(self.tp), "--experts", str(self.experts), "--top-k", str(self.top_k),
                "--tokens", str(self.tokens), "--hidden", str(self.hidden), "--intermediate", str(self.intermediate),
                "--dtype", self.dtype, "--seed", str(self.seed)]
        if self.tokens_per_dp is not None:
            args += ["--tokens-per-dp", ",".join(str(n) for n in self.tokens_per_dp)]
        if self.placement != "contiguous":
            args += ["--placement", self.placement]
        return args

    def repro(self, dump_dir: str = "DIR") -> str:
        """The one-line command that reruns this scenario alone and dumps every rank's tensors."""
        return shlex.join(["python", "-m", "ascend_conformance", "moe", *self.cli_args(), "--dump", dump_dir])

    def label(self) -> str:
        """Short id, e.g. ``mc2 w4 dp2tp2 E16 K2 n[3,0] H8 I4 bfloat16 scattered s7``."""
        counts = ",".join(str(n) for n in self.token_counts())
        return (f"{self.method} w{self.world_size} dp{self.dp}tp{self.tp} E{self.experts} K{self.top_k} n[{counts}] "
                f"H{self.hidden} I{self.intermediate} {self.dtype} {self.placement} s{self.seed}")

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["tokens_per_dp"] = list(self.tokens_per_dp) if self.tokens_per_dp is not None else None
        return out

    @classmethod
    def from_dict(cls, values: dict) -> "Scenario":
        values = dict(values)
        if values.get("tokens_per_dp") is not None:
            values["tokens_per_dp"] = tuple(values["tokens_per_dp"])
        return cls(**values)


# ---------------------------------------------------------------------------------------- in a rank

@dataclasses.dataclass
class RankSetup:
    """Everything one rank of a scenario holds before the forward: groups, placement, its DP rank's inputs,
    the global weights and the forward context (built with the DP all-gather of the token counts)."""

    scenario: Scenario
    device: torch.device
    groups: Any
    placement: ExpertPlacement
    x: torch.Tensor
    topk_ids: torch.Tensor
    topk_weights: torch.Tensor
    w13: torch.Tensor
    w2: torch.Tensor
    ctx: Any

    @property
    def rank(self) -> int:
        return self.groups.ep.ranks[self.groups.ep.rank_in_group]

    def method(self, name_or_cls, ops=None):
        cls = method_class(name_or_cls) if isinstance(name_or_cls, str) else name_or_cls
        return cls(self.groups, self.placement, ops=ops, device=self.device)

    def mlp(self, ops) -> ExpertMLP:
        return ExpertMLP.for_rank(self.w13.to(self.device), self.w2.to(self.device), self.placement,
                                  self.groups.ep.rank_in_group, ops)

    def inputs_on_device(self):
        return self.x.to(self.device), self.topk_ids.to(self.device), self.topk_weights.to(self.device)

    def oracle(self) -> torch.Tensor:
        """float32 [n, H] for this rank's tokens."""
        return dense_moe(self.x, self.topk_ids, self.topk_weights, self.w13, self.w2)


def setup_on_rank(scenario: Scenario) -> RankSetup:
    """Collective (the DP all-gather of token counts): every rank of the world calls it. Tensors go to the
    device the groups run on (this process's current device)."""
    groups = moe_groups(scenario.config())
    device = groups.ep.device
    x, topk_ids, topk_weights = scenario.inputs(groups.dp.rank_in_group)
    w13, w2 = scenario.weights()
    ctx = gather_forward_context(x.shape[0], groups.dp, scenario.tp, device)
    if ctx.num_tokens_across_dp != scenario.token_counts():
        raise AssertionError(f"forward context gathered {list(ctx.num_tokens_across_dp)} tokens per DP rank, the "
                             f"scenario has {list(scenario.token_counts())}")
    return RankSetup(scenario, device, groups, scenario.expert_placement(), x, topk_ids, topk_weights, w13, w2, ctx)


def run_on_rank(scenario: Scenario, *, keep_tensors: bool = False, method_cls=None, ops=None) -> dict:
    """Run `scenario` in this rank (collective: every rank of the world calls it) and compare with the
    dense oracle. Returns this rank's result: tokens, max errors, ``ok`` and the mismatch report; with
    keep_tensors also x, topk_ids, topk_weights and out (CPU). `method_cls` / `ops` replace the
    scenario's method class / the op provider (the suites' deliberately broken variants use them)."""
    setup = setup_on_rank(scenario)
    method = setup.method(method_cls or scenario.method, ops=ops)
    out = method.forward(*setup.inputs_on_device(), setup.mlp(method.ops), setup.ctx).cpu()
    groups = setup.groups
    result = {"rank": setup.rank, "dp_rank": groups.dp.rank_in_group, "tp_rank": groups.tp.rank_in_group,
              "tokens": setup.x.shape[0], "ops": method.ops.name}
    what = f"{scenario.label()} rank {setup.rank}"
    if scenario.method in COMPUTING_METHODS:
        result.update(compare_result(out, setup.oracle(), Kind.ACCUMULATED, what))
    else:  # Dummy keeps shapes and returns the token buffer unchanged
        result.update(compare_result(out, setup.x, Kind.EXACT, what + " (token buffer)"))
    if keep_tensors:
        result["tensors"] = {"x": setup.x, "topk_ids": setup.topk_ids, "topk_weights": setup.topk_weights, "out": out}
    return result


def compare_result(out: torch.Tensor, expected: torch.Tensor, kind: Kind, what: str) -> dict:
    """Errors against the float32 `expected`; the verdict from the policy on `expected` rounded to out's dtype."""
    result = {"max_abs_err": 0.0, "max_rel_err": 0.0, "tolerance_used": 0.0, "ok": True, "message": None}
    if out.shape == expected.shape and out.numel():
        # A NaN anywhere counts as an infinite error (max() would otherwise skip or propagate it at random).
        diff = (out.float() - expected.float()).abs().nan_to_num(nan=math.inf)
        result["max_abs_err"] = float(diff.max())
        result["max_rel_err"] = float((diff / expected.float().abs().clamp_min(1e-6)).max())
        rounded = expected.to(out.dtype).float()
        rtol, atol = tolerance(out.dtype, kind)
        if rtol or atol:  # share of the allowed error used by the worst element (1.0 = at the limit)
            used = (out.float() - rounded).abs() / (atol + rtol * rounded.abs())
            result["tolerance_used"] = float(used.nan_to_num(nan=math.inf).max())
    try:
        assert_close(out, expected.to(out.dtype), kind=kind, what=what)
    except AssertionError as exc:
        result.update(ok=False, message=str(exc))
    return result


def run_scenarios(scenarios: list[dict], keep_tensors: bool = False) -> list[dict]:
    """Rank function: every scenario of the batch in order (a world runs many in one call). A scenario that
    raises is re-raised naming its repro command."""
    results = []
    for values in scenarios:
        scenario = Scenario.from_dict(values)
        try:
            results.append(run_on_rank(scenario, keep_tensors=keep_tensors))
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise RuntimeError(f"{scenario.label()}: {type(exc).__name__}: {first} | repro: {scenario.repro()}") from exc
    return results


# ------------------------------------------------------------------------------------ in the parent

def summarize(scenario: Scenario, rank_results: list[dict]) -> dict:
    """The JSON-able summary of one scenario from every rank's result (rank order)."""
    rtol, atol = tolerance(scenario.torch_dtype, Kind.ACCUMULATED if scenario.method in COMPUTING_METHODS
                           else Kind.EXACT)
    failures = [r for r in rank_results if not r["ok"]]
    return {
        **scenario.to_dict(),
        "tokens_per_dp": list(scenario.token_counts()),
        "expert_placement": scenario.expert_placement().describe(),
        "ops": rank_results[0]["ops"] if rank_results else None,
        "oracle": "dense float32" if scenario.method in COMPUTING_METHODS else "input (dummy keeps the token buffer)",
        "max_abs_err": _json_number(max((r["max_abs_err"] for r in rank_results), default=0.0)),
        "max_rel_err": _json_number(max((r["max_rel_err"] for r in rank_results), default=0.0)),
        "tolerance_used": _json_number(max((r["tolerance_used"] for r in rank_results), default=0.0)),
        "rtol": rtol,
        "atol": atol,
        "ok": not failures,
        "failing_ranks": [r["rank"] for r in failures],
        "first_failure": failures[0]["message"] if failures else None,
        "repro": scenario.repro(),
    }


def _json_number(value: float):
    """The value, or the string "inf" for a non-finite error (strict JSON has no Infinity)."""
    return value if math.isfinite(value) else "inf"


def failure_report(summary: dict) -> str:
    """What a failing test prints for one scenario: the verdict, the first mismatch table, the repro."""
    return (f"{summary['method']} world {summary['world_size']} dp{summary['dp']} tp{summary['tp']} "
            f"tokens_per_dp {summary['tokens_per_dp']}: ranks {summary['failing_ranks']} exceed rtol "
            f"{summary['rtol']:g} atol {summary['atol']:g} (max abs err {summary['max_abs_err']})\n"
            f"{summary['first_failure']}\nrepro: {summary['repro']}")
