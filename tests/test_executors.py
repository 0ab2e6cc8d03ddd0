"""The executors: serial, local (worker processes) and Ray give the same results bit for bit at the same
torch thread count; a hanging step times out, a killed worker is retried, and the grid goes on."""

from pathlib import Path

import pandas as pd
import pytest

from conftest import tiny_grid
from robust_ad_bench.benchmark.execution.executors import SerialExecutor, make_executor
from robust_ad_bench.benchmark.execution.pool import LocalExecutor
from robust_ad_bench.benchmark.execution.runner import Runner
from robust_ad_bench.benchmark.grid.config import make_grid_config
from robust_ad_bench.benchmark.grid.execution import ExecutionConfig
from robust_ad_bench.benchmark.results.store import Store
from robust_ad_bench.core.errors import BenchError
from robust_ad_bench.core.registry import load_plugin_file

FAULTY = Path(__file__).parent / "plugins" / "faulty_methods.py"


def stored(folder):
    """Every job's figures and scores, every check and certificate, in a comparable order."""
    with Store(folder) as store:
        results = store.results().sort_values("key").reset_index(drop=True)
        scores = {key: store.scores(key)[1].tobytes() for key in results["key"]}
        checks = store.checks().sort_values(["check_key", "attack", "name"]).reset_index(drop=True)
        certified = store.certified().sort_values(["cert_key", "sigma", "radius"]).reset_index(drop=True)
    return results, scores, checks, certified


def assert_same_results(a, b):
    ra, sa, ca, za = stored(a)
    rb, sb, cb, zb = stored(b)
    assert len(ra) and (ra["status"] == "ok").all() and (rb["status"] == "ok").all()
    figures = ["key", "auroc", "aupr", "fpr95", "auroc_ci_low", "auroc_ci_high", "attack_detail"]
    pd.testing.assert_frame_equal(ra[figures], rb[figures], check_exact=True)
    assert sa == sb  # every test score, bit for bit
    pd.testing.assert_frame_equal(ca, cb, check_exact=True)
    pd.testing.assert_frame_equal(za, zb, check_exact=True)


def equality_grid(out):
    # a deterministic detector, a trained one, a stochastic certifiable one (EOT, certification, a worst
    # case re-scored from kept adversarial images), checks on; fgsm and pgd: a per-image worst case each
    cfg = tiny_grid(out, methods="knn,ae,advrad", attacks="clean,fgsm,pgd", classes="0")
    cfg.checks.square_queries = 20
    cfg.certify.n0, cfg.certify.n = 10, 20
    return cfg


def test_local_workers_give_serial_results_bit_for_bit(tmp_path, one_thread):
    """Serial with one torch thread vs two worker processes with one thread each: identical stores."""
    serial = Runner(equality_grid(tmp_path / "serial"), executor=SerialExecutor(threads=1)).run()
    local = Runner(equality_grid(tmp_path / "local"), executor=LocalExecutor(workers=2, threads=1)).run()
    assert (serial.computed, serial.trained, serial.worst, serial.checked, serial.certified) == (9, 3, 3, 3, 1)
    assert (local.computed, local.trained, local.worst, local.checked, local.certified) == (9, 3, 3, 3, 1)
    assert serial.failed == local.failed == []
    assert_same_results(tmp_path / "serial", tmp_path / "local")
    # every model was trained once and cached by the workers; a rerun computes nothing
    assert len(list((tmp_path / "local" / "models").glob("*.pt"))) == 3
    again = Runner(equality_grid(tmp_path / "local"), executor=LocalExecutor(workers=2, threads=1)).run()
    assert (again.computed, again.skipped, again.trained, again.worst) == (0, 9, 0, 0)


def test_ray_gives_serial_results_bit_for_bit(tmp_path, one_thread):
    def grid(out):
        cfg = tiny_grid(out, classes="0", execution={"executor": "ray", "workers": 2, "threads": 1})
        cfg.checks.square_queries = 20
        return cfg

    Runner(grid(tmp_path / "serial"), executor=SerialExecutor(threads=1)).run()
    summary = Runner(grid(tmp_path / "ray")).run()
    assert (summary.computed, summary.trained, summary.checked, summary.failed) == (4, 2, 2, [])
    assert_same_results(tmp_path / "serial", tmp_path / "ray")
    # the driver wrote the shipped models to the cache; a rerun trains nothing
    assert len(list((tmp_path / "ray" / "models").glob("*.pt"))) == 2
    again = Runner(grid(tmp_path / "ray")).run()
    assert (again.computed, again.trained) == (0, 0)


def faulty_grid(out, methods, **execution):
    load_plugin_file(FAULTY)
    cfg = make_grid_config(methods=methods, datasets="digits", classes="0", attacks="clean,pgd", eps="32/255",
                           out=str(out), device="cpu", checks=False, execution=execution)
    return cfg


@pytest.mark.parametrize("executor", ["local", "serial"])
def test_hanging_steps_time_out_and_the_grid_goes_on(tmp_path, executor):
    """A training and an attack that never end are recorded failed after the timeout; other jobs finish.
    The serial executor runs its steps in one child process when a timeout is set."""
    cfg = faulty_grid(tmp_path, "hang-fit,hang-attacked,mean-test", executor=executor, job_timeout=5, retries=1)
    summary = Runner(cfg).run()
    assert summary.computed == 3  # mean-test clean and pgd, hang-attacked clean
    with Store(tmp_path) as store:
        results = store.results().set_index(["method", "attack"])
    assert results.loc[("hang-attacked", "clean"), "status"] == "ok"
    assert results.loc[("hang-attacked", "pgd"), "error"] == "timed out after 5 s"
    assert (results.loc["hang-fit", "error"] == "training timed out after 5 s").all()
    assert (results.loc["mean-test", "status"] == "ok").all()
    assert len(summary.failed) == 3


def test_a_killed_worker_is_retried_then_recorded_failed(tmp_path):
    """A worker killed by SIGKILL: its step runs again (retries 1) and succeeds; one that dies every time
    is recorded failed with the signal, and the grid goes on."""
    load_plugin_file(FAULTY)
    cfg = faulty_grid(tmp_path, "die-attacked,mean-test", executor="local", workers=2, retries=1)
    cfg.method_params = {"die-attacked": {"marker": str(tmp_path / "died-once")}}
    summary = Runner(cfg).run()
    assert (tmp_path / "died-once").exists() and summary.computed == 4 and summary.failed == []
    always = faulty_grid(tmp_path / "always", "die-attacked,mean-test", executor="local", workers=2, retries=1)
    summary = Runner(always).run()
    assert summary.computed == 3
    [(job, message)] = summary.failed
    assert job.method == "die-attacked" and job.attack == "pgd"
    assert message == "worker died (killed by SIGKILL); tried 2 time(s)"


def test_execution_options_are_validated(tmp_path):
    with pytest.raises(BenchError, match="unknown executor 'threads'.*local, ray, serial"):
        make_grid_config(out=str(tmp_path), execution={"executor": "threads"})
    with pytest.raises(BenchError, match="job_timeout must be a number of seconds > 0, got -1"):
        make_grid_config(out=str(tmp_path), execution={"job_timeout": -1})
    with pytest.raises(BenchError, match="unknown resource of method 'ae' 'memory'"):
        ExecutionConfig(resources={"ae": {"memory": 2}})
    with pytest.raises(BenchError, match="unknown parameter of execution 'worker'.*did you mean 'workers'"):
        make_grid_config(out=str(tmp_path), execution={"worker": 2})
    # threads: the cores split between local workers; Ray: the job's CPUs
    assert ExecutionConfig(executor="local", workers=1).worker_threads() >= 1
    assert ExecutionConfig(executor="ray", cpus_per_job=2).worker_threads() == 2
    assert ExecutionConfig(executor="ray", resources={"advrad": {"cpus": 3}}).worker_threads("advrad") == 3
    assert isinstance(make_executor(ExecutionConfig()), SerialExecutor)
    assert isinstance(make_executor(ExecutionConfig(job_timeout=5)), LocalExecutor)


def test_ray_missing_is_a_clear_error(monkeypatch):
    import sys

    from robust_ad_bench.benchmark.execution.ray_executor import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    with pytest.raises(BenchError, match=r'pip install -e "\.\[ray\]"'):
        import_ray()


@pytest.mark.parametrize(("cores", "expected", "threads"), [(2, "local", 1), (4, "local", 1), (1, "serial", 1)])
def test_run_uses_a_worker_per_core_by_default(monkeypatch, cores, expected, threads):
    """``run`` without ``--executor`` (and no executor in its config) starts one worker per core, each with its
    share of the threads; on one core it stays in this process. A flag or the config's choice wins."""
    from robust_ad_bench.benchmark import cli
    from robust_ad_bench.benchmark.grid import execution

    monkeypatch.setattr(cli, "default_executor", execution.default_executor)  # undo the suite's serial default
    monkeypatch.setattr(execution, "cpu_count", lambda: cores)
    args = cli.build_parser().parse_args(["run", "--methods", "knn"])
    cfg = make_grid_config(None, None, **cli.grid_flags(args))
    assert cfg.execution.executor == expected
    executor = make_executor(cfg.execution)
    assert isinstance(executor, LocalExecutor if expected == "local" else SerialExecutor)
    if expected == "local":
        assert (cfg.execution.local_workers(), cfg.execution.worker_threads()) == (cores, threads)
    explicit = cli.build_parser().parse_args(["run", "--executor", "serial"])
    assert make_grid_config(None, None, **cli.grid_flags(explicit)).execution.executor == "serial"


def test_a_config_naming_its_executor_keeps_it(monkeypatch, tmp_path):
    from robust_ad_bench.benchmark import cli
    from robust_ad_bench.benchmark.grid import execution

    monkeypatch.setattr(cli, "default_executor", execution.default_executor)
    monkeypatch.setattr(execution, "cpu_count", lambda: 2)
    config = tmp_path / "grid.yaml"
    config.write_text("execution: {executor: serial}\n")
    args = cli.build_parser().parse_args(["run", "--config", str(config)])
    assert make_grid_config(args.config, None, **cli.grid_flags(args)).execution.executor == "serial"
