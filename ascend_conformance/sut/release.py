"""The vLLM / vllm-ascend pairs the project knows: the default pair ``make setup`` installs, and every
release line the suite is run against (``stack --install --vllm-ascend ...``, ``matrix``).

**The pairing.** vllm-ascend releases track one vLLM release each. The newest vllm-ascend on the package
index is 0.23.0.post1 (published only as a source distribution); its Dockerfile builds it on vLLM
``v0.23.0``. Newer vLLM releases do not pair with it (vLLM 0.33 moved ``FusedMoE``, which vllm-ascend
0.23 imports), and older pairs lack the group kinds and MoE methods the suite judges. Both import with
the CPU torch 2.13 the project runs on here, although their metadata ask for torch 2.10 / 2.11: the code
paths the suite drives (parallel state, MoE comm methods, layer sharding, EPLB) use no API that changed.
The pair is therefore (vllm 0.23.0, vllm-ascend 0.23.0.post1).

**How it is installed** (``ascend_conformance.sut.stack.install``): vLLM's wheel with ``--no-deps`` and
the pure-Python packages below, pinned exactly and also with ``--no-deps``, so nothing can pull a CUDA
torch or replace the host's torch; vllm-ascend's sdist, checked against its sha256, unpacked as source
(its C++ / CANN ops are never built). The list is what the import chain of the modules in
``IMPORTED_MODULES`` needs, found by importing them in an empty environment that has only torch and
adding what was missing, one package at a time; vLLM's serving, tokenizer and kernel dependencies
(fastapi, xgrammar, flashinfer, triton, ...) are not in it because nothing the suite drives imports them.
"""
from __future__ import annotations

import dataclasses

VLLM_VERSION = "0.23.0"
VLLM_ASCEND_VERSION = "0.23.0.post1"
VLLM_ASCEND_SDIST_NAME = f"vllm_ascend-{VLLM_ASCEND_VERSION}.tar.gz"
VLLM_ASCEND_SDIST_URL = ("https://files.pythonhosted.org/packages/ab/7a/"
                         "32a1b1f13467fb7372588206fa1ffb735f28dcd8504d562f5c7ccdbd90d0/" + VLLM_ASCEND_SDIST_NAME)
VLLM_ASCEND_SDIST_SHA256 = "a3b9f4a5dd7aa50c37e03d1f35937c4ae5aeacc49b734cac74d59ce5757738e1"

# The modules the SUT adapters import (``stack.import_check`` imports exactly these).
IMPORTED_MODULES = (
    "vllm.config",
    "vllm.v1.executor",  # imported by vLLM's ParallelConfig validation when the groups adapter builds one
    "vllm.distributed.parallel_state",
    "vllm.distributed.eplb",
    "vllm.model_executor.layers.fused_moe",
    "vllm_ascend.ascend_config",
    "vllm_ascend.distributed.parallel_state",
    "vllm_ascend.ops.fused_moe.moe_comm_method",
    "vllm_ascend.ops.fused_moe.token_dispatcher",
    "vllm_ascend.ops.layer_shard_linear",
    "vllm_ascend.eplb.core.policy.policy_factory",
)

# What that import chain needs besides torch and its own dependencies, pinned: pure-Python packages and
# self-contained binary wheels (numba / llvmlite, scipy, tokenizers, pyzmq, ...), none of them CUDA.
PURE_PYTHON_REQUIREMENTS = (
    "aiohappyeyeballs==2.7.1",
    "aiohttp==3.14.5",
    "aiosignal==1.4.0",
    "annotated-types==0.8.0",
    "anyio==4.16.0",
    "attrs==26.1.0",
    "cachetools==8.0.2",
    "cbor2==6.3.0",
    "certifi==2026.10.19.post1",
    "einops==0.8.2",
    "frozenlist==1.8.0",
    "gguf==0.19.0",
    "h11==0.16.0",
    "httpcore==1.0.9",
    "httpx==0.28.1",
    "httpx2==2.16.2",
    "huggingface-hub==1.33.0",
    "idna==3.20",
    "llvmlite==0.50.0",
    "msgspec==0.22.0",
    "multidict==7.2.1",
    "numba==0.68.1",
    "numpy==2.4.6",
    "openai==3.57.0",
    "openai-harmony==0.0.8",
    "packaging==26.4",
    "pillow==13.0.0",
    "prometheus-client==0.26.0",
    "propcache==0.5.4",
    "psutil==7.2.2",
    "pybase64==1.5.1",
    "pydantic==2.14.4",
    "pydantic-core==2.50.5",
    "pyyaml==6.0.4",
    "pyzmq==27.3.0",
    "regex==2026.11.19",
    "requests==2.34.2",
    "safetensors==0.8.0",
    "scipy==1.17.1",
    "sniffio==1.3.1",
    "tokenizers==0.22.2",
    "tqdm==4.70.1",
    "transformers==5.5.4",
    "typing-inspection==0.4.5",
    "urllib3==2.8.0",
    "uvloop==0.23.0",
    "yarl==1.25.1",
)


# -- every release line --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class KnownRelease:
    """A vllm-ascend release on the package index: the vLLM it pairs with and the artifact the suite
    takes its Python source from (checked against the sha256 recorded here when it was first installed)."""

    name: str
    vllm: str  # the VLLM_TAG of the release's Dockerfile (a wheel carries no Dockerfile: recorded here)
    artifact: str  # file name on the index: its sdist (a wheel's Python files would do as well)
    sha256: str


# The fallback of the pairing: the release's own Dockerfile (``ARG VLLM_TAG=...``), which its sdist ships,
# is read first. Every release here publishes an sdist (and wheels, whose compiled ops the suite never uses).
KNOWN_RELEASES = {release.name: release for release in (
    KnownRelease("0.11.0", "0.11.0", "vllm_ascend-0.11.0.tar.gz",
                 "795a004fb28148cf273234671a03284b27fa18768b930dbc2e2d90f60f87bfd9"),
    KnownRelease("0.13.0", "0.13.0", "vllm_ascend-0.13.0.tar.gz",
                 "ab0e9bc12b9a4042c261901ccad96f4faab6e6d04cf5131f7cc2358aafda3a36"),
    KnownRelease("0.18.0", "0.18.0", "vllm_ascend-0.18.0.tar.gz",
                 "8df042cfaae06fab993bff5f38bb45097634c3f398b2cf74e068347abdddb344"),
    KnownRelease("0.23.0", "0.23.0", "vllm_ascend-0.23.0.tar.gz",
                 "a58db76eaffcf328b13b315a0db3a57d381a8947d01057ddcefe4ad02372b242"),
    KnownRelease(VLLM_ASCEND_VERSION, VLLM_VERSION, VLLM_ASCEND_SDIST_NAME, VLLM_ASCEND_SDIST_SHA256),
)}
# Development lines, by the name a checkout is installed under: the vLLM its Dockerfile pinned when the
# suite's expectations for it were established (the checkout's own Dockerfile wins when it has one).
KNOWN_CHECKOUTS = {"main": "0.27.1"}
