"""Model kinds: the ``[model]`` section and the registry from ``model.net`` to the networks it
builds (a denoiser's net, a noise-conditional classifier's net of that size, and the net of a
discrete-state model). Adding a network is one ``NetKind`` entry in ``NETS``."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from rediff.discrete import DiscreteProcess, InsDelProcess, insdel_net
from rediff.model import TimeInput
from rediff.nets import MLP, Head, LevelsNet, NoiseClassifier, Transformer, UNet
from rediff.parametrization import Target

Shape = tuple[int, ...]


@dataclass(frozen=True)
class NetKind:
    """A registered network: ``denoiser(model_config, shape)`` builds the net of a
    DiffusionModel for data of per-sample ``shape``, ``classifier(model_config, shape)`` the
    net of a NoisyClassifier (logits over ``model.num_classes``), ``discrete(model_config,
    shape, process)`` the net of a DiscreteModel (logits over the process's categories),
    ``autoregressive(model_config, shape, categories)`` the causal net of an
    AutoregressiveModel, ``insdel(model_config, shape, process, max_length)`` the net of an
    InsDelModel; each refuses a shape it cannot take, and None marks a form the network
    does not have."""

    name: str
    denoiser: Callable[[ModelConfig, Shape], nn.Module] | None
    classifier: Callable[[ModelConfig, Shape], nn.Module] | None
    discrete: Callable[[ModelConfig, Shape, DiscreteProcess], nn.Module] | None = None
    autoregressive: Callable[[ModelConfig, Shape, int], nn.Module] | None = None
    insdel: Callable[[ModelConfig, Shape, InsDelProcess, int], nn.Module] | None = None

    @classmethod
    def parse(cls, value: NetKind | str, what: str = "model.net") -> NetKind:
        """The registered network called ``value``, or a ValueError listing them."""
        if isinstance(value, NetKind):
            return value
        if value not in NETS:
            raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(map(repr, NETS))}")
        return NETS[value]

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class ModelConfig:
    """The ``[model]`` section."""

    net: NetKind | str = "mlp"
    # v by default: briefly trained eps models sent a few ODE samples (ddim, dpm++2m) far off
    # the 2-D data while v and x0 models did not (measured on moons, 800 steps)
    target: Target = Target.V
    time_input: TimeInput = TimeInput.T
    time_scale: float = 1000.0
    sigma_data: float = 0.5
    width: int = 256  # mlp
    depth: int = 4  # mlp
    num_classes: int = 0  # 0: unconditional
    dropout: float = 0.0  # unet_*, transformer
    learned_variance: bool = False  # the net also outputs DDPM's reverse variance (hybrid loss)
    head: Head = Head.LOGITS  # discrete unet_*: K logits per pixel, or a discretised logistic
    heads: int = 4  # transformer: attention heads (its width and depth: model.width, depth)
    time_conditioning: bool = True  # transformer: false ignores t (MDLM's masked diffusion)
    # diffusers_unet2d: UNet2DModel's own keys (rediff export --diffusers writes them back)
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D")
    up_block_types: tuple[str, ...] = ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D")
    norm_num_groups: int = 32

    def __post_init__(self) -> None:
        object.__setattr__(self, "net", NetKind.parse(self.net))
        object.__setattr__(self, "target", Target.parse(self.target, "model.target"))
        object.__setattr__(self, "time_input", TimeInput.parse(self.time_input, "model.time_input"))
        object.__setattr__(self, "head", Head.parse(self.head, "model.head"))


def _common(m: ModelConfig) -> dict:
    return dict(
        time_scale=m.time_scale,
        num_classes=m.num_classes or None,
        outputs=2 if m.learned_variance else 1,
    )


def _mlp(m: ModelConfig, shape: Shape) -> nn.Module:
    return MLP(math.prod(shape), m.width, m.depth, **_common(m))


def _mlp_classifier(m: ModelConfig, shape: Shape) -> nn.Module:
    return MLP(
        math.prod(shape), m.width, m.depth, time_scale=m.time_scale, out_features=m.num_classes
    )


def _fits(name: str, net, shape: Shape):
    """``net`` if it takes images of ``shape``, else a ValueError saying what to change."""
    expected = (net.channels, net.resolution, net.resolution)
    if tuple(shape) != expected:
        raise ValueError(
            f"model.net = {name!r} takes images {list(expected)}, but the data are "
            f"{list(shape)}; pick the matching preset or resize the data"
        )
    return net


def _levels(name: str, preset) -> Callable[[ModelConfig, Shape, DiscreteProcess], nn.Module]:
    """The discrete form of a UNet preset: a LevelsNet around the preset built with a [MASK]
    indicator per channel (absorbing processes) and K logits (or 2 logistic parameters) per
    pixel."""

    def build(m: ModelConfig, shape: Shape, process: DiscreteProcess) -> nn.Module:
        masked = process.mask is not None
        if m.head is Head.LOGISTIC and not process.ordinal:
            raise ValueError(
                f"model.head = 'logistic' needs ordinal levels; the {process.kind.value!r} "
                "process treats the values as unordered: use model.head = 'logits'"
            )
        outputs = 2 if m.head is Head.LOGISTIC else process.categories
        channels = shape[0] if len(shape) == 3 else 1  # a wrong shape is refused by _fits
        net = preset(
            dropout=m.dropout,
            time_scale=m.time_scale,
            num_classes=m.num_classes or None,
            outputs=outputs,
            in_channels=channels * (2 if masked else 1),
        )
        return LevelsNet(_fits(name, net, shape), process.categories, masked, m.head)

    return build


def _unet(name: str, denoiser, classifier) -> NetKind:
    """A UNet preset: the denoiser, the encoder classifier of the same size, and the
    discrete form."""
    return NetKind(
        name,
        lambda m, shape: _fits(name, denoiser(dropout=m.dropout, **_common(m)), shape),
        lambda m, shape: _fits(
            name,
            classifier(num_classes=m.num_classes, dropout=m.dropout, time_scale=m.time_scale),
            shape,
        ),
        _levels(name, denoiser),
    )


def _sequence_transformer(
    m: ModelConfig, shape: Shape, categories: int, states: int, causal: bool
) -> nn.Module:
    """A transformer over sequences [L] of tokens."""
    if len(shape) != 1:
        raise ValueError(
            f"model.net = 'transformer' takes token sequences [N, L], but the data are "
            f"{list(shape)} per sample; use a unet preset for images"
        )
    return Transformer(
        categories,
        states,
        shape[0],
        width=m.width,
        depth=m.depth,
        heads=m.heads,
        dropout=m.dropout,
        time_scale=m.time_scale,
        num_classes=m.num_classes or None,
        causal=causal,
        time_conditioning=m.time_conditioning and not causal,
    )


def _transformer(m: ModelConfig, shape: Shape, process: DiscreteProcess) -> nn.Module:
    """The bidirectional transformer of a discrete or masked process ([MASK] embedded)."""
    return _sequence_transformer(m, shape, process.categories, process.num_states, False)


def _causal_transformer(m: ModelConfig, shape: Shape, categories: int) -> nn.Module:
    """The causal transformer of the autoregressive baseline (BOS embedded as state K)."""
    return _sequence_transformer(m, shape, categories, categories + 1, True)


def _insdel_transformer(
    m: ModelConfig, shape: Shape, process: InsDelProcess, max_length: int
) -> nn.Module:
    """The bidirectional transformer of an insertion/deletion model (``insdel_net``)."""
    if len(shape) != 1:
        raise ValueError(
            f"an insertion/deletion model takes token sequences [N, L], but the data are "
            f"{list(shape)} per sample"
        )
    options = {"width": m.width, "depth": m.depth, "heads": m.heads, "dropout": m.dropout}
    return insdel_net(
        process, max_length, time_scale=m.time_scale, num_classes=m.num_classes or None, **options
    )


def _diffusers_unet2d(m: ModelConfig, shape: Shape) -> nn.Module:
    """diffusers' UNet2DModel with the ``[model]`` section's UNet2DModel keys (needs the
    ``diffusers`` extra)."""
    from rediff.interop import build_unet2d

    if len(shape) != 3 or shape[1] != shape[2]:
        raise ValueError(
            f"model.net = 'diffusers_unet2d' takes square images [C, H, H], but the data are "
            f"{list(shape)} per sample"
        )
    keys = ("block_out_channels", "layers_per_block", "down_block_types", "up_block_types")
    return build_unet2d(
        shape,
        **{key: getattr(m, key) for key in (*keys, "norm_num_groups", "dropout", "time_scale")},
        outputs=2 if m.learned_variance else 1,
        num_classes=m.num_classes,
    )


#: every registered network, by ``model.net``
NETS: dict[str, NetKind] = {
    "mlp": NetKind("mlp", _mlp, _mlp_classifier),
    "unet_digits": _unet("unet_digits", UNet.digits, NoiseClassifier.digits),
    "unet_cifar10": _unet("unet_cifar10", UNet.cifar10, NoiseClassifier.cifar10),
    "diffusers_unet2d": NetKind("diffusers_unet2d", _diffusers_unet2d, None),
    "transformer": NetKind(
        "transformer", None, None, _transformer, _causal_transformer, _insdel_transformer
    ),
}
