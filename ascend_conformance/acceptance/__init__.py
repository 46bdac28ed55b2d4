"""Vendor acceptance: mustpass lists per profile, a submission bundle and its verifier (docs/acceptance.md).

The model is the Khronos conformance process: a versioned list per profile of the tests an acceptance
run must execute and pass, known divergences of the systems under test as the waivers (each with its
finding and upstream reference), and a submission package that a script checks before anyone reads it.

    checkout.py      where the suite, the lists and the release manifests are
    profiles.py      cpu-reference, npu-a2, npu-a3: selection rules and what the host must be
    pytest_plugin.py collection inventory and running exactly a list (pytest -p)
    mustpass.py      generating, reading, comparing and writing the lists
    manifest.py      sha256 of every suite, fixture and package file; release manifests
    run.py           running a profile's list and packing the bundle
    bundle.py        the bundle's layout, writing it whole, reading it
    counterparts.py  JUnit XML and Allure outcomes per test
    verify.py        the checks of a bundle and its one-screen summary
"""
