"""One MoE scenario, as a value: the parallel layout, the seeded global inputs, the repro line.

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

    >>> s = Scenario(method="mc2", world_size=4, dp=2, tp=2, experts=16, top_k=2, tokens=3, hidden=8,
    ...              intermediate=4, dtype="bfloat16", seed=7, tokens_per_dp=(3, 0), placement="scattered")
    >>> s.label()
    'mc2 w4 dp2tp2 E16 K2 n[3,0] H8 I4 bfloat16 scattered s7'
    >>> [tuple(t.shape) for t in s.inputs(0)]
    [(3, 8), (3, 2), (3, 2)]

The rest of a run lives next to it: :mod:`~ascend_conformance.moe.scenario_on_rank` runs a scenario in a
rank of a world, :mod:`~ascend_conformance.moe.scenario_verdict` judges it against the dense oracle and folds
the ranks' results into one summary, :mod:`~ascend_conformance.moe.scenario_report` formats a failure.
Every summary carries the one-line repro command (:meth:`Scenario.repro`).
"""
from __future__ import annotations

import dataclasses
import math
import shlex
import zlib

import torch

from ascend_conformance.errors import ConfigError, require_whole
from ascend_conformance.moe.methods import METHODS
from ascend_conformance.moe.placement import ExpertPlacement
from ascend_conformance.topology import ParallelConfig

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PLACEMENTS = ("contiguous", "scattered")


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
            require_whole(name, getattr(self, name), low)
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
