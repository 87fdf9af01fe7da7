"""Model names: unknown names fail with suggestions; the masking stride comes from the model itself."""

import pytest
import timm
import torch

from videomac.models.names import check_model_name, model_stride


@pytest.mark.parametrize("name", ["videomac_rn18", "videomac_cnxv2_atto", "videomac_cnxv2_iso_s"])
def test_model_stride_is_the_built_encoders_total_stride(name):
    model = timm.create_model(name, num_classes=0, global_pool="")
    size = 64
    feats = model.forward_features(torch.zeros(1, 3, size, size))
    assert model_stride(name) == size // feats.shape[-1]


def test_unknown_model_names_suggest_the_closest():
    with pytest.raises(ValueError, match="did you mean videomac_rn50"):
        check_model_name("videomac_rn05")
    with pytest.raises(ValueError, match="unknown model"):
        model_stride("not_a_model_at_all")
