"""What a run checks against its index before any worker starts: an index setting the user gave that the
index was not built with is refused naming both, and the index's own settings reach the workers beside the
config instead of being written into it."""

from __future__ import annotations

import pytest

from pipeline.config import RunConfig, apply_overrides, parse_config
from pipeline.errors import ConfigError
from pipeline.index.settings import IndexSettings
from pipeline.model.encoders import default_encoder_path
from pipeline.train.checks import check_config_fits_index

DPR_LIKE = IndexSettings(encoder=default_encoder_path(), pooling="pooler", max_length=256, dimension=384,
                         count=100, num_shards=1, factory="Flat")


@pytest.mark.parametrize(("argv", "key", "given", "built"), [
    (["--index.pooling", "cls"], "index.pooling", "'cls'", "'pooler'"),
    (["--index.max_length", "64"], "index.max_length", "64", "256"),
    (["--index.encoder", "/models/other-encoder"], "index.encoder", "'/models/other-encoder'", "MiniLM"),
])
def test_an_index_setting_that_disagrees_with_the_index_is_refused_naming_both(argv, key, given, built):
    config, _ = parse_config(argv, "x")
    with pytest.raises(ConfigError) as refused:
        check_config_fits_index(config, DPR_LIKE)
    message = str(refused.value)
    assert message.startswith(f"{key}: {given} given, but index ") and "was built with" in message
    assert built in message or (built == "MiniLM" and DPR_LIKE.encoder in message)


def test_the_default_value_given_explicitly_still_counts_as_the_users_word():
    config, _ = parse_config(["--index.pooling", "mean"], "x")  # mean is the default, the index says pooler
    with pytest.raises(ConfigError, match="index.pooling: 'mean' given"):
        check_config_fits_index(config, DPR_LIKE)


def test_settings_left_out_or_agreeing_pass_and_the_config_is_not_rewritten():
    agreeing, _ = parse_config(["--index.pooling", "pooler", "--index.max_length", "256"], "x")
    left_out = RunConfig()
    for config in (agreeing, left_out, apply_overrides(left_out, {"train.lr": 1e-3})):
        before = config.to_dict()
        check_config_fits_index(config, DPR_LIKE)
        assert config.to_dict() == before
    assert left_out.index.pooling == "mean"  # the user's (default) value stays; workers get DPR_LIKE itself


def test_the_index_settings_name_the_encoders_a_run_starts_from():
    assert DPR_LIKE.question_encoder("") == DPR_LIKE.encoder == DPR_LIKE.context_encoder("")
    assert DPR_LIKE.question_encoder("facebook/dpr-question_encoder-single-nq-base") == \
        "facebook/dpr-question_encoder-single-nq-base"
    assert IndexSettings(**DPR_LIKE.to_dict()) == DPR_LIKE  # what travels to the workers comes back equal
