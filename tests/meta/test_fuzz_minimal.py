"""``convcheck fuzz`` saves minimal cases, never the hand-written example that failed first.

Planted bugs (tests/meta/fuzz_planted.py, tests/meta/broken.py) with a known smallest witness: a
bug one layer shows must be saved with one layer, a bug that needs two layers with two, and every
other size at the strategy's own minimum (what ``hypothesis.find`` reaches on the bare strategy),
with the tensor seed, which these bugs ignore, shrunk to 0.
"""
from __future__ import annotations

import pytest
from hypothesis import find

from fixtures.commands import EXIT_FAILED, fuzz_main
from fixtures.regressions import load_regressions
from strategies import llama


def fuzz(tmp_path, converter: str, prop: str, examples: int) -> int:
    code = fuzz_main(["--arch", "llama", "--property", prop, "--examples", str(examples), "-q",
                      "--database", str(tmp_path / "db"), "--regressions", str(tmp_path / "regressions"),
                      "--converter", converter])
    return code


@pytest.mark.parametrize("planted,layers", [("tests.meta.broken:RopeThetaDropped", 1),
                                            ("tests.meta.fuzz_planted:LastLayerDropped", 2)])
def test_saved_case_is_minimal_although_a_hand_written_example_failed_first(planted, layers, tmp_path, capsys):
    code = fuzz(tmp_path, planted, "config_roundtrip", 200)
    out = capsys.readouterr().out
    assert code == EXIT_FAILED, out
    assert "a hand-written example fails" in out, out  # Llama-3.1-8B (32 layers) fails first ...
    (case,) = load_regressions(tmp_path / "regressions")  # ... and is not what is saved
    cfg = case.config()
    smallest = find(llama.native_configs(), lambda c: c.num_layers >= layers)
    assert cfg.num_layers == layers, out
    assert (cfg.hidden_size, cfg.embeddings.vocab_size, len(cfg.decoder.blocks)) == \
        (smallest.hidden_size, smallest.embeddings.vocab_size, 1)
    assert case.seed == 0
    assert f"minimal case {{'layers': {layers}, 'hidden_size': {smallest.hidden_size}" in out


def test_a_weight_property_saves_its_minimal_case(tmp_path, capsys):
    """A tied model exported with a copied lm_head: key_bijection needs a tied config, one layer."""
    code = fuzz(tmp_path, "tests.meta.broken:LmHeadExportedWhileTied", "key_bijection", 25)
    out = capsys.readouterr().out
    assert code == EXIT_FAILED, out
    (case,) = load_regressions(tmp_path / "regressions")
    cfg = case.config()
    smallest = find(llama.native_configs(), lambda c: c.head.tied)
    assert cfg.head.tied and cfg.num_layers == 1
    assert (cfg.hidden_size, cfg.embeddings.vocab_size) == (smallest.hidden_size, smallest.embeddings.vocab_size)


def test_a_half_shrunk_case_replayed_from_a_shared_database_is_shrunk(tmp_path, capsys):
    """Hypothesis writes each smaller failure to the database while it shrinks, and takes an exact
    replay as already minimal. A worker replaying another's half-shrunk case must shrink it anyway
    (fixtures.databases.ReshrinkView): here the database holds an unshrunk failure, as it would
    mid-shrink, and fuzz must still save the two-layer minimum."""
    from hypothesis import Phase, settings
    from hypothesis.database import DirectoryBasedExampleDatabase

    from fixtures import runner

    from .fuzz_planted import LastLayerDropped

    for attempt in range(20):
        db = tmp_path / f"db{attempt}"
        failure = runner.Failure()
        unshrunk = settings(database=DirectoryBasedExampleDatabase(str(db)), phases=[Phase.generate],
                            max_examples=200, deadline=None)
        with pytest.raises(Exception):
            runner.hypothesis_test("config_roundtrip", LastLayerDropped(), settings=unshrunk, examples=False,
                                   failure=failure)()
        if failure.case.num_layers > 2:
            break
    else:
        pytest.fail("20 unshrunk failures all had two layers")
    code = fuzz_main(["--arch", "llama", "--property", "config_roundtrip", "--examples", "200", "-q",
                      "--database", str(db), "--regressions", str(tmp_path / "regressions"),
                      "--converter", "tests.meta.fuzz_planted:LastLayerDropped"])
    out = capsys.readouterr().out
    assert code == EXIT_FAILED and "replayed from the database" in out, out
    (case,) = load_regressions(tmp_path / "regressions")
    assert case.config().num_layers == 2, (failure.case.num_layers, out)
