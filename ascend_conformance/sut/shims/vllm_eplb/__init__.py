"""vLLM's EPLB placement policy per release line (:mod:`ascend_conformance.sut.vllm_eplb`): what the
policy's entry point takes and returns, and where the maps of a placement come from."""
