"""bench.reproduce's protocol pieces (split, plan, lr choice, keys, merge, skip), bench/stage.py's parts, and
the GPU script end to end in --smoke on the CPU."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import reproduce, stage
from bench.reproduce import Job

ROOT = Path(__file__).resolve().parents[1]


def args(*argv):
    return reproduce.parse(["--out", "unused", *argv])


def test_the_split_is_disjoint_halves_and_a_fold_depends_only_on_task_and_seed():
    train, fold, heldout = reproduce.split_task("piqa", 1838, seed=0, fold=0.1)
    assert len(heldout) == 919 and len(train) + len(fold) == 919 and len(fold) == 92
    assert not (set(train) | set(fold)) & set(heldout)
    assert reproduce.split_task("piqa", 1838, 0, 0.1) == (train, fold, heldout)
    assert reproduce.split_task("piqa", 1838, 1, 0.1)[2] != heldout
    assert reproduce.split_task("boolq", 1838, 0, 0.1)[2] != heldout  # per task


def test_the_plan_runs_the_most_informative_contrasts_first():
    jobs = reproduce.plan(args("--seeds", "4"))
    assert jobs[0] == Job("base", "base", 0, None)
    main = [(j.arm, j.seed) for j in jobs if j.kind == "main"]
    assert main[:4] == [("owlore", 1), ("owlore", 2), ("full", 1), ("full", 2)]
    assert main[4:8] == [("owlore-fullrank", 1), ("owlore-fullrank", 2), ("lisa-equal", 1), ("lisa-equal", 2)]
    assert [s for _, s in main[16:]] == [3, 4] * 8  # more seeds only after every arm has two
    first_main = {arm: next(i for i, j in enumerate(jobs) if j.kind == "main" and j.arm == arm) for arm, _ in main}
    for i, job in enumerate(jobs):  # every lr of an arm's grid is tried before the arm's first main run
        if job.kind == "tune":
            assert i < first_main[job.arm]
    assert sum(j.kind == "tune" for j in jobs) == 3 * len(reproduce.ARMS)
    assert not any(j.kind == "tune" for j in reproduce.plan(args("--lr-factors", "1")))


def test_the_lr_is_the_fold_nll_minimum_once_the_whole_grid_is_in():
    grid = reproduce.lr_grid("full", [0.3, 1.0, 3.0])
    assert grid == [6e-06, 2e-05, 6e-05]
    tune = lambda lr, nll: dict(kind="tune", arm="full", lr=lr, rows=dict(nll=[nll, nll], ntok=[1, 1]))  # noqa: E731
    results = [tune(6e-06, 2.0), tune(2e-05, 1.5)]
    assert reproduce.chosen_lr("full", results, [0.3, 1.0, 3.0]) is None
    results.append(tune(6e-05, float("nan")))
    assert reproduce.chosen_lr("full", results, [0.3, 1.0, 3.0]) == 2e-05  # a diverged lr never wins
    assert reproduce.chosen_lr("full", [], [1.0]) == 2e-05  # one factor: the recipe's lr, no tuning


def test_keys_separate_protocols_and_results_merge_once_per_key(tmp_path):
    job, version = Job("main", "owlore", 1, 3e-4), reproduce.code_version()
    key = reproduce.job_key(job, args(), version)
    assert key != reproduce.job_key(job, args("--steps", "7"), version)
    assert key != reproduce.job_key(Job("main", "owlore", 2, 3e-4), args(), version)
    assert key != reproduce.job_key(job, args(), "other-code")
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(json.dumps({"key": "k1", "v": 1}) + "\n" + json.dumps({"key": "k2", "v": 2}) + "\n{\"key\": \"k3\", ")
    b.write_text(json.dumps({"key": "k2", "v": 3}) + "\n" + json.dumps({"key": "k4", "v": 4}) + "\n")
    merged = reproduce.read_results([a, b, tmp_path / "missing.jsonl"])
    assert sorted((r["key"], r["v"]) for r in merged) == [("k1", 1), ("k2", 2), ("k4", 4)]  # torn line skipped


def test_finished_runs_are_skipped(tmp_path, monkeypatch):
    a = args("--lr-factors", "1", "--seeds", "1", "--arms", "owlore,full")
    version = reproduce.code_version()
    jobs = [Job(j.kind, j.arm, j.seed, j.lr if j.kind != "main" else reproduce.recipe_lr(j.arm)) for j in reproduce.plan(a)]
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps({"key": reproduce.job_key(j, a, version)}) + "\n" for j in jobs))
    started = []
    monkeypatch.setattr(reproduce, "start", lambda *x: started.append(x))
    reproduce.schedule(a, {}, results, tmp_path)
    assert started == []


def test_stage_parts_join_to_the_cache_and_a_corrupt_part_is_named(tmp_path):
    cache = tmp_path / "cache"
    (cache / "models").mkdir(parents=True)
    (cache / "models" / "m.gguf").write_bytes(np.random.default_rng(0).bytes(1_000_000))  # incompressible
    (cache / "wheels").mkdir()
    (cache / "wheels" / "skipped.whl").write_bytes(b"not carried")
    manifest = stage.pack(cache, tmp_path / "parts", part_bytes=300_000, wheels=())
    assert len(manifest["parts"]) == 4 and all(p["bytes"] <= 300_000 for p in manifest["parts"])
    (tmp_path / "parts" / "part-01").write_bytes(b"x" + (tmp_path / "parts" / "part-01").read_bytes()[1:])
    (tmp_path / "parts" / "part-03").unlink()
    assert stage.missing(tmp_path / "parts", manifest) == ["part-01", "part-03"]
    with pytest.raises(SystemExit, match="part-01, part-03"):
        stage.join(tmp_path / "parts", tmp_path / "there", tmp_path / "site")
    stage.pack(cache, tmp_path / "parts", part_bytes=300_000, wheels=())
    stage.join(tmp_path / "parts", tmp_path / "there", tmp_path / "site")
    assert (tmp_path / "there" / "models" / "m.gguf").read_bytes() == (cache / "models" / "m.gguf").read_bytes()
    assert not (tmp_path / "there" / "wheels").exists()


@pytest.mark.slow
def test_the_gpu_script_runs_in_smoke_on_the_cpu(tmp_path):
    out = tmp_path / "repro"
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_reproduce.sh"), "--smoke", str(out)],
                          capture_output=True, text=True, timeout=900, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin",
                                                                            "HOME": str(Path.home())})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted((r["kind"], r["arm"], r["seed"]) for r in results) == [
        ("base", "base", 0), ("main", "full", 1), ("main", "full", 2), ("main", "owlore", 1), ("main", "owlore", 2)]
    assert all(len(r["rows"]["acc"]) == len(r["doc_ids"]) == 12 for r in results)
    report = (out / "report.md").read_text()
    assert "| owlore - full | 2 |" in report and "Rules, fixed before the runs" in report
    assert (out / "forest.png").read_bytes()[:4] == b"\x89PNG"
    rerun = subprocess.run([sys.executable, "-m", "bench.reproduce", "--smoke", "--out", str(out)], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and "done" not in rerun.stdout  # every run already finished: nothing runs again
