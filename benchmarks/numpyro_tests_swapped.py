"""numpyro's own TraceGraph_ELBO tests, run against ``expectax.infer.TraceGraph_ELBO``.

``expectax.infer.TraceGraph_ELBO`` is meant as a drop-in for ``numpyro.infer.TraceGraph_ELBO``
(issue 18, item 5). This script runs numpyro's published tests that use ``TraceGraph_ELBO``
with the class swapped: a pytest plugin (written to a temporary folder, passed with ``-p``)
replaces ``numpyro.infer.TraceGraph_ELBO`` and ``numpyro.infer.elbo.TraceGraph_ELBO`` by
expectax's class *before* any test module is imported, so ``from numpyro.infer import
TraceGraph_ELBO`` and ``infer.TraceGraph_ELBO(...)`` in the tests get expectax's. numpyro's
SDVI module is imported before the swap, so its ``VALID_ELBOS`` tuple keeps numpyro's own
class and ``test_sdvi.py::test_elbos`` exercises SDVI's real ``isinstance`` check.

Which tests: every test function under numpyro's ``test/`` whose source (body or
decorators) names ``TraceGraph``; of a function that names it only in its
``@pytest.mark.parametrize`` (e.g. ``test_sdvi.py::test_elbos`` over four ELBO classes) only
the parametrisations whose arguments are the (swapped) TraceGraph_ELBO class or an instance
of it run. Nothing of numpyro's is copied into this repository.

Where the tests come from: numpyro's tests for exactly the installed numpyro version.

1. ``--source DIR``: a numpyro source tree (with ``test/infer/test_svi.py``), e.g. a git
   checkout of the release tag::

       git clone --depth 1 --branch 0.22.0 https://github.com/pyro-ppl/numpyro /tmp/numpyro-src

   (numpyro's release tags are the bare version, ``0.22.0``; older ones ``v0.2.4``.)
2. Otherwise the script tries, in a cache folder (``--cache``, default
   ``/tmp/expectax-numpyro-tests``): ``pip download --no-deps --no-binary :all:
   numpyro==<installed>`` (the sdist: numpyro 0.22.0's ships only ``test/*.py``, not
   ``test/infer`` or ``test/contrib``, so it is used only when it has them), then the
   ``git clone`` above (tag ``<installed>``, then ``v<installed>``). If neither works it stops
   and says how to pass ``--source``.

The script compares the source's ``numpyro/version.py`` and ``numpyro/infer/elbo.py`` with
the installed package and says whether they match (a checkout of another commit may still
be usable: the tests of TraceGraph_ELBO change rarely).

Run (from the repository root, with the project's venv)::

    .venv/bin/python benchmarks/numpyro_tests_swapped.py --source /tmp/numpyro-src
    .venv/bin/python benchmarks/numpyro_tests_swapped.py --source DIR --baseline   # numpyro's
        # own class, no swap: which of these tests pass here at all
    .venv/bin/python benchmarks/numpyro_tests_swapped.py --source DIR --list       # selection only
    .venv/bin/python benchmarks/numpyro_tests_swapped.py --source DIR -- -x     # pytest args

The tests run in one pytest-xdist worker with a memory watchdog (``--mem-limit-gb``, default
6): a test whose process passes the limit is ended and reported as failed ("MEMORY LIMIT"),
the worker restarts for the rest, instead of the kernel's OOM killer striking on a shared
machine. It prints one line per test (PASS / FAIL / ERROR / SKIP, seconds, the first line of the
failure) and the counts; ``--json FILE`` writes them too. Exit status 0 when none failed.
Results and the reasons for each failure: benchmarks/results/numpyro_tests_swapped.md.
"""

from __future__ import annotations

import argparse
import ast
import filecmp
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GIT_URL = "https://github.com/pyro-ppl/numpyro"

PLUGIN = r'''
"""pytest plugin: numpyro.infer.TraceGraph_ELBO -> expectax.infer.TraceGraph_ELBO."""
import os

import numpyro.infer
import numpyro.infer.elbo

_ORIGINAL = numpyro.infer.elbo.TraceGraph_ELBO
SWAP = os.environ.get("EXPECTAX_SWAP", "1") == "1"

# SDVI's VALID_ELBOS is built when its module is imported: import it while it still holds
# numpyro's own class, so the check that runs is SDVI's real isinstance check.
import numpyro.contrib.stochastic_support.sdvi as _sdvi  # noqa: E402

if SWAP:
    import expectax.infer

    _NEW = expectax.infer.TraceGraph_ELBO
    assert issubclass(_NEW, _ORIGINAL), "expectax's class must subclass numpyro's"
    numpyro.infer.TraceGraph_ELBO = _NEW
    numpyro.infer.elbo.TraceGraph_ELBO = _NEW
else:
    _NEW = _ORIGINAL

_FUNCS = set(filter(None, os.environ.get("EXPECTAX_BODY_FUNCS", "").split(",")))
_PARAM_ONLY = set(filter(None, os.environ.get("EXPECTAX_PARAM_FUNCS", "").split(",")))


def _is_tracegraph(value):
    return value is _NEW or value is _ORIGINAL or isinstance(value, _ORIGINAL)


def pytest_report_header(config):
    return [
        f"TraceGraph_ELBO swap: {'ON' if SWAP else 'OFF (baseline)'}; "
        f"numpyro.infer.TraceGraph_ELBO = {_NEW.__module__}.{_NEW.__qualname__}; "
        f"SDVI VALID_ELBOS = {[c.__module__ + '.' + c.__name__ for c in _sdvi.VALID_ELBOS]}"
    ]


def pytest_collection_modifyitems(session, config, items):
    keep, drop = [], []
    for item in items:
        name = getattr(item, "originalname", None) or item.name
        key = f"{item.path.name}::{name}"
        if key in _FUNCS:
            keep.append(item)
        elif key in _PARAM_ONLY:
            params = getattr(getattr(item, "callspec", None), "params", {})
            (keep if any(_is_tracegraph(v) for v in params.values()) else drop).append(item)
        else:
            drop.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep


_CURRENT = {"test": None}


def _watchdog(limit_bytes):
    """End this (xdist worker) process when its resident memory passes the limit: a test that
    would otherwise drive a shared machine into the kernel's OOM killer fails instead."""
    import sys
    import threading
    import time

    def poll():
        while True:
            time.sleep(0.1)
            try:
                with open("/proc/self/statm") as f:
                    rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            except OSError:
                return
            if rss > limit_bytes:
                msg = (
                    f"MEMORY LIMIT: passed {limit_bytes / 2**30:.1f} GiB resident "
                    f"({rss / 2**30:.1f} GiB); the worker was ended"
                )
                sys.stderr.write(f"\n{_CURRENT['test']}: {msg}\n")
                sys.stderr.flush()
                log = os.environ.get("EXPECTAX_MEM_LOG")
                if log:
                    with open(log, "a") as f:
                        f.write(f"{_CURRENT['test']}\t{msg}\n")
                os._exit(99)

    threading.Thread(target=poll, daemon=True).start()


_LIMIT = float(os.environ.get("EXPECTAX_MEM_LIMIT_GB", "0") or 0)
if _LIMIT > 0 and os.environ.get("PYTEST_XDIST_WORKER"):
    _watchdog(int(_LIMIT * 2**30))


def pytest_runtest_setup(item):
    _CURRENT["test"] = item.nodeid
    # the swap must still be in place when each test runs
    assert numpyro.infer.TraceGraph_ELBO is _NEW
    assert numpyro.infer.elbo.TraceGraph_ELBO is _NEW
'''


def installed_numpyro() -> tuple[str, Path]:
    import numpyro

    return numpyro.__version__, Path(numpyro.__file__).parent


def has_tests(root: Path) -> bool:
    return (root / "test" / "infer" / "test_svi.py").is_file()


def obtain_source(version: str, cache: Path) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    # 1. the sdist
    sdist_dir = cache / f"sdist-{version}"
    if not sdist_dir.exists():
        dl = cache / "dl"
        dl.mkdir(exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"numpyro=={version}",
            "-d",
            str(dl),
        ]
        print("$", " ".join(cmd), flush=True)
        r = subprocess.run(cmd, capture_output=True, text=True)
        tars = sorted(dl.glob(f"numpyro-{version}.tar.gz"))
        if r.returncode == 0 and tars:
            with tarfile.open(tars[0]) as tf:
                tf.extractall(sdist_dir, filter="data")
        else:
            print("  pip download failed:", (r.stderr or r.stdout).strip().splitlines()[-1:])
    root = sdist_dir / f"numpyro-{version}"
    if has_tests(root):
        print(f"using the sdist's tests: {root}")
        return root
    if root.exists():
        print(
            f"the sdist of numpyro {version} ships "
            f"{sorted(p.name for p in (root / 'test').iterdir())}"
            " but not test/infer or test/contrib; trying a git checkout of the tag"
        )
    # 2. a shallow git clone of the release tag
    for tag in (version, f"v{version}"):
        dest = cache / f"git-{tag}"
        if has_tests(dest):
            return dest
        shutil.rmtree(dest, ignore_errors=True)
        cmd = ["git", "clone", "--quiet", "--depth", "1", "--branch", tag, GIT_URL, str(dest)]
        print("$", " ".join(cmd), flush=True)
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode == 0 and has_tests(dest):
            return dest
        print("  failed:", (r.stderr or r.stdout).strip().splitlines()[-1:])
    sys.exit(
        f"could not obtain numpyro {version}'s tests (the sdist lacks test/infer, and git clone "
        f"failed). Check out the tag yourself and pass it:\n"
        f"  git clone --depth 1 --branch {version} {GIT_URL} /tmp/numpyro-src\n"
        f"  {sys.argv[0]} --source /tmp/numpyro-src"
    )


def compare_with_installed(src: Path, version: str, pkg: Path) -> list[str]:
    notes = []
    vfile = src / "numpyro" / "version.py"
    if vfile.is_file():
        m = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", vfile.read_text())
        src_version = m.group(1) if m else "?"
        same = src_version == version
        notes.append(
            f"source numpyro/version.py: {src_version} (installed {version})"
            + ("" if same else "  <-- NOT the installed version")
        )
    for rel in ("infer/elbo.py", "contrib/stochastic_support/sdvi.py"):
        a, b = src / "numpyro" / rel, pkg / rel
        if a.is_file():
            same = filecmp.cmp(a, b, shallow=False)
            notes.append(f"source numpyro/{rel} {'==' if same else '!='} installed")
    return notes


def select(src: Path) -> tuple[list[str], set[str], set[str]]:
    """Test files and functions naming TraceGraph: in the body (all their parametrisations
    run) or only in decorators (only TraceGraph parametrisations run)."""
    files, body, param_only = [], set(), set()
    for path in sorted((src / "test").rglob("test_*.py")):
        text = path.read_text()
        if "TraceGraph" not in text:
            continue
        tree = ast.parse(text)
        found = False
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if not node.name.startswith("test"):
                continue
            in_body = any("TraceGraph" in ast.unparse(s) for s in node.body)
            in_deco = any("TraceGraph" in ast.unparse(d) for d in node.decorator_list)
            key = f"{path.name}::{node.name}"
            if in_body:
                body.add(key)
                found = True
            elif in_deco:
                param_only.add(key)
                found = True
        if found:
            files.append(str(path.relative_to(src)))
    return files, body, param_only


def parse_junit(path: Path) -> list[dict]:
    rows = []
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        status, msg = "PASS", ""
        for tag, st in (("failure", "FAIL"), ("error", "ERROR"), ("skipped", "SKIP")):
            el = case.find(tag)
            if el is not None:
                status = st
                if tag == "skipped" and el.get("type") == "pytest.xfail":
                    status = "XFAIL"
                msg = (el.get("message") or el.text or "").strip()
                break
        first = next((ln.strip() for ln in msg.splitlines() if ln.strip()), "")
        rows.append(
            {
                "test": name,
                "status": status,
                "seconds": float(case.get("time", 0)),
                "message": first[:300],
                "full": msg,
            }
        )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, help="a numpyro source tree with test/ (a checkout)")
    ap.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "expectax-numpyro-tests"
    )
    ap.add_argument("--baseline", action="store_true", help="no swap: numpyro's own class")
    ap.add_argument("--list", action="store_true", help="print the selection and stop")
    ap.add_argument("--json", type=Path, help="write the per-test results here")
    ap.add_argument(
        "--mem-limit-gb",
        type=float,
        default=6.0,
        help="end a test whose process passes this resident memory (0: no limit); "
        "the tests run in one pytest-xdist worker, restarted after such a crash",
    )
    ap.add_argument("pytest_args", nargs="*", help="after --: extra arguments for pytest")
    args = ap.parse_args()

    version, pkg = installed_numpyro()
    print(f"installed numpyro {version} ({pkg})")
    src = args.source.resolve() if args.source else obtain_source(version, args.cache)
    if not has_tests(src):
        sys.exit(f"{src} has no test/infer/test_svi.py: not a numpyro source tree with tests")
    print(f"numpyro tests from: {src}")
    head = subprocess.run(
        ["git", "-C", str(src), "log", "-1", "--format=%H %ad %s", "--date=short"],
        capture_output=True,
        text=True,
    )
    if head.returncode == 0 and head.stdout.strip():
        print(f"  git: {head.stdout.strip()}")
    for note in compare_with_installed(src, version, pkg):
        print("  " + note)

    files, body, param_only = select(src)
    print(f"selected files: {files}")
    print(f"  all parametrisations: {sorted(body)}")
    print(f"  TraceGraph parametrisations only: {sorted(param_only)}")
    if args.list:
        return 0

    with tempfile.TemporaryDirectory(prefix="expectax-swap-") as tmp:
        tmp = Path(tmp)
        (tmp / "expectax_swap_plugin.py").write_text(PLUGIN)
        junit = tmp / "junit.xml"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(tmp), str(REPO / "src"), env.get("PYTHONPATH", "")]
        )
        env["EXPECTAX_SWAP"] = "0" if args.baseline else "1"
        env["EXPECTAX_BODY_FUNCS"] = ",".join(sorted(body))
        env["EXPECTAX_PARAM_FUNCS"] = ",".join(sorted(param_only))
        env.setdefault("JAX_PLATFORMS", "cpu")
        env["EXPECTAX_MEM_LIMIT_GB"] = str(args.mem_limit_gb)
        env["EXPECTAX_MEM_LOG"] = str(tmp / "memory.log")
        try:
            import xdist  # noqa: F401

            # one worker process: a test that crashes it (out of memory) is reported as failed
            # and the worker restarts for the others
            workers = ["-n", "1", "--max-worker-restart", "100"]
        except ImportError:
            workers = []
            print(
                "pytest-xdist is not installed: one process, no memory limit (a test that runs "
                "out of memory ends the whole run)"
            )
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "expectax_swap_plugin",
            "-p",
            "no:cacheprovider",
            "--color=no",
            "-rfE",
            "--tb=short",
            f"--junitxml={junit}",
            "-o",
            "junit_family=xunit1",
            *workers,
            *files,
            *args.pytest_args,
        ]
        print("$ (cd", src, "&&", " ".join(cmd), ")", flush=True)
        proc = subprocess.run(cmd, cwd=src, env=env)
        if not junit.exists():
            print("pytest wrote no report (exit status", proc.returncode, ")")
            return proc.returncode or 1
        rows = parse_junit(junit)
        mem = tmp / "memory.log"
        if mem.exists():
            for line in mem.read_text().splitlines():
                nodeid, msg = line.split("\t", 1)
                for r in rows:
                    if r["test"] == nodeid or nodeid.endswith(r["test"]):
                        r["status"], r["message"] = "FAIL", msg

    mode = "BASELINE (numpyro's own class)" if args.baseline else "SWAPPED (expectax's class)"
    print(f"\n=== {mode}: numpyro {version} TraceGraph_ELBO tests ===")
    for r in rows:
        line = f"{r['status']:6s} {r['seconds']:7.1f}s  {r['test']}"
        if r["status"] in ("FAIL", "ERROR"):
            line += f"\n         {r['message']}"
        print(line)
    counts = {
        s: sum(r["status"] == s for r in rows) for s in ("PASS", "FAIL", "ERROR", "SKIP", "XFAIL")
    }
    print(
        "counts:",
        ", ".join(f"{k.lower()} {v}" for k, v in counts.items() if v or k in ("PASS", "FAIL")),
        f"(of {len(rows)})",
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "numpyro": version,
                    "source": str(src),
                    "mode": mode,
                    "counts": counts,
                    "tests": rows,
                },
                indent=1,
            )
        )
    return 0 if counts["FAIL"] == counts["ERROR"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
