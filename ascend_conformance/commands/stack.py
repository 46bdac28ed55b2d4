"""`ascend-conformance stack [--install [--vllm-ascend SPEC [--vllm VERSION]]] [--check] [--json] [--pairs]`.

Without flags: one line per package (vllm, vllm_ascend) of this environment: release, origin, where.

``--install`` alone installs what is missing of the default pair into this environment (``make setup``
runs it) and leaves host installs alone (never torch). ``--install --vllm-ascend SPEC`` sets up the
environment of any pair, ``.venv-sut/<vllm-ascend>-<vllm>/`` (reused when present), where SPEC is a
release on the index (``0.18.0``), a source checkout (``/src/vllm-ascend``) or a named one
(``main=/src/vllm-ascend``); the vLLM is the one the release pairs with (its Dockerfile, else the suite's
table; printed) unless ``--vllm`` says otherwise. ``--pairs`` lists the pair environments present, with
their size on disk. ``--check`` imports the modules the SUT adapters drive in a fresh interpreter (exit 1
with the error when they do not import).
"""
from __future__ import annotations

NAME = "stack"
HELP = "show (or --install) the vLLM / vllm-ascend systems under test: this environment's, or any pair's"


def add_arguments(parser) -> None:
    parser.add_argument("--install", action="store_true",
                        help="install what is missing of the default pair here, or set up --vllm-ascend's pair")
    parser.add_argument("--vllm-ascend", metavar="SPEC",
                        help="with --install: VERSION (on the index), PATH (a source checkout) or NAME=PATH "
                             "(main=/src/vllm-ascend); set up that pair's environment under .venv-sut/")
    parser.add_argument("--vllm", metavar="VERSION", help="with --vllm-ascend: this vLLM instead of the paired one")
    parser.add_argument("--pairs", action="store_true", help="list the pair environments present")
    parser.add_argument("--check", action="store_true", help="import the modules the SUT adapters drive")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of lines")


def run(args) -> int:
    import json
    import subprocess

    from ascend_conformance.errors import ConfigError
    from ascend_conformance.sut import installed, pair_env, release, stack

    if args.vllm_ascend and not args.install:
        raise ConfigError("--vllm-ascend needs --install")
    if args.vllm and not args.vllm_ascend:
        raise ConfigError("--vllm needs --vllm-ascend (the default pair is vLLM "
                          f"{release.VLLM_VERSION} + vllm-ascend {release.VLLM_ASCEND_VERSION})")
    log = (lambda line: None) if args.json else print
    if args.pairs:
        pairs = pair_env.list_pairs()
        rows = [{"pair": p.name, "vllm_ascend": p.vllm_ascend, "vllm": p.vllm, "python": p.python,
                 "bytes": pair_env.disk_usage(p.directory)} for p in pairs]
        if args.json:
            print(json.dumps({"directory": pair_env.envs_directory(), "pairs": rows}, indent=1))
        else:
            print(f"pair environments in {pair_env.envs_directory()}: {len(rows) or 'none'}")
            for row in rows:
                print(f"  {row['pair']}: vllm-ascend {row['vllm_ascend']} + vLLM {row['vllm']}, "
                      f"{row['bytes'] / 2**30:.2f} GiB, {row['python']}")
        return 0
    if args.vllm_ascend:
        pair = pair_env.install_pair(args.vllm_ascend, args.vllm, log=log)
        check = [pair.python, "-m", "ascend_conformance", "stack", *(["--check"] if args.check else []),
                 *(["--json"] if args.json else [])]
        log(f"stack: {pair.name} ready: run the suites with {pair.python} -m pytest suites/")
        return subprocess.run(check).returncode
    if args.install:
        stack.install(log=log)
    releases = {name: installed.installed(name) for name in ("vllm", "vllm_ascend")}
    packages = stack.inspect()
    error = stack.import_check() if args.check else None
    absent = stack.absent_modules() if args.check else []
    if args.json:
        print(json.dumps({"default_pair": {"vllm": release.VLLM_VERSION, "vllm_ascend": release.VLLM_ASCEND_VERSION},
                          "python": __import__("sys").executable,
                          "packages": {name: {**(releases[name].to_dict() if releases[name] else {"label": None}),
                                              "origin": p.origin} for name, p in packages.items()},
                          **({"import_check": error or "ok", "absent_modules": absent} if args.check else {})},
                         indent=1))
    else:
        for name, package in packages.items():
            found = releases[name]
            print(f"{found.label} ({package.origin}, {package.location})" if found else f"{name}: missing")
        if args.check:
            for name in absent:
                print(f"not in {installed.label(name.split('.')[0])}: {name} (its tests report not-in-release)")
            print(f"import check: {error or 'ok'}")
    return 1 if error else 0
