"""Run diffusers' own fast pipeline test suites on the TGATE classes, gate off and on, against stock.

    python tests/diffusers_suites/run.py /path/to/diffusers            # a checkout, or its git dir (a bare mirror)
    python tests/diffusers_suites/run.py /path/to/diffusers.git --rev <commit> --suites stable_diffusion,pixart_alpha

The tests are not in this repository: the script copies ``tests/`` of the diffusers checkout (``git archive`` of
``--rev`` for a git dir, default ``HEAD``; pick the commit closest to the installed diffusers) into ``--workdir``
(default ``/tmp/dsuites``) and runs each suite (a folder of ``tests/pipelines``) three ways, in fresh pytest
processes (``-p no:cacheprovider -q -n 0``, slow and nightly tests deselected):

- ``stock``: diffusers' classes (the baseline);
- ``off``: each test class's ``pipeline_class`` swapped for its TGATE class, ``gate_step=None``;
- ``on``: the same, with the default ``gate_step`` set to ``--gate`` (1: the fast tests run 2 steps).

The hub's tiny tokenizers, configs and BERT encoder that the fast tests load are built offline
(``tgate_plugin.py``); a test that needs any other hub file is skipped as ``needs hub``. A **regression** is a
test that passes stock and fails on the TGATE classes; with the gate on, tests that compare against stock
numbers (hard-coded slices, ``gate_step``-free references) are expected to differ: the report lists every
such failure with its message, to be read. ``--testing-utils FILE`` overlays ``tests/testing_utils.py`` (e.g.
the one in the installed version's sdist, ``pip download diffusers==X --no-deps --no-binary :all:``).

Needs diffusers' test requirements ``parameterized`` and ``requests-mock`` (``pip install parameterized
requests-mock``). A full run (9 suites x 3 modes, ``--jobs 2``) takes about 25 minutes on 2 CPU cores.

Outputs: ``<workdir>/results/<suite>-<mode>.xml`` (JUnit) and ``.log``, ``<workdir>/summary.json`` and
``<workdir>/report.md`` (the table and the failures), also printed. Exit status 1 if a test regressed gate off.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ElementTree
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SUITES = ("stable_diffusion", "stable_diffusion_2", "stable_diffusion_xl", "pixart_alpha", "pixart_sigma", "wan",
          "ltx", "sana", "hunyuandit")
MODES = ("stock", "off", "on")


def _git(git_dir: Path, *args: str, binary: bool = False):
    result = subprocess.run(["git", f"--git-dir={git_dir}", *args], check=True, capture_output=True)
    return result.stdout if binary else result.stdout.decode().strip()


def _git_dir(source: Path) -> Path | None:
    for candidate in (source / ".git", source):
        try:
            _git(candidate, "rev-parse", "--git-dir")
            return candidate
        except (subprocess.CalledProcessError, FileNotFoundError):
            continue
    return None


def copy_tests(source: Path, rev: str, workdir: Path, testing_utils: Path | None) -> str:
    """Put diffusers' ``tests/`` at ``workdir/tests``; return what was copied (the commit, or the folder)."""
    target = workdir / "tests"
    if target.exists():
        shutil.rmtree(target)
    workdir.mkdir(parents=True, exist_ok=True)
    git_dir = _git_dir(source)
    if (source / "tests").is_dir() and rev == "worktree":
        shutil.copytree(source / "tests", target)
        copied = f"{source}/tests (work tree)"
    elif git_dir is not None:
        commit = _git(git_dir, "rev-parse", f"{rev}^{{commit}}")
        archive = _git(git_dir, "archive", "--format=tar", commit, "tests", binary=True)
        with tarfile.open(fileobj=BytesIO(archive)) as tar:
            tar.extractall(workdir, filter="data")
        copied = f"{commit} ({_git(git_dir, 'log', '-1', '--format=%cs %s', commit)})"
    else:
        raise SystemExit(f"{source} is neither a diffusers git dir nor a checkout with tests/")
    if testing_utils is not None:
        shutil.copy(testing_utils, target / "testing_utils.py")
        copied += f", tests/testing_utils.py from {testing_utils}"
    # the suites' rootdir: no configuration from folders above (this repository's pyproject.toml)
    (workdir / "pytest.ini").write_text("[pytest]\naddopts =\n")
    return copied


def run_suite(workdir: Path, suite: str, mode: str, gate: int, extra: list[str]) -> dict:
    results = workdir / "results"
    results.mkdir(exist_ok=True)
    xml, log = results / f"{suite}-{mode}.xml", results / f"{suite}-{mode}.log"
    env = dict(os.environ, TGATE_SUITES_MODE=mode, TGATE_SUITES_GATE=str(gate), HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(HERE), str(ROOT)]))
    command = [sys.executable, "-m", "pytest", f"tests/pipelines/{suite}", "-p", "tgate_plugin", "-p",
               "no:cacheprovider", "-q", "-n", "0", "-c", "pytest.ini", "--rootdir", str(workdir),
               "--ignore-glob=*onnx*", f"--junitxml={xml}", "-W", "ignore::DeprecationWarning", *extra]
    start = time.time()
    with open(log, "w") as out:
        code = subprocess.call(command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
    outcomes = parse_junit(xml) if xml.exists() else {}
    print(f"  {suite:20s} {mode:5s} exit {code}  {len(outcomes)} tests  {time.time() - start:.0f} s", flush=True)
    return {"exit": code, "seconds": round(time.time() - start), "tests": outcomes}


def parse_junit(xml: Path) -> dict:
    """test id -> {"outcome": passed|failed|skipped, "message": ...}."""
    outcomes = {}
    for case in ElementTree.parse(xml).getroot().iter("testcase"):
        test = f"{case.get('classname')}::{case.get('name')}"
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome, message = "failed", (child.get("message") or "") + "\n" + (child.text or "")
                break
            if child.tag == "skipped":
                outcome, message = "skipped", child.get("message") or ""
        outcomes[test] = {"outcome": outcome, "message": message.strip()}
    return outcomes


def counts(tests: dict) -> dict:
    tally = {"passed": 0, "failed": 0, "skipped": 0, "needs_hub": 0}
    for result in tests.values():
        tally[result["outcome"]] += 1
        tally["needs_hub"] += result["outcome"] == "skipped" and "needs hub" in result["message"]
    return tally


def short(message: str, lines: int = 3) -> str:
    kept = [line for line in message.splitlines() if line.strip()]
    return " | ".join(kept[:lines])[:400]


def report(summary: dict) -> str:
    out = [f"diffusers tests: {summary['diffusers']}", f"installed diffusers {summary['installed']}, gate on: "
           f"gate_step={summary['gate']}", "",
           "| suite | stock pass/fail/skip (hub) | off pass/fail/skip | on pass/fail/skip | regressions off | "
           "on: failures of stock passes |", "|---|---|---|---|---|---|"]
    for suite, modes in summary["suites"].items():
        cells = []
        for mode in MODES:
            if mode in modes:
                tally = counts(modes[mode]["tests"])
                cells.append(f"{tally['passed']}/{tally['failed']}/{tally['skipped']} ({tally['needs_hub']})")
            else:
                cells.append("-")
        regressions = {mode: regressed(modes, mode) for mode in ("off", "on") if mode in modes and "stock" in modes}
        out.append(f"| {suite} | " + " | ".join(cells) + f" | {len(regressions.get('off', []))} | "
                   f"{len(regressions.get('on', []))} |")
    for mode in ("off", "on"):
        out += ["", f"## Stock passes that fail gate {mode}", ""]
        found = False
        for suite, modes in summary["suites"].items():
            if mode not in modes or "stock" not in modes:
                continue
            for test in regressed(modes, mode):
                found = True
                out.append(f"- `{test}`: {short(modes[mode]['tests'][test]['message'])}")
        if not found:
            out.append("none")
    out += ["", "## Stock failures (not counted: they fail before any swap)", ""]
    for suite, modes in summary["suites"].items():
        for test, result in modes.get("stock", {}).get("tests", {}).items():
            if result["outcome"] == "failed":
                out.append(f"- `{test}`: {short(result['message'], 2)}")
    return "\n".join(out) + "\n"


def regressed(modes: dict, mode: str) -> list[str]:
    stock = modes["stock"]["tests"]
    return [test for test, result in modes[mode]["tests"].items()
            if result["outcome"] == "failed" and stock.get(test, {}).get("outcome") == "passed"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("diffusers", type=Path, help="a diffusers checkout or git dir (its tests/ are copied)")
    parser.add_argument("--rev", default="HEAD", help="the commit to copy tests/ from ('worktree': a checkout's "
                        "files as they are); default HEAD")
    parser.add_argument("--suites", default=",".join(SUITES), help="folders of tests/pipelines, comma-separated "
                        f"(default: {','.join(SUITES)})")
    parser.add_argument("--modes", default=",".join(MODES), help="stock, off, on (default: all three)")
    parser.add_argument("--gate", type=int, default=1, help="gate_step of mode 'on' (default 1)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/dsuites"))
    parser.add_argument("--testing-utils", type=Path, help="a tests/testing_utils.py to use instead of the rev's")
    parser.add_argument("--jobs", type=int, default=2, help="pytest processes at a time (default 2)")
    parser.add_argument("--no-copy", action="store_true", help="reuse the tests already in --workdir")
    parser.add_argument("pytest_args", nargs="*", help="after --: more pytest arguments (e.g. -k 'not ip_adapter')")
    args = parser.parse_args(argv)

    import diffusers

    workdir = args.workdir.resolve()
    if args.no_copy and (workdir / "tests").is_dir():
        copied = f"the tests already in {workdir}"
    else:
        copied = copy_tests(args.diffusers.resolve(), args.rev, workdir, args.testing_utils)
    suites = [suite for suite in args.suites.split(",") if suite]
    modes = [mode for mode in args.modes.split(",") if mode]
    print(f"diffusers tests: {copied}\nsuites: {', '.join(suites)}; modes: {', '.join(modes)}", flush=True)
    jobs = [(suite, mode) for suite in suites for mode in modes]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        done = list(pool.map(lambda job: run_suite(workdir, *job, args.gate, args.pytest_args), jobs))
    summary = {"diffusers": copied, "installed": diffusers.__version__, "gate": args.gate, "suites": {}}
    for (suite, mode), result in zip(jobs, done):
        summary["suites"].setdefault(suite, {})[mode] = result
    (workdir / "summary.json").write_text(json.dumps(summary, indent=1))
    text = report(summary)
    (workdir / "report.md").write_text(text)
    print(text)
    off_regressions = sum(len(regressed(modes, "off")) for modes in summary["suites"].values()
                          if "off" in modes and "stock" in modes)
    return 1 if off_regressions else 0


if __name__ == "__main__":
    sys.exit(main())
