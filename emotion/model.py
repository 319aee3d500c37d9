"""Backbone -> channel attention (what) -> spatial attention (where) -> cell tokens -> Bi-LSTM -> classifier.

Knows nothing of data, training or Accelerate. Weights are saved as `model.safetensors` + `config.json`
through huggingface_hub's PyTorchModelHubMixin, so a saved model is rebuilt by name, never unpickled.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Sequence

import timm
import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from emotion.checkpoint import find_saved_model
from emotion.errors import EmotionError
from emotion.io import check_weights_file, read_json
from emotion.labels import CLASS_LISTS, CLASS_NAMES


class ChannelAttention(nn.Module):
    """CBAM-style 'what': a gate per channel from average- and max-pooled descriptors."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 8)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3))))
        return x * gate[:, :, None, None]


class SpatialAttention(nn.Module):
    """'Where': one weight per cell, a softmax over the H x W grid (the map sums to 1)."""

    def __init__(self, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, h, w = x.shape
        descriptor = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        # fp32 under any autocast: a bf16 map sums to 1 only within 1e-3, and explanations read ratios of its cells.
        attention = torch.softmax(self.conv(descriptor).flatten(1).float(), dim=1).view(b, 1, h, w)
        # Scale by the cell count so uniform attention leaves the features unchanged.
        return x * (attention * (h * w)).to(x.dtype), attention[:, 0]


def backbone_options(output_stride: int, width: float) -> dict:
    """timm keyword arguments beyond the defaults: output stride, and channel width for the EfficientNet family."""
    options: dict = {"output_stride": output_stride} if output_stride != 32 else {}
    if width != 1.0:
        options["channel_multiplier"] = width
    return options


class TrainingHeads(NamedTuple):
    """Logits of the training-only classifiers (None where the model has none): the loss reads them, no prediction does."""

    pooled: torch.Tensor | None  # on the pooled backbone features: a direct gradient for the backbone from the start
    attention_map: torch.Tensor | None  # on the log spatial map: the map must tell expressions apart


class EmotionNet(nn.Module, PyTorchModelHubMixin, library_name="emotion", tags=["facial-expression-recognition", "affectnet"]):
    """Facial-expression classifier over the 8 AffectNet classes.

    Pooling choice: the Bi-LSTM outputs are averaged over the cell tokens. The spatial attention already
    gates each token before the LSTM, so the average is an attention-weighted summary of the face; the
    mean keeps every direction of the LSTM's context (a last-state readout would favour the grid's ends).
    """

    def __init__(
        self,
        backbone: str = "efficientnet_b4",
        num_classes: int = len(CLASS_NAMES),
        class_names: Sequence[str] = CLASS_NAMES,
        image_size: int = 224,
        output_stride: int = 32,
        proj_dim: int = 0,
        lstm_hidden: int = 512,
        dropout: float = 0.3,
        attention: bool = True,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        attention_prior: Sequence[Sequence[float]] | None = None,
        aux_head: bool = False,
        attention_head: bool = False,
        backbone_width: float = 1.0,
        face_margin: float | None = None,
        input_colour: str = "rgb",
        face_shift: Sequence[float] | None = None,
        crop_rule: str | None = None,
    ) -> None:
        super().__init__()
        attention_head = attention_head and attention  # the head reads the spatial map: none without attention
        backbone_kwargs = backbone_options(output_stride, backbone_width)
        try:
            self.backbone = timm.create_model(backbone, pretrained=False, num_classes=0, global_pool="", **backbone_kwargs)
        except (RuntimeError, TypeError) as err:  # unknown name, or an option (output_stride) it lacks
            raise EmotionError(f"timm cannot build backbone {backbone!r} with {backbone_kwargs or 'its defaults'}: {err}") from None
        data_config = self.backbone.pretrained_cfg
        # Preprocessing travels in config.json so the demo normalises exactly as training did.
        self.config = dict(
            backbone=backbone, num_classes=num_classes, class_names=list(class_names), image_size=image_size,
            output_stride=output_stride, proj_dim=proj_dim, lstm_hidden=lstm_hidden,
            dropout=dropout, attention=attention,
            mean=list(mean or data_config.get("mean", (0.485, 0.456, 0.406))),
            std=list(std or data_config.get("std", (0.229, 0.224, 0.225))),
            attention_prior=attention_prior, aux_head=aux_head, attention_head=attention_head,
            backbone_width=backbone_width,
            face_margin=face_margin,  # the crop rule's margin of the training faces, which the face pipeline applies too
            input_colour=input_colour,  # grey | rgb: how every inference path must show a face to the model
            face_shift=list(face_shift) if face_shift is not None else None,  # crop centre from the box's, in box sides
            crop_rule=crop_rule,  # where face_margin and face_shift come from, in words
        )
        self.set_config("attention_head", attention_head)  # config.json too, which holds the arguments as given
        channels = self.backbone.num_features
        self.channel_attention = ChannelAttention(channels) if attention else nn.Identity()
        self.spatial_attention = SpatialAttention() if attention else None
        self.proj = nn.Linear(channels, proj_dim) if proj_dim else nn.Identity()
        self.lstm = nn.LSTM(proj_dim or channels, lstm_hidden, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(2 * lstm_hidden, num_classes)
        # Training-only classifier on the pooled backbone features (deep supervision): it gives the backbone a direct
        # gradient while the attention and the Bi-LSTM still pass almost nothing back, the start where runs stalled.
        self.aux_head = nn.Linear(channels, num_classes) if aux_head else None
        # Training-only classifier on the attention map itself: the map must tell the expressions apart, so it moves to
        # the cells where faces differ from one another (what the explanations name) instead of wherever it settles.
        self.attention_grid = -(-image_size // output_stride)  # the backbone's last feature map, cells per side
        self.attention_head = nn.Linear(self.attention_grid ** 2, num_classes) if attention_head else None

    @property
    def mean(self) -> list[float]:
        return self.config["mean"]

    @property
    def std(self) -> list[float]:
        return self.config["std"]

    @property
    def input_colour(self) -> str:
        return self.config.get("input_colour") or "rgb"  # models saved before the rule was kept were shown colour

    @property
    def image_size(self) -> int:
        return self.config["image_size"]

    def set_attention_prior(self, prior: Sequence[Sequence[float]] | None) -> None:
        """Keep the mean spatial attention on neutral faces (H x W) in config.json: explanations read lifts against it."""
        prior = None if prior is None else [[round(float(v), 6) for v in row] for row in prior]
        self.set_config("attention_prior", prior)

    def set_config(self, key: str, value) -> None:
        """One setting in the model's config and in what save_pretrained writes as config.json."""
        self.config[key] = value
        if isinstance(self._hub_mixin_config, dict):
            self._hub_mixin_config[key] = value

    def load_backbone_weights(self, path: str | None = None) -> None:
        """Pretrained backbone weights from the hub, or from a local file when `path` is given."""
        name = self.config["backbone"]
        overlay = {"file": str(path)} if path else None
        kwargs = backbone_options(self.config["output_stride"], self.config["backbone_width"])
        try:
            source = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=0, global_pool="", **kwargs)
        except Exception as err:  # hub unreachable, missing or mismatched file: all end the same way for the user
            where = f"file {path}" if path else "the Hugging Face hub"
            raise EmotionError(
                f"could not load pretrained weights for {name!r} from {where} ({type(err).__name__}): "
                "train from scratch with --no-pretrained, or give local weights with --pretrained-path FILE"
            ) from None
        self.backbone.load_state_dict(source.state_dict())

    def forward(self, x: torch.Tensor, return_attention: bool = False, training_heads: bool = False):
        """Logits; with `return_attention` also the (B, H, W) spatial map; with `training_heads` also the
        `TrainingHeads` the training loss reads (last)."""
        backbone_features = self.backbone.forward_features(x)  # (B, C, H, W)
        # The pooled head before the main path: graph order sets the order gradients are summed in, so every weight.
        pooled_logits = self.pooled_head_logits(backbone_features) if training_heads else None
        features = self.channel_attention(backbone_features)
        b, _, h, w = features.shape
        if self.spatial_attention is not None:
            features, attention = self.spatial_attention(features)
        else:
            attention = features.new_full((b, h, w), 1.0 / (h * w))
        tokens = self.proj(features.flatten(2).transpose(1, 2))  # (B, H*W, D), row-major cells
        self.lstm.flatten_parameters()  # one contiguous weight chunk (DDP / cuDNN)
        sequence, _ = self.lstm(tokens)
        logits = self.head(self.dropout(sequence.mean(dim=1)))
        outputs = (logits,) + ((attention,) if return_attention else ())
        if training_heads:
            outputs += (TrainingHeads(pooled_logits, self.attention_head_logits(attention)),)
        return outputs if len(outputs) > 1 else logits

    # The training-only heads (TrainingHeads): the loss reads them, no prediction does.
    def pooled_head_logits(self, backbone_features: torch.Tensor) -> torch.Tensor | None:
        """The classifier on the pooled (B, C, H, W) backbone features; None when the model has none."""
        return self.aux_head(backbone_features.mean(dim=(2, 3))) if self.aux_head is not None else None

    def attention_head_logits(self, attention: torch.Tensor) -> torch.Tensor | None:
        """The classifier on the log of the (B, H, W) spatial map; None when the model has none."""
        if self.attention_head is None:
            return None
        log_map = attention.float().clamp_min(1e-12).log()  # float: a half-precision 1e-12 is 0
        return self.attention_head(nn.functional.adaptive_avg_pool2d(log_map.unsqueeze(1), self.attention_grid).flatten(1))


def build_model(config, input_colour: str = "rgb", crop: dict | None = None) -> EmotionNet:
    """The model a TrainConfig describes, with the data's rules (`input_colour`; `crop`: face_margin, face_shift and
    crop_rule, default the configured margin) and pretrained backbone weights when the config asks for them."""
    class_names = CLASS_LISTS[config.classes]
    model = EmotionNet(
        backbone=config.backbone, num_classes=len(class_names), class_names=class_names, image_size=config.image_size, output_stride=config.output_stride,
        proj_dim=config.proj_dim, lstm_hidden=config.lstm_hidden,
        dropout=config.dropout, attention=config.attention, aux_head=config.aux_loss_weight > 0, attention_head=config.attention_loss_weight > 0,
        backbone_width=config.backbone_width, input_colour=input_colour,
        **(crop or {"face_margin": config.face_margin}),
    )
    if config.use_pretrained() or config.pretrained_path:
        model.load_backbone_weights(config.pretrained_path)
    return model


def speed_up(model: nn.Module, channels_last: bool = False, compile: bool = False) -> nn.Module:
    """Memory format and compilation switches shared by training and the benchmark; state-dict keys stay unchanged."""
    if channels_last:
        # Weights in NHWC make every convolution produce NHWC, so inputs need no conversion.
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model.compile()  # in place: no `_orig_mod.` prefix in saved weights or checkpoints
    return model


def load_model(path) -> EmotionNet:
    """A saved model directory (config.json + model.safetensors), with a one-line error when it is not one or is damaged."""
    directory = find_saved_model(Path(path))  # a kill mid-replacement leaves the previous version beside it
    if not (directory / "config.json").is_file() or not (directory / "model.safetensors").is_file():
        raise EmotionError(f"{directory} is not a saved model (needs config.json and model.safetensors): "
                           "train one with `python train_accelerate.py` and pass its best_model/ directory")
    saved = read_json(directory / "config.json")  # a damaged one is named before the hub mixin's own error
    if isinstance(saved, dict) and saved.get("lstm_layers", 1) != 1:
        raise EmotionError(f"{directory} has {saved['lstm_layers']} Bi-LSTM layers; this version builds one: "
                           "retrain it, or load it with the version that saved it")
    check_weights_file(directory / "model.safetensors", "the saved model")
    try:
        return EmotionNet.from_pretrained(str(directory))
    except Exception as err:  # weights that do not fit the config, or a config this version cannot build
        raise EmotionError(f"{directory} is damaged: its weights do not fit its config.json ({type(err).__name__}: "
                           f"{str(err).splitlines()[0][:160]}): copy the saved model again or retrain") from None

