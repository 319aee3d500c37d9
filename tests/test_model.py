import json

import pytest
import timm
import torch
from safetensors.torch import save_file

from emotion.config import PRESETS, TrainConfig
from emotion.errors import EmotionError
from emotion.model import EmotionNet, TrainingHeads, build_model, load_model


def tiny(**overrides) -> EmotionNet:
    kwargs = dict(backbone="test_efficientnet", lstm_hidden=16, proj_dim=16)
    kwargs.update(overrides)
    return EmotionNet(**kwargs).eval()


def test_logits_and_49_cell_attention_at_224():
    model = tiny()
    logits, attention = model(torch.randn(2, 3, 224, 224), return_attention=True)
    assert logits.shape == (2, 8)
    assert attention.shape == (2, 7, 7)  # the 49 cells become the token sequence
    assert torch.all(attention >= 0)
    assert torch.allclose(attention.sum(dim=(1, 2)), torch.ones(2), atol=1e-5)


@pytest.mark.parametrize("size,grid", [(64, 2), (96, 3), (160, 5), (380, 12)])
def test_any_input_size(size, grid):
    logits, attention = tiny()(torch.randn(1, 3, size, size), return_attention=True)
    assert logits.shape == (1, 8)
    assert attention.shape == (1, grid, grid)


def test_output_stride_16_keeps_a_finer_grid():
    _, attention = tiny(output_stride=16)(torch.randn(1, 3, 112, 112), return_attention=True)
    assert attention.shape == (1, 7, 7)


def test_without_attention_the_map_is_uniform():
    _, attention = tiny(attention=False)(torch.randn(1, 3, 64, 64), return_attention=True)
    assert torch.allclose(attention, torch.full_like(attention, 0.25))


def test_the_projection_and_lstm_width_are_configurable():
    model = tiny(proj_dim=24, lstm_hidden=20)
    assert model.lstm.num_layers == 1 and model.lstm.bidirectional and model.lstm.input_size == 24
    assert model.head.in_features == 40


def test_save_and_reload_give_identical_logits(tmp_path):
    model = tiny(image_size=64)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file() and (tmp_path / "model.safetensors").is_file()
    reloaded = load_model(tmp_path).eval()
    x = torch.randn(3, 3, 64, 64)
    assert torch.equal(model(x), reloaded(x))
    assert reloaded.image_size == 64 and reloaded.mean == model.mean


def test_load_model_names_a_missing_model(tmp_path):
    with pytest.raises(EmotionError, match=str(tmp_path)):
        load_model(tmp_path)


def test_pretrained_backbone_from_local_file(tmp_path):
    source = timm.create_model("test_efficientnet", num_classes=0)
    save_file(source.state_dict(), tmp_path / "backbone.safetensors")
    config = TrainConfig(**{**PRESETS["tiny"], "pretrained_path": str(tmp_path / "backbone.safetensors"), "output_stride": 32})
    model = build_model(config)
    for name, tensor in source.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[name], tensor)


def test_unreachable_hub_is_one_clear_line():
    config = TrainConfig(dataset="imagefolder", data_dir="x", backbone="test_efficientnet")
    with pytest.raises(EmotionError) as err:
        build_model(config)  # HF_HUB_OFFLINE=1 in tests: no download possible
    message = str(err.value)
    assert "--no-pretrained" in message and "--pretrained-path" in message and "\n" not in message


def test_aux_heads_are_training_only_and_saved(tmp_path):
    model = tiny(aux_head=True, attention_head=True, output_stride=16, image_size=64)
    logits, attention, (pooled, on_attention) = model(torch.randn(3, 3, 64, 64), return_attention=True, training_heads=True)
    assert logits.shape == pooled.shape == on_attention.shape == (3, 8) and attention.shape == (3, 4, 4)
    assert not torch.allclose(logits, pooled) and not torch.allclose(logits, on_attention)
    plain = model(torch.randn(3, 3, 64, 64))
    assert isinstance(plain, torch.Tensor) and plain.shape == (3, 8)  # inference and export see only the logits
    model.save_pretrained(tmp_path)
    again = load_model(tmp_path)
    assert again.aux_head is not None and again.config["aux_head"] is True and again.config["attention_head"] is True
    assert torch.equal(again.aux_head.weight, model.aux_head.weight)
    assert torch.equal(again.attention_head.weight, model.attention_head.weight)
    assert tiny(output_stride=16)(torch.randn(1, 3, 64, 64), training_heads=True)[1] == TrainingHeads(None, None)


def test_the_attention_head_reads_only_the_map_and_trains_the_attention():
    """Its loss reaches the spatial attention's convolution, and its logits are a function of the (log) map alone."""
    torch.manual_seed(0)
    model = tiny(attention_head=True, output_stride=16, image_size=64)
    _, attention, heads = model(torch.randn(4, 3, 64, 64), return_attention=True, training_heads=True)
    on_attention = heads.attention_map
    expected = model.attention_head(attention.clamp_min(1e-12).log().flatten(1))
    assert torch.allclose(on_attention, expected, atol=1e-5)
    model.zero_grad()
    torch.nn.functional.cross_entropy(on_attention, torch.tensor([0, 1, 2, 3])).backward()
    assert model.spatial_attention.conv.weight.grad.abs().sum() > 0
    assert model.head.weight.grad is None  # the main classifier is not on this path


def test_a_model_saved_with_several_lstm_layers_is_refused_in_one_line(tmp_path):
    model = tiny()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "lstm_layers": 2}))
    with pytest.raises(EmotionError, match="has 2 Bi-LSTM layers; this version builds one") as err:
        load_model(tmp_path)
    assert "\n" not in str(err.value)
    (tmp_path / "config.json").write_text(json.dumps({**config, "lstm_layers": 1, "attention_head_input": "neutral-rise"}))
    assert torch.equal(load_model(tmp_path).head.weight, model.head.weight)  # settings of old saves that change no weight load


def test_backbone_width_multiplies_the_channels_and_travels_in_the_config(tmp_path):
    narrow, wide = tiny(), tiny(backbone_width=2.0)
    assert wide.backbone.num_features == 2 * narrow.backbone.num_features
    wide.save_pretrained(tmp_path)
    assert load_model(tmp_path).backbone.num_features == wide.backbone.num_features


def test_build_model_follows_the_recipe_fields():
    config = TrainConfig(**{**PRESETS["tiny"], "aux_loss_weight": 0.0, "attention_loss_weight": 0.0, "backbone_width": 2.0})
    model = build_model(config)
    assert model.aux_head is None and model.attention_head is None and model.config["backbone_width"] == 2.0
    assert build_model(TrainConfig(**PRESETS["tiny"])).attention_head is not None  # on by default


def test_no_attention_leaves_no_attention_head_in_the_saved_config(tmp_path):
    model = EmotionNet(backbone="test_efficientnet", image_size=32, attention=False, attention_head=True)
    model.save_pretrained(tmp_path)
    assert model.attention_head is None
    assert json.loads((tmp_path / "config.json").read_text())["attention_head"] is False
