"""The leaderboard of a run in progress: a model whose checks are not stored yet shows pending (``…``) while a
live run holds it (or may still check it), and ``!?`` (unchecked) once no run is live or when a job failed;
reading it never writes the store."""

from __future__ import annotations

import os
import socket
import time

from robust_ad_bench.benchmark.cli import main
from robust_ad_bench.benchmark.execution.claims import Claims, live_claims
from robust_ad_bench.benchmark.results import leaderboard
from robust_ad_bench.benchmark.results.store import STORE_FILE, JobResult, Store, open_existing


def result(method, attack, norm="linf", eps=8 / 255, status="ok"):
    train_key = f"tk-{method}"
    return JobResult(key=f"{method}-{attack}", train_key=train_key, status=status, method=method, dataset="d",
                     normal_class="0", seed=0, attack=attack, norm=norm, eps=eps if norm != "none" else 0.0,
                     config={}, metrics={"auroc": 0.7} if status == "ok" else {})


def fill(folder):
    with Store(folder) as store:
        for method in ("a", "b"):
            store.put(result(method, "clean", "none"))
            store.put(result(method, "pgd"))
        store.put(result("b", "fgsm", status="failed"))


def cells(folder):
    with open_existing(folder) as store:
        results, checks, live = store.results(), store.checks(), live_claims(store)
    table = leaderboard.wide(results, checks=checks, live=live)
    return table, live


def test_pending_while_a_live_run_holds_the_model_unchecked_after(tmp_path):
    fill(tmp_path)
    with Claims(tmp_path / STORE_FILE) as claims:  # a live run (this process) holds model a
        claims.claim("tk-a", "a d/0 seed 0")
        table, live = cells(tmp_path)
        assert live == {"tk-a"}
        assert table.loc["a", "d pgd 8/255"] == "0.700 …"
        assert table.loc["b", "d pgd 8/255"] == "0.700 !?"  # a job failed: its checks will not run
        legend = leaderboard.flag_legend(table)
        assert legend[-1] == leaderboard.PENDING_LEGEND and any(line.startswith("!?") for line in legend)
    table, live = cells(tmp_path)  # the run ended: its claims are gone
    assert live == set() and table.loc["a", "d pgd 8/255"] == "0.700 !?"
    assert leaderboard.PENDING_LEGEND not in leaderboard.flag_legend(table)


def test_a_live_run_makes_other_unchecked_models_pending_but_not_failed_ones(tmp_path):
    fill(tmp_path)
    with Claims(tmp_path / STORE_FILE) as claims:  # the live run holds another model: it may still check a
        claims.claim("tk-other")
        table, _ = cells(tmp_path)
        assert table.loc["a", "d pgd 8/255"].endswith("…") and table.loc["b", "d pgd 8/255"].endswith("!?")


def test_a_stale_claim_is_not_live(tmp_path):
    fill(tmp_path)
    with Store(tmp_path) as store:  # a claim whose lease ran out, and one of a process that is gone
        with Claims(store.path):
            pass
        store.conn.execute("INSERT INTO claims VALUES ('tk-a', 'x', ?, ?, NULL, ?, ?, '')",
                           (socket.gethostname(), os.getpid(), time.time(), time.time() - 1))
        store.conn.execute("INSERT INTO claims VALUES ('tk-b', 'y', ?, 2147480000, NULL, ?, ?, '')",
                           (socket.gethostname(), time.time(), time.time() + 600))
        store.conn.commit()
    table, live = cells(tmp_path)
    assert live == set() and table.loc["a", "d pgd 8/255"].endswith("!?")


def test_the_leaderboard_command_shows_pending_without_writing_the_store(tmp_path, capsys):
    fill(tmp_path)
    with Claims(tmp_path / STORE_FILE) as claims:
        claims.claim("tk-a")
        before = (tmp_path / STORE_FILE).read_bytes()
        assert main(["leaderboard", "--out", str(tmp_path)]) == 0
        assert (tmp_path / STORE_FILE).read_bytes() == before
    out = capsys.readouterr().out
    assert "…" in out and leaderboard.PENDING_LEGEND in out.replace("\n", " ")
