"""vllm-ascend's dynamic EPLB per release line (:mod:`ascend_conformance.sut.vllm_ascend_eplb`): how the
policy factory and the policies are constructed, which classes its types map to, the initial placement,
and how the expert-weight transfer finds a rank's MoE layers and their weights."""
