"""ascend-conformance: reference implementation and conformance suite for distributed LLM inference
building blocks (parallel groups, MoE dispatch/combine, layer-sharded weights, EPLB)."""
import os as _os

# With torch_npu installed but no CANN runtime (a laptop, a CI box), `import torch` itself raises, because
# torch autoloads every installed device backend. We import torch_npu explicitly where the npu platform is
# wanted (see platform.py), so autoload is never needed; turn it off before anything imports torch.
_os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")

__version__ = "0.1.0"
