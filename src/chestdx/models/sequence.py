"""ResNet50-LSTM-ATT2: a frozen slice encoder, a Bi-LSTM and soft attention over the slices
(resnet50-att2-bilstm-covidx-ct.txt, Sections III-A and V).

::

    x (B, T, 1, H, W) -> frozen encoder, slice by slice -> e (B, T, D)     D = 3072 for ResNet50-ATT2
    h_1..h_T = BiLSTM(e)                                 (B, T, 2H)       h_i = [fwd_i ; bwd_i]
    g   = tanh(W_g h_n + b_g)                            (B, 2H)          Eq. 1
    s_i = g^T W_s h_i                                    (B, T)           Eq. 2
    a   = softmax(s)                                     (B, T)           Eq. 3, sums to 1 over slices
    g^  = sum_i a_i h_i                                  (B, 2H)          Eq. 4, the context vector
    v   = W_c g^ + b_c                                   (B, K)           Eq. 5 (softmax, Eq. 6, is in
                                                                          the loss / ModelOutput.probs)

Readings chosen where the paper is open:

- ``h_n``, "the last hidden state given by the RNN", is the LSTM's final state of each direction
  (forward after slice T, backward after slice 1), concatenated: what ``nn.LSTM`` returns as
  ``h_n``. (The hidden state *at position n* would give the backward direction one slice of context.)
- The LSTM size is not given: ``hidden`` per direction (the recipe's ``model.head_hidden``), one layer.
- The encoder is any trained chestdx model whose ``embedding`` is used (the paper: a ResNet50-ATT2
  trained on single slices); it is frozen (no gradients, always in eval mode, so its batch-norm
  statistics do not move) and runs on every step, which lets the whole-sequence augmentation of the
  paper act on the images. Inputs of shape ``(B, T, D)`` are taken as ready embeddings and skip it
  (``model.params.precompute_embeddings: true`` makes the data module serve those: much faster, no
  augmentation).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from chestdx.errors import ConfigError, WeightsNotFoundError
from chestdx.models.base import ChestModel, ModelOutput
from chestdx.models.registry import MODELS, build_model

log = logging.getLogger(__name__)


class SequenceSoftAttention(nn.Module):
    """Soft attention for sequence classification (Eqs. 1-4).

    Args:
        dim: size of the hidden states ``h_i`` (``2H`` for a Bi-LSTM of size H).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.global_proj = nn.Linear(dim, dim)  # W_g, b_g (Eq. 1)
        self.score = nn.Linear(dim, dim, bias=False)  # W_s (Eq. 2)

    def forward(self, h: Tensor, h_last: Tensor) -> tuple[Tensor, Tensor]:
        """Attend over the sequence.

        Args:
            h: hidden states ``(B, T, dim)``.
            h_last: the last hidden state ``(B, dim)``.

        Returns:
            ``(context (B, dim), attention (B, T))``; the attention sums to 1 over T.
        """
        g = torch.tanh(self.global_proj(h_last))  # Eq. 1
        s = torch.einsum("bd,btd->bt", g, self.score(h))  # Eq. 2: g^T W_s h_i
        a = torch.softmax(s.float(), dim=1).to(h.dtype)  # Eq. 3
        context = torch.einsum("bt,btd->bd", a, h)  # Eq. 4
        return context, a


class BiLSTMAttention(nn.Module):
    """Bi-LSTM -> soft attention -> linear classifier (Eqs. 1-6) on embedding sequences.

    Args:
        input_dim: D, size of each slice embedding.
        num_classes: K.
        hidden: LSTM size per direction (H).
        dropout: before the classifier.
    """

    def __init__(self, input_dim: int, num_classes: int, hidden: int = 256, dropout: float = 0.0):
        super().__init__()
        self.lstm = nn.LSTM(input_dim, hidden, num_layers=1, batch_first=True, bidirectional=True)
        self.attention = SequenceSoftAttention(2 * hidden)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(2 * hidden, num_classes)  # W_c, b_c (Eq. 5)

    def forward(self, emb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``emb (B, T, D)`` -> ``(logits (B, K), context (B, 2H), attention (B, T))``."""
        h, (h_n, _c) = self.lstm(emb)  # h (B, T, 2H); h_n (2, B, H): forward, backward
        h_last = torch.cat([h_n[0], h_n[1]], dim=1)
        context, a = self.attention(h, h_last)
        return self.classifier(self.dropout(context)), context, a


class SequenceClassifier(ChestModel):
    """A frozen slice encoder + :class:`BiLSTMAttention`: one answer per slice sequence.

    Shapes: input ``(B, T, in_chans, H, W)`` (or ready embeddings ``(B, T, D)``); ``features`` the
    slice embeddings ``(B, T, D)``; ``embedding`` the context vector ``(B, 2H)``; ``logits (B, K)``;
    ``maps["sequence_attention"]`` ``(B, T)`` (sums to 1 over the slices) and, where the encoder
    makes them, its per-slice maps ``maps["att1"]`` ``(B, T, h1, w1)``, ``maps["att2"]`` ...

    Args:
        encoder: a trained :class:`ChestModel` with an ``embedding``; frozen here.
        num_classes: K.
        hidden: LSTM size per direction.
        dropout: before the classifier.
        chunk: slices per encoder call (memory bound).
    """

    def __init__(self, encoder: ChestModel, num_classes: int, hidden: int = 256, dropout: float = 0.0,
                 chunk: int = 64):
        super().__init__()
        self.encoder = encoder
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.encoder.eval()
        self.num_classes = num_classes
        self.in_chans = encoder.in_chans
        self.embed_dim = int(getattr(encoder, "embedding_dim", encoder.feature_dim))
        self.feature_dim = 2 * hidden
        self.chunk = chunk
        self.encoder_image_size: int | None = None  # the image size the encoder was trained at
        self.head = BiLSTMAttention(self.embed_dim, num_classes, hidden, dropout)

    def train(self, mode: bool = True) -> SequenceClassifier:
        """Set train / eval mode; the frozen encoder always stays in eval mode."""
        super().train(mode)
        self.encoder.eval()
        return self

    def encode(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Slice embeddings and slice maps of ``x (B, T, C, H, W)`` -> ``(B, T, D)``, ``{name: (B, T, ...)}``."""
        if x.ndim != 5:
            raise ValueError(f"sequence input must be (B, T, C, H, W) or (B, T, D); got {tuple(x.shape)}")
        b, t = x.shape[:2]
        flat = x.reshape(b * t, *x.shape[2:])
        embs: list[Tensor] = []
        maps: dict[str, list[Tensor]] = {}
        with torch.no_grad():
            for i in range(0, flat.shape[0], self.chunk):
                out = self.encoder(flat[i:i + self.chunk])
                if out.embedding is None:
                    raise ConfigError(f"the encoder {type(self.encoder).__name__} gives no embedding")
                embs.append(out.embedding)
                for k, v in out.maps.items():
                    maps.setdefault(k, []).append(v)
        emb = torch.cat(embs).reshape(b, t, -1)
        return emb, {k: torch.cat(v).reshape(b, t, *v[0].shape[1:]) for k, v in maps.items()}

    def forward_features(self, x: Tensor) -> Tensor:
        """``(B, T, C, H, W)`` -> slice embeddings ``(B, T, D)``; ``(B, T, D)`` passes through."""
        return x if x.ndim == 3 else self.encode(x)[0]

    def forward_head(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, T, D)`` -> logits ``(B, K)`` and context ``(B, 2H)``."""
        logits, context, _ = self.head(features)
        return logits, context

    def forward(self, x: Tensor) -> ModelOutput:
        maps: dict[str, Tensor] = {}
        if x.ndim == 3:
            emb = x
        else:
            emb, maps = self.encode(x)
        logits, context, a = self.head(emb)
        maps = dict(maps)
        maps["sequence_attention"] = a
        return ModelOutput(logits=logits, features=emb, embedding=context, maps=maps)


def _checkpoint_of(spec: str) -> Path:
    p = Path(spec).expanduser()
    if p.is_dir():
        for name in ("best.ckpt", "last.ckpt"):
            if (p / "checkpoints" / name).is_file():
                return p / "checkpoints" / name
        raise WeightsNotFoundError(f"{p}: no checkpoints/best.ckpt or last.ckpt; give a trained run folder "
                                   "(`chestdx train att2 ...`) or a .ckpt file as model.params.encoder")
    if not p.is_file():
        raise WeightsNotFoundError(f"encoder {p} not found; give a trained run folder or a .ckpt file as "
                                   "model.params.encoder (or 'none' for a random frozen encoder, tests only)")
    return p


def _read_encoder(spec: str) -> tuple[dict[str, Any], dict[str, Tensor], int | None]:
    """The description, the weights and the input channels of the trained slice model in ``spec``.

    The checkpoint's recipe is read as plain data (its model section, class names and image size),
    not validated as a whole recipe: a model is built without :mod:`chestdx.config`.
    """
    from chestdx.engine.safe_load import read_checkpoint

    path = _checkpoint_of(spec)
    ckpt = read_checkpoint(path)  # weights_only: a pickle that would run code is refused
    hp = ckpt.get("hyper_parameters", {})
    if not isinstance(hp, dict):
        raise ConfigError(f"{path}: not a chestdx training checkpoint (hyper_parameters is not a dict)")
    if "recipe" not in hp or "state_dict" not in ckpt:
        raise ConfigError(f"{path}: not a chestdx training checkpoint (no recipe / state_dict)")
    recipe: Any = hp["recipe"]
    try:
        description: dict[str, Any] = {"model": dict(recipe["model"]),
                                       "num_classes": len(recipe["data"]["class_names"]),
                                       "image_size": int(recipe["data"]["image_size"])}
    except (AttributeError, KeyError, TypeError, ValueError):
        raise ConfigError(f"{path}: not a chestdx training checkpoint (its recipe has no model section, "
                          "data.class_names or data.image_size)") from None
    if description["model"].get("name") == "att2_bilstm":  # this module's own model: not a slice encoder
        raise ConfigError(f"{path}: the encoder must be a slice model, this run is a sequence model")
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    return description, state, hp.get("in_chans")


def encoder_description(spec: str) -> dict[str, Any]:
    """What a trained slice run (run folder or ``.ckpt`` of ``chestdx train``) is, as a sequence
    model's inline ``model.params.encoder`` (what a model bundle stores): ``{"model": its recipe's
    model section, "num_classes": K, "image_size": S}``.

    Raises:
        WeightsNotFoundError: no such folder / file, or no checkpoint in the run.
        RunError: a file that is not a checkpoint, or one that would run code when read.
        ConfigError: the checkpoint holds no chestdx recipe, or a sequence model.
    """
    return _read_encoder(spec)[0]


def _build_encoder(description: dict[str, Any], section: Any, in_chans: int) -> ChestModel:
    """An untrained encoder from its description; its model section is validated by the schema of
    ``section`` (the model section that names the encoder: a :class:`chestdx.config.ModelConfig`)."""
    enc_cfg = type(section).model_validate({**description["model"], "weights": "none"})
    return build_model(enc_cfg, int(description["num_classes"]), in_chans)


def load_encoder(spec: str, section: Any, in_chans: int = 1) -> tuple[ChestModel, dict[str, Any]]:
    """Load the trained slice model of a run folder or a Lightning checkpoint of ``chestdx train``.

    Args:
        spec: the run folder or ``.ckpt`` (``model.params.encoder``).
        section: the model section naming it (its schema validates the encoder's model section).
        in_chans: input channels, when the checkpoint does not say.

    Returns:
        the model (eval mode) and its :func:`encoder_description`.

    Raises:
        WeightsNotFoundError, RunError, ConfigError: as :func:`encoder_description`.
    """
    description, state, chans = _read_encoder(spec)
    model = _build_encoder(description, section, chans if chans is not None else in_chans)
    model.load_state_dict(state)
    model.eval()
    return model, description


def build_sequence_classifier(cfg: Any, num_classes: int, in_chans: int = 1, *,
                              encoder: str | dict[str, Any] | None = None, chunk: int = 64,
                              compatibility: str = "parametrised", tail_blocks: int = 3,
                              precompute_embeddings: bool = False) -> SequenceClassifier:
    """The ``att2_bilstm`` model of a recipe's ``model`` section (``cfg``; its ``params`` are the
    keywords).

    Args:
        encoder: a trained ATT2 run folder or checkpoint; a dict ``{model, num_classes, image_size}``
            describing it (:func:`encoder_description`), whose weights are loaded afterwards, as in
            model bundles; ``none`` builds a random frozen :class:`~chestdx.models.attention.ResNetATT2`
            from ``model.backbone`` - for tests only.
        chunk: slices per encoder call.
        compatibility, tail_blocks: of the random encoder (``encoder: none``).
        precompute_embeddings: read by the data module (engine/datamodule.py), which then embeds every
            slice once and serves ``(B, T, D)``; no image augmentation then; needs a trained ``encoder``.

    ``model.head_hidden`` is the LSTM size.

    Raises:
        WeightsNotFoundError: the encoder is missing.
        ConfigError: no encoder given.
    """
    from chestdx.models.attention import ResNetATT2

    encoder_size: int | None = None
    if encoder is None:
        raise ConfigError("model att2_bilstm needs model.params.encoder: a trained slice run folder or checkpoint "
                          "(`chestdx train att2 ... --out RUN`, then --set model.params.encoder=RUN), or 'none' "
                          "for a random frozen encoder (tests only)")
    spec = encoder if isinstance(encoder, dict) else str(encoder)
    chunk = int(chunk)
    compatibility = str(compatibility)
    tail_blocks = int(tail_blocks)
    net: ChestModel
    if isinstance(spec, dict):
        # an inline encoder description (what a model bundle stores): its recipe's model section,
        # class count and image size; the weights come with the sequence model's own state dict
        net = _build_encoder(spec, cfg, in_chans)
        encoder_size = spec.get("image_size")
    elif spec.lower() in ("none", "", "null"):
        log.warning("att2_bilstm: no trained encoder given (model.params.encoder); using a random frozen "
                    "ResNetATT2 (%s) - useful for tests only", cfg.backbone)
        net = ResNetATT2(num_classes, cfg.backbone, in_chans, "none", compatibility, tail_blocks)
    else:
        net, description = load_encoder(spec, cfg, in_chans)
        encoder_size = description["image_size"]
    hidden = int(cfg.head_hidden) if cfg.head_hidden and cfg.head_hidden > 0 else 256
    model = SequenceClassifier(net, num_classes, hidden, cfg.dropout, chunk)
    model.encoder_image_size = encoder_size
    return model


@MODELS.register("att2_bilstm", accepts=build_sequence_classifier)
def _att2_bilstm(cfg: Any, num_classes: int, in_chans: int) -> ChestModel:
    """Frozen slice encoder + Bi-LSTM with soft attention; ``params``: encoder, chunk, compatibility,
    tail_blocks, precompute_embeddings (:func:`build_sequence_classifier`)."""
    return build_sequence_classifier(cfg, num_classes, in_chans, **cfg.params)
