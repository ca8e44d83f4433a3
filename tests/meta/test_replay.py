"""A failure found by Hypothesis, saved as a regression case, replays exactly.

A broken converter (tests/meta/broken.py) supplies a real failure: ``runner.run`` finds and saves
its minimal case, ``runner.replay`` re-raises the same violation from the JSON alone, the real
converter passes the same case, and ``convcheck replay FILE`` exits 1 on it.
"""
from __future__ import annotations

import pytest
from hypothesis import Phase, settings

import converters

from fixtures import profiles
from fixtures.commands import replay_main
from fixtures.regressions import load_regressions
from properties import PropertyViolation
from fixtures import runner
from properties.checkpoint import installed

from . import broken


@pytest.mark.parametrize("make,prop", [(broken.KVSwapped, "forward_equivalence"),
                                       (broken.RopeScalingDropped, "hf_config_roundtrip")])
def test_saved_failure_replays_exactly(make, prop, tmp_path, capsys):
    converter = make()
    gate = settings(profiles.settings_for(prop, "gate"), phases=(Phase.explicit, Phase.generate, Phase.shrink))
    with pytest.raises(PropertyViolation) as found:
        runner.run(prop, converter, settings=gate, save_failures=True, note="meta-test", directory=tmp_path)
    (case,) = load_regressions(tmp_path)
    assert (case.architecture, case.property) == (converter.model_type, prop)

    with pytest.raises(PropertyViolation) as replayed:
        runner.replay(case, converter)
    assert str(replayed.value) == str(found.value)  # same case, same seed: the same figures
    runner.replay(case)  # the registered (correct) converter passes it

    with installed(converter):
        assert replay_main([str(case.path)]) == 1
    assert "still fails" in capsys.readouterr().err
    assert replay_main([str(case.path)]) == 0


def test_replay_command_leaves_the_active_profile_alone(tmp_path):
    """replay_main loads the explicit-only replay profile; Hypothesis tests that run after it in the
    same process must not silently run no examples."""
    from fixtures.regressions import save_regression

    before = profiles.active()
    cfg = converters.get("llama").import_config(
        {"model_type": "llama", "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1,
         "num_attention_heads": 2, "vocab_size": 11})
    path = save_regression("llama", "config_roundtrip", native_config=cfg.to_dict(), seed=0, directory=tmp_path)
    assert replay_main([str(path)]) == 0
    assert profiles.active() == before
    assert Phase.generate in settings.default.phases
