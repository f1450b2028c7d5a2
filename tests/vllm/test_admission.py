"""Admission through the processor classes' `validate_params`: vLLM answers 400 only for a
ValueError, so whatever a request makes cull's parser raise must leave as a CullError."""
import pytest
from vllm import SamplingParams

import cull
from cull.integrations.vllm import CullLogitsProcessor, CullLogitsProcessorV2

pytestmark = pytest.mark.vllm


@pytest.mark.parametrize("cls", [CullLogitsProcessor, CullLogitsProcessorV2])
@pytest.mark.parametrize("extra", [
    {"cull_phrases": ["ab\ud800cd"]},                       # a lone surrogate
    {"cull_phrases": ["re:(a+)"]},                           # once a TypeError
    {"cull_phrases": ["re:" + "(" * 400 + "a" + ")" * 400]},  # once a RecursionError
    {"cull": '{"phrases": ["x"], "mode": "bias", "bias": ' + "9" * 400 + "}"},  # once an OverflowError
])
def test_every_refusal_is_a_value_error(cls, extra):
    with pytest.raises(cull.CullError):
        cls.validate_params(SamplingParams(extra_args=extra))


def test_good_and_absent_settings_pass():
    CullLogitsProcessor.validate_params(SamplingParams(extra_args={"cull_phrases": ["delve"]}))
    CullLogitsProcessor.validate_params(SamplingParams())
