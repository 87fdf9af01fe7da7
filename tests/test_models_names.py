"""Model names: an unknown name fails with the closest registered ones."""

import pytest

from videomac.models.names import check_model_name


def test_unknown_model_names_suggest_the_closest():
    check_model_name("videomac_rn50")
    with pytest.raises(ValueError, match="did you mean videomac_rn50"):
        check_model_name("videomac_rn05")
    with pytest.raises(ValueError, match="unknown model 'not_a_model_at_all'.*VideoMAC encoders: videomac_"):
        check_model_name("not_a_model_at_all")


@pytest.mark.slow
def test_the_settings_check_reads_every_encoders_stride_from_the_model():
    import timm
    import torch

    from videomac.models.names import model_stride
    from videomac.pretrain.config import PretrainConfig, check_config

    for name in [*timm.list_models("videomac_*"), "resnet18", "convnextv2_atto"]:
        with torch.device("meta"):
            model = timm.create_model(name)
        assert model_stride(name) == model.feature_info[-1]["reduction"], name
    check_config(PretrainConfig(model="videomac_cnxv2_iso_s", input_size=208))  # 13 patches of 16
    with pytest.raises(
        ValueError, match="--input-size 208 must be a positive multiple of videomac_cnxv2_s's patch size 32"
    ):
        check_config(PretrainConfig(model="videomac_cnxv2_s", input_size=208))
