"""The model-zoo contract: generator networks, strict checkpoint loading, and the GeneratorModel wrapper."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Mapping

import numpy as np
import torch
from torch import nn

from services.common.editing import sample_z

#: Latent space keys of the model zoo and their labels in messages. The contract package (interfacegan.codec,
#: SPACE_KEYS / SPACE_NAMES) maps the proto enum onto exactly these; tests/common/test_spaces.py checks they agree.
SPACES = ("z", "w", "wp")
SPACE_LABELS = {"z": "Z", "w": "W", "wp": "W+"}


class WeightsError(ValueError):
    """A checkpoint that does not match the architecture's published key layout."""


def parse_space(space: str) -> str:
    """Normalises a space name ("Z", "w", "W+", "wp") to one of SPACES."""
    key = space.lower().replace("+", "p")
    if key not in SPACES:
        raise ValueError(f"unknown latent space {space!r}; accepted: Z, W, W+ (wp)")
    return key


class GeneratorNet(nn.Module):
    """Base of every architecture module.

    A network is split in two halves so that backends (ONNX Runtime, CUDA graphs) can run the
    heavy half alone: `synthesis_input` turns codes of any supported space into the synthesis
    network's input (Z for DCGAN/PGGAN, W+ for style-based models; cheap), and `synthesis` turns
    that input into images in [-1, 1] (NCHW, float).
    """

    architecture: ClassVar[str] = ""
    #: Checkpoint keys that hold derived constants: accepted when present, never required.
    ignored_keys: ClassVar[tuple[str, ...]] = ()
    #: Whether half precision is numerically safe for this architecture.
    half_ok: ClassVar[bool] = True
    #: Whether the NHWC (channels-last) layout speeds this architecture up on CPU (oneDNN's preferred layout).
    channels_last_ok: ClassVar[bool] = False
    channels_last: bool = False

    resolution: int
    latent_shapes: dict[str, tuple[int, ...]]
    default_truncation_psi: float = 1.0
    default_truncation_layers: int = 0

    @property
    def synthesis_space(self) -> str:
        """The space `render` consumes."""
        return "z"

    @property
    def style_based(self) -> bool:
        return "w" in self.latent_shapes

    def config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this network (plain types only)."""
        raise NotImplementedError

    def render(self, x: torch.Tensor) -> torch.Tensor:
        """The synthesis network: its input (see `synthesis_space`) -> images in about [-1, 1]."""
        raise NotImplementedError

    def map_z(self, z: torch.Tensor) -> torch.Tensor:
        """Z -> W through the mapping network (style-based models only)."""
        raise NotImplementedError(f"{self.architecture} has no mapping network")

    def w_avg(self) -> torch.Tensor:
        """The mean W used by truncation (style-based models only)."""
        raise NotImplementedError(f"{self.architecture} has no W space")

    def truncate(self, w: torch.Tensor, psi: float, layers: int) -> torch.Tensor:
        """Broadcasts W (N, d) or takes W+ (N, L, d) and pulls the first `layers` layers towards w_avg."""
        num_layers, _ = self.latent_shapes["wp"]
        wp = w.unsqueeze(1).repeat(1, num_layers, 1) if w.dim() == 2 else w
        if psi == 1.0 or layers <= 0:
            return wp
        avg = self.w_avg().to(wp).view(1, 1, -1)
        head = avg + (wp[:, :layers] - avg) * psi
        return torch.cat([head, wp[:, layers:]], dim=1) if layers < num_layers else head

    def normalize_z(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def after_load(self) -> None:
        """Derives constants from loaded weights (e.g. a W average the checkpoint does not store)."""

    def use_channels_last(self) -> None:
        """Stores conv weights NHWC and feeds the synthesis NHWC inputs (same results, faster batches on CPU)."""
        self.to(memory_format=torch.channels_last)
        self.channels_last = True

    def synthesis_input(self, codes: torch.Tensor, space: str, truncation_psi: float | None = None,
                        truncation_layers: int | None = None) -> torch.Tensor:
        """Turns codes of `space` into the input of `render`.

        Style-based models follow genforce/interfacegan: a W code is the untruncated mapping output, and
        truncation (psi toward w_avg on the leading layers) is applied here, to Z and W input alike; a W+
        code already holds its truncation and is used as given.
        """
        if space == "wp":
            return codes
        if space == "z":
            codes = self.normalize_z(codes)
            if not self.style_based:
                return codes
            codes = self.map_z(codes)
        psi = self.default_truncation_psi if truncation_psi is None else truncation_psi
        layers = self.default_truncation_layers if truncation_layers is None else truncation_layers
        return self.truncate(codes, psi, layers)

    def forward(self, codes: torch.Tensor, space: str = "z", truncation_psi: float | None = None,
                truncation_layers: int | None = None) -> torch.Tensor:
        return self.render(self.synthesis_input(codes, space, truncation_psi, truncation_layers))

    # --- checkpoints -------------------------------------------------------------------------------
    @classmethod
    def state_dict_of(cls, checkpoint: Mapping[str, Any]) -> Mapping[str, torch.Tensor]:
        """Extracts the generator's state dict from a checkpoint in the published container layout."""
        return checkpoint

    def checkpoint(self) -> dict[str, Any]:
        """The network's weights in the published container layout (what `state_dict_of` reads)."""
        return dict(self.state_dict())

    def load_checkpoint(self, checkpoint: Mapping[str, Any]) -> None:
        """Loads weights strictly: missing, unexpected or mis-shaped keys are refused and named."""
        if not isinstance(checkpoint, Mapping):
            raise WeightsError(f"checkpoint is a {type(checkpoint).__name__}, expected a dict of tensors")
        state = self.state_dict_of(checkpoint)
        check_state_dict(self, state)
        state = {k: v for k, v in state.items() if k not in self.ignored_keys}
        self.load_state_dict(state, strict=True)


def _listing(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def check_state_dict(net: nn.Module, state: Mapping[str, Any]) -> None:
    """Raises WeightsError naming every missing, unexpected or mis-shaped key of `state`."""
    expected = net.state_dict()
    ignored = set(getattr(net, "ignored_keys", ()))
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected) - ignored)
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    wrong = []
    for key in sorted(set(expected) & set(state)):
        value = state[key]
        if not isinstance(value, torch.Tensor):
            wrong.append(f"{key} is a {type(value).__name__}, not a tensor")
        elif tuple(value.shape) != tuple(expected[key].shape):
            wrong.append(f"{key} has shape {list(value.shape)}, expected {list(expected[key].shape)}")
    if wrong:
        problems.append(f"wrong shapes: {_listing(wrong, 6)}")
    if problems:
        arch = getattr(net, "architecture", type(net).__name__)
        raise WeightsError(f"checkpoint does not match the {arch} layout at resolution "
                           f"{getattr(net, 'resolution', '?')}: " + "; ".join(problems))


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] NCHW float -> [0, 255] NHWC uint8 (rounded, clamped)."""
    return images.float().add(1).mul_(127.5).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registry entry.

    Attributes:
        name: Registry name, e.g. "dcgan-digiface-64".
        architecture: "dcgan", "pggan", "stylegan" or "stylegan2".
        resolution: Output side in pixels.
        weights: A file path, "asset:<file>" for a verified default model file, or "random:<seed>"
            (random weights; tests and benchmarks only).
        version: Registry version of the weights.
        description: Free text (training data, licence, source).
        options: Extra constructor arguments of the architecture (e.g. {"latent_dim": 512}).
    """

    name: str
    architecture: str
    resolution: int
    weights: str
    version: str = "1"
    description: str = ""
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.options)


class GeneratorModel:
    """A loaded generator: latent spaces, seeded sampling and synthesis on one device.

    Attributes:
        spec: The registry entry.
        net: The architecture module (a `GeneratorNet`), in eval mode on `device`.
        device: torch device the model runs on.
        dtype: Compute dtype of the synthesis network (float16 only on CUDA).
        latent_shapes: space -> shape of one code, e.g. {"z": (100,)}.
        resolution: Output images are resolution x resolution x 3.
    """

    backend = "torch"

    def __init__(self, spec: ModelSpec, net: GeneratorNet, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, channels_last: bool | None = None):
        self.spec = spec
        self.device = torch.device(device)
        if dtype == torch.float16 and (self.device.type != "cuda" or not net.half_ok):
            dtype = torch.float32
        self.dtype = dtype
        self.net = net.eval().requires_grad_(False).to(self.device)
        if dtype != torch.float32:
            self.net.to(dtype)
        if channels_last is None:  # measured on the 2-core CPU: DCGAN batch 16 -15% time, batch 1 unchanged
            channels_last = self.device.type == "cpu" and net.channels_last_ok
        if channels_last:
            self.net.use_channels_last()
        self._synthesis_fn = None  # replaced by backends (CUDA graphs, ONNX Runtime)
        self._uint8_fn = None  # synthesis input -> NHWC uint8 in one call (the TorchScript backend)

    # --- description -------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def architecture(self) -> str:
        return self.net.architecture

    @property
    def resolution(self) -> int:
        return self.net.resolution

    @property
    def latent_shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self.net.latent_shapes)

    @property
    def precision(self) -> str:
        return "float16" if self.dtype == torch.float16 else "float32"

    @property
    def default_truncation_psi(self) -> float:
        return self.net.default_truncation_psi

    @property
    def default_truncation_layers(self) -> int:
        return self.net.default_truncation_layers

    def check_codes(self, codes: np.ndarray | torch.Tensor, space: str) -> None:
        """Raises ValueError when `codes` cannot be synthesized (space, shape, finiteness)."""
        if space not in self.net.latent_shapes:
            accepted = ", ".join(SPACE_LABELS[s] for s in self.net.latent_shapes)
            raise ValueError(f"space {SPACE_LABELS.get(space, space)} is not supported by {self.name}; "
                             f"accepted: {accepted}")
        want = self.net.latent_shapes[space]
        if tuple(codes.shape[1:]) != want or len(codes.shape) != len(want) + 1:
            raise ValueError(f"codes have shape {list(codes.shape)}; {SPACE_LABELS[space]} codes of {self.name} "
                             f"have shape [N, {', '.join(map(str, want))}]")
        finite = torch.isfinite(codes).all() if isinstance(codes, torch.Tensor) else np.isfinite(codes).all()
        if not bool(finite):
            raise ValueError("codes contain NaN or Inf")

    # --- sampling ----------------------------------------------------------------------------------
    def sample(self, count: int, seed: int = 0, space: str = "z", truncation_psi: float | None = None,
               truncation_layers: int | None = None) -> np.ndarray:
        """Draws `count` codes of `space`, reproducibly.

        Z codes are N(0, I) from numpy's PCG64 seeded with `seed`, drawn row by row, so the codes of
        (seed, n) are a prefix of those of (seed, n + k) on any device. W codes are the mapping network's
        untruncated outputs for those Z codes (synthesis truncates them, as it does Z input); W+ codes are
        those outputs per layer with the truncation applied (psi on the first `truncation_layers` layers).
        Either way the code of a seed renders the image of that seed's Z code at the same truncation.
        """
        space = parse_space(space)
        if space not in self.net.latent_shapes:
            self.check_codes(np.zeros((1, *self.net.latent_shapes["z"]), np.float32), space)
        z = sample_z(seed, count, tuple(self.net.latent_shapes["z"]))
        if space == "z":
            return z
        if space == "w" and (truncation_psi not in (None, 0, 1) or truncation_layers):
            raise ValueError("W codes are the untruncated mapping output; synthesis truncates them: give "
                             "truncation_psi/truncation_layers to synthesize, or sample W+ codes")
        psi = self.default_truncation_psi if not truncation_psi else float(truncation_psi)
        layers = self.default_truncation_layers if not truncation_layers else int(truncation_layers)
        out = []
        with torch.inference_mode():
            for start in range(0, count, 256):
                zt = torch.from_numpy(z[start:start + 256]).to(self.device)
                w = self.net.map_z(self.net.normalize_z(zt.to(self.dtype))).float()
                if space == "wp":
                    w = self.net.truncate(w, psi, layers)
                out.append(w.float().cpu().numpy())
        return np.concatenate(out).astype(np.float32, copy=False)

    # --- synthesis ---------------------------------------------------------------------------------
    def synthesis_input(self, codes: torch.Tensor, space: str = "z", truncation_psi: float | None = None,
                        truncation_layers: int | None = None) -> torch.Tensor:
        codes = codes.to(self.device, self.dtype)
        psi = None if not truncation_psi else float(truncation_psi)
        layers = None if not truncation_layers else int(truncation_layers)
        return self.net.synthesis_input(codes, parse_space(space), psi, layers)

    def synthesize(self, codes: np.ndarray | torch.Tensor, space: str = "z", *,
                   truncation_psi: float | None = None, truncation_layers: int | None = None,
                   output: str = "float") -> torch.Tensor:
        """Runs the generator on a batch of codes.

        Args:
            codes: (N, d) or (N, L, d) codes of `space`.
            space: "z", "w" or "wp" (W+).
            truncation_psi: For Z and W input of style-based models; None or 0 = model default, 1 = none.
            truncation_layers: For Z and W input of style-based models: leading W+ layers truncated (None
                or 0 = model default).
            output: "float" -> (N, 3, H, W) float tensor in about [-1, 1] on the model's device
                (differentiable unless called under no_grad); "uint8" -> (N, H, W, 3) uint8 CPU tensor.
        """
        space = parse_space(space)
        if isinstance(codes, np.ndarray):
            codes = np.ascontiguousarray(codes, dtype=np.float32)
            codes = torch.from_numpy(codes if codes.flags.writeable else codes.copy())
        self.check_codes(codes, space)
        if output == "uint8":
            with torch.inference_mode():
                x = self.synthesis_input(codes, space, truncation_psi, truncation_layers)
                if self._uint8_fn is not None:
                    return self._uint8_fn(x).cpu()
                images = self._synthesis_fn(x) if self._synthesis_fn else self.net.render(x)
                return to_uint8(images).cpu()
        if output != "float":
            raise ValueError(f"output {output!r}: accepted 'float' or 'uint8'")
        return self.net.render(self.synthesis_input(codes, space, truncation_psi, truncation_layers)).float()

    def __repr__(self) -> str:
        return (f"GeneratorModel({self.name!r}, {self.architecture}, {self.resolution}px, "
                f"spaces={list(self.latent_shapes)}, device={self.device}, {self.precision}, {self.backend})")


def kaiming_scale(fan_in: int, gain: float = math.sqrt(2.0)) -> float:
    """He's constant for equalized learning rate: gain / sqrt(fan_in)."""
    return gain / math.sqrt(fan_in)
