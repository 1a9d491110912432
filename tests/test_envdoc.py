"""docs/env.md is generated from the code (rlsched.envdoc): the committed copy must be the current one."""

from pathlib import Path

from rlsched import envdoc
from rlsched.control.interface import OBS_FEATURES

DOC = Path(__file__).resolve().parents[1] / "docs" / "env.md"


def test_the_committed_env_spec_is_current() -> None:
    assert DOC.read_text() == envdoc.render(), (
        "docs/env.md is stale: python -m rlsched.envdoc --write docs/env.md"
    )


def test_the_spec_lists_every_observation_feature_and_config_key_in_order() -> None:
    text = envdoc.render()
    positions = [text.index(f"| {i} | `{name}` |") for i, (name, *_rest) in enumerate(OBS_FEATURES)]
    assert positions == sorted(positions)
    for key in ("`probe_lr`", "`mask_map`", "`on_divergence`", "`val_loss_increase`"):
        assert f"| {key} |" in text
    assert "calibrated by benchmarks/update_ratio_calibration.py" in text  # the comment beside the field
