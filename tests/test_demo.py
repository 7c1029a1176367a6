"""vae.present.demo: the β demo's settings."""

from __future__ import annotations

import pytest

from vae.learn.theory import theory_exact
from vae.present import demo


# ---- the demo's settings ------------------------------------------------------------------------
def test_demo_config_is_valid_and_uses_the_measured_epochs():
    config = demo.demo_config({})
    assert config.epochs == demo.DEMO_EPOCHS
    assert config.latent_dim == demo.DEMO_LATENT_DIM and config.name == demo.DEMO_NAME
    assert config.dataset == "digits" and config.objective == "beta"
    assert config.precision == "auto"  # the machine's fastest; the README gives both tables


def test_linear_demo_config_has_a_closed_form():
    config = demo.linear_demo_config({})
    assert theory_exact(config) and config.dataset == "gaussian"
    assert config.epochs == demo.LINEAR_DEMO_EPOCHS


def test_demo_epochs_can_be_shortened_through_the_environment():
    assert demo.demo_config({demo.DEMO_EPOCHS_ENV: " 3 "}).epochs == 3


@pytest.mark.parametrize("bad", ["three", "0", "-2", "1.5", "100000"])
def test_a_bad_demo_epochs_setting_is_refused_with_its_name(bad):
    with pytest.raises(demo.DemoSettingError, match=demo.DEMO_EPOCHS_ENV):
        demo.demo_epochs({demo.DEMO_EPOCHS_ENV: bad})
