"""Per release line, what moved in the systems under test: one package per adapter, one module per line
where something changed (``vllm_ascend_eplb/v0_13.py``); :mod:`ascend_conformance.sut.lines` picks the
module for the installed release."""
