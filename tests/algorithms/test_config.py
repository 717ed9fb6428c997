"""Recipe sections: defaults from ALGORITHMS.md, registry-checked types, strictness, light import."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError

from ling_rl.algorithms.config import (
    AlgorithmConfig,
    KLConfig,
    LossConfig,
    MismatchConfig,
    SegmentationConfig,
)
from ling_rl.algorithms.registries import POLICY_LOSSES


def test_defaults_follow_the_spec() -> None:
    cfg = AlgorithmConfig()
    assert cfg.loss.type == "lpo" and cfg.loss.clip_range() == (0.03, 0.03)
    assert cfg.loss.aggregation() == "token_mean" and cfg.loss.dual_clip is None
    assert cfg.advantage.type == "group_norm"
    assert (cfg.mismatch.type, cfg.mismatch.alpha, cfg.mismatch.beta, cfg.mismatch.c) == ("icepop", 0.5, 5.0, 2.0)
    assert (cfg.kl.estimator, cfg.kl.coef) == ("k3", 0.0)
    assert cfg.segmentation.min_unit_tokens == 2
    assert set(cfg.segmentation.delimiters) == set(".!?;:,\n") | set("\u3002\uff01\uff1f\uff1b\uff1a\uff0c\u3001")


@pytest.mark.parametrize(
    ("section", "field", "registered"),
    [
        ("advantage", "type", "group_mean, group_norm, rloo"),
        ("loss", "type", "gspo, lpo, ppo_token"),
        ("mismatch", "type", "icepop, none, tis"),
        ("kl", "estimator", "k1, k2, k3"),
    ],
)
def test_unknown_names_list_the_registered_ones(section: str, field: str, registered: str) -> None:
    with pytest.raises(ValidationError) as err:
        AlgorithmConfig.model_validate({section: {field: "nope"}})
    assert registered in str(err.value) and section in str(err.value)


def test_a_user_registered_loss_is_accepted() -> None:
    name = "test_config_custom_loss"
    POLICY_LOSSES.add(name, POLICY_LOSSES.get("ppo_token"))
    assert AlgorithmConfig.model_validate({"loss": {"type": name}}).loss.type == name
    with pytest.raises(Exception, match="already registered"):
        POLICY_LOSSES.add(name, POLICY_LOSSES.get("ppo_token"))


def test_bad_values_are_refused() -> None:
    with pytest.raises(ValidationError, match="unknown_key"):
        AlgorithmConfig.model_validate({"loss": {"unknown_key": 1}})
    with pytest.raises(ValidationError, match="alpha < beta"):
        MismatchConfig(alpha=2.0, beta=1.0)
    with pytest.raises(ValidationError, match="dual_clip"):
        LossConfig(dual_clip=0.5)
    with pytest.raises(ValidationError, match="loss_agg"):
        LossConfig(loss_agg="sum")
    with pytest.raises(ValidationError, match="coef"):
        KLConfig(coef=-1.0)
    with pytest.raises(ValidationError, match="delimiters"):
        SegmentationConfig(delimiters=[])
    with pytest.raises(ValidationError, match="min_unit_tokens"):
        SegmentationConfig(min_unit_tokens=0)


def test_importing_the_config_does_not_import_torch() -> None:
    code = "import sys, ling_rl.algorithms.config; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_package_imports_no_ray_vllm_or_models() -> None:
    code = (
        "import sys, ling_rl.algorithms as a\n"
        "for name in a.__all__: getattr(a, name)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('ray', 'vllm', 'transformers') or m.startswith('ling_rl.models')]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
