"""``convcheck fuzz --workers N --database DIR|redis://``: workers and machines share one example
database, so a failure found anywhere is replayed first everywhere.

The planted bug (tests/meta/fuzz_planted.py: the last layer dropped on export) is found by two
pytest-xdist workers, saved as its minimal case (two layers), and the next run of every worker
replays it from the database before generating anything. The Redis path runs against a real
``redis-server`` started here (Debian package ``redis-server``; skipped with the reason when absent).
"""
from __future__ import annotations

import shutil
import socket
import subprocess

import pytest

from fixtures import databases
from fixtures.commands import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, fuzz_main
from fixtures.regressions import load_regressions

PLANTED = "tests.meta.fuzz_planted:LastLayerDropped"


def fuzz(tmp_path, database: str, *extra: str) -> int:
    return fuzz_main(["--arch", "llama", "--property", "config_roundtrip", "--examples", "200", "-q",
                      "--database", database, "--regressions", str(tmp_path / "regressions"),
                      "--converter", PLANTED, *extra])


def found_by(out: str) -> dict[str, str]:
    """Each worker's way to the failure, from the summary lines ``gwK: <how> after ...``."""
    out_lines = [line.strip() for line in out.splitlines()]
    return {line.split(":")[0]: line.split(":")[1].split(" after")[0].strip()
            for line in out_lines if line.startswith("gw") and " after " in line}


def assert_found_then_replayed(tmp_path, capsys, database: str, *, workers: str = "2") -> None:
    assert fuzz(tmp_path, database, "--workers", "2") == EXIT_FAILED
    first = capsys.readouterr().out
    assert set(found_by(first)) == {"gw0", "gw1"}, first
    (case,) = load_regressions(tmp_path / "regressions")  # both workers saved the same minimal case
    assert case.config().num_layers == 2, first
    assert databases.size(database) > 0

    assert fuzz(tmp_path, database, "--workers", workers) == EXIT_FAILED
    second = capsys.readouterr().out
    assert set(found_by(second).values()) == {"replayed from the database"}, second
    assert f"config_roundtrip: {int(workers)} examples" in second, second  # the first example each ran
    assert len(load_regressions(tmp_path / "regressions")) == 1


def test_two_workers_share_a_directory_database(tmp_path, capsys):
    assert_found_then_replayed(tmp_path, capsys, str(tmp_path / "db"))


def test_a_database_replayed_read_only_is_never_written(tmp_path, capsys):
    ci = tmp_path / "ci-db"
    assert fuzz(tmp_path, str(ci)) == EXIT_FAILED
    capsys.readouterr()
    before = sorted(p.relative_to(ci) for p in ci.rglob("*"))
    local = tmp_path / "local-db"
    assert fuzz(tmp_path, str(local), "--replay-from", str(ci)) == EXIT_FAILED
    out = capsys.readouterr().out
    assert found_by(out) == {"gw0": "replayed from the database"}, out
    assert sorted(p.relative_to(ci) for p in ci.rglob("*")) == before
    assert databases.size(str(local)) > 0  # the replayed failure is now in the local database too


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def redis_url(tmp_path):
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    redis = pytest.importorskip("redis", reason="the redis client is not installed (pip install 'convcheck[redis]')")
    from redis.backoff import ConstantBackoff
    from redis.retry import Retry

    port = _free_port()
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        try:  # the server takes a moment to listen: the client's own retry waits for it
            redis.Redis.from_url(url, retry=Retry(ConstantBackoff(0.1), 100)).ping()
        except redis.ConnectionError:
            pytest.fail(f"redis-server on port {port} did not answer within 10 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_two_workers_share_a_redis_database(tmp_path, capsys, redis_url):
    assert_found_then_replayed(tmp_path, capsys, redis_url, workers="1")


def test_unreachable_redis_is_bad_input(capsys):
    pytest.importorskip("redis", reason="the redis client is not installed (pip install 'convcheck[redis]')")
    url = f"redis://127.0.0.1:{_free_port()}/0"
    assert fuzz_main(["--arch", "llama", "--database", url]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("convcheck: error:") and url in err and "cannot reach" in err and err.count("\n") == 1


@pytest.mark.parametrize("argv,named", [
    (["--workers", "0"], "--workers"),
    (["--converter", "tests.meta.no_such_module:X"], "tests.meta.no_such_module"),
    (["--converter", "tests.meta.broken:SlidingWindowDropped"], "'mistral'"),
])
def test_fuzz_bad_input_names_it(argv, named, capsys):
    assert fuzz_main(["--arch", "llama", *argv]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("convcheck: error:") and named in err and err.count("\n") == 1


def test_live_progress_shows_rate_failures_and_database_size(tmp_path, capsys):
    code = fuzz_main(["--arch", "llama", "--property", "config_roundtrip", "--property", "hf_config_roundtrip",
                      "--minutes", "0.03", "--database", str(tmp_path / "db"), "--no-save"])
    err = capsys.readouterr().err
    assert code == EXIT_OK, err
    (line,) = [l for l in err.splitlines() if l.startswith("fuzz llama [")]
    assert "config_roundtrip " in line and "hf_config_roundtrip " in line and " ex " in line and "/s" in line
    assert "failures 0" in line and "db " in line and "examples" in line


def test_progress_on_a_terminal_draws_one_bar_per_property(tmp_path):
    import io

    from fixtures.fuzz_progress import Progress
    from fixtures.fuzzing import Plan, PropertyStatus, WorkerStatus

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    plan = Plan(arch="llama", properties=["config_roundtrip", "weight_roundtrip"], status_dir=str(tmp_path),
                minutes=1, database=str(tmp_path / "db"))
    for worker, n in (("gw0", 40), ("gw1", 2)):
        WorkerStatus(worker, 0.0, 0.0, properties={"config_roundtrip": PropertyStatus(examples=n),
                                                   "weight_roundtrip": PropertyStatus(examples=1, failure="X")}
                     ).write(tmp_path)
    screen = Terminal()
    progress = Progress(plan, stream=screen)
    progress.update()
    progress.close()
    text = screen.getvalue()
    assert "config_roundtrip" in text and "42 ex," in text and "ex/s" in text
    assert "2 ex, " in text and "FAILED" in text
    assert "2 worker(s), failures 1, db 0 examples" in text
