"""Model names: an unknown name fails with the closest registered ones."""

import pytest

from videomac.models.names import check_model_name


def test_unknown_model_names_suggest_the_closest():
    check_model_name("videomac_rn50")
    with pytest.raises(ValueError, match="did you mean videomac_rn50"):
        check_model_name("videomac_rn05")
    with pytest.raises(ValueError, match="unknown model 'not_a_model_at_all'.*VideoMAC encoders: videomac_"):
        check_model_name("not_a_model_at_all")


def test_the_settings_check_knows_every_videomac_encoders_stride():
    import timm
    import torch

    from videomac.pretrain.config import videomac_stride

    for name in timm.list_models("videomac_*"):
        with torch.device("meta"):
            model = timm.create_model(name)
        assert videomac_stride(name) == model.feature_info[-1]["reduction"], name
