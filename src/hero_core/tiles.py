"""``EncodedTiles``: the validated, frozen implementation of ``TileEncoderOutputs``."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ._device import to_device
from ._errors import HeroError
from .protocols import TileEncoderOutputs

__all__ = ["EncodedTiles"]

_FINITE = "finite values (found NaN or inf)"
_FINITE_FIX = "Check the pixels and the encoder's dtype."


@dataclass(frozen=True)
class EncodedTiles:
    """Encoder outputs for the V views (K tiles + 1 thumbnail) of one image, checked on construction.

    Shapes: ``cls_tokens`` (V, D); ``cls_attention`` (L, V, H, N); ``valid_mask`` (V, N) bool.
    ``tile_grid`` is optional: the (rows, cols) arrangement of the K local tiles in raster order,
    needed only by allocators that map the thumbnail onto the tiles (``ThumbnailAttentionAllocator``).
    ``query_source`` names what stood in for the CLS query ("cls", or e.g. "mean-token" for encoders
    without a CLS token); reports show it. ``token_features`` is optional: (V, N, D) float, the per-token
    stand-in embeddings (for Qwen-VL hosts, the tower's last hidden states averaged over each merged
    token's patches), read by presets that compare parts of a view with the whole (``presets.hero_native``);
    None when the adapter does not record them.

    Shapes, dtypes, devices and indices are checked on construction, without reading a value. The values
    that planning needs on the host (the valid count of every view, whether ``cls_tokens`` and
    ``cls_attention`` are finite) are read once, by the first ``fetch`` (or ``capacity``), in the same
    host-device transfer as what that call asks for: ``Pruner.plan`` with the built-in allocators and
    selectors makes one host sync per image. NaN/inf are refused then.

    Raises:
        HeroError: on a wrong rank, disagreeing shapes, a non-float dtype, a thumbnail index out of range
            or a bad layer list; NaN/inf at the first ``fetch``.
    """

    cls_tokens: Tensor
    cls_attention: Tensor
    attention_layers: tuple[int, ...]
    valid_mask: Tensor
    thumbnail_index: int
    grid: tuple[int, int]
    tile_grid: tuple[int, int] | None = None
    query_source: str = field(default="cls")
    token_features: Tensor | None = None
    token_relevance: Tensor | None = None

    def __post_init__(self) -> None:
        cls_tokens, attn, valid = self.cls_tokens, self.cls_attention, self.valid_mask
        _check_tensor("cls_tokens", cls_tokens, 2, "(V, D)")
        _check_tensor("cls_attention", attn, 4, "(L, V, H, N)")
        if not isinstance(valid, Tensor) or valid.dim() != 2 or valid.dtype != torch.bool:
            raise HeroError.field("valid_mask", valid, "a (V, N) bool tensor", "Build it with `tensor.bool()`.")
        num_views, num_tokens = valid.shape
        if num_views < 1 or num_tokens < 1:
            raise HeroError.field("valid_mask", valid, "at least one view and one token")
        if cls_tokens.shape[0] != num_views:
            raise HeroError.field(
                "cls_tokens", cls_tokens, f"{num_views} rows, one per view (valid_mask has {num_views} views)"
            )
        if attn.shape[1] != num_views or attn.shape[3] != num_tokens:
            raise HeroError.field(
                "cls_attention",
                attn,
                f"shape (L, {num_views}, H, {num_tokens}) to agree with valid_mask (V={num_views}, N={num_tokens})",
                "Drop the CLS column: keep only the N patch keys.",
            )
        if attn.shape[2] < 1:
            raise HeroError.field("cls_attention", attn, "at least one head")
        features = self.token_features
        if features is not None:
            _check_tensor("token_features", features, 3, "(V, N, D)")
            if features.shape[0] != num_views or features.shape[1] != num_tokens or features.shape[2] < 1:
                raise HeroError.field(
                    "token_features",
                    features,
                    f"shape ({num_views}, {num_tokens}, D) to agree with valid_mask (V={num_views}, N={num_tokens}), "
                    "or None",
                    "One embedding per patch token of every view, in raster order.",
                )
        relevance = self.token_relevance
        if relevance is not None:
            _check_tensor("token_relevance", relevance, 2, "(V, N)")
            if tuple(relevance.shape) != (num_views, num_tokens):
                raise HeroError.field(
                    "token_relevance",
                    relevance,
                    f"shape ({num_views}, {num_tokens}) to agree with valid_mask (V={num_views}, N={num_tokens}), "
                    "or None",
                    "One raw CLIP cosine to the instruction per patch token of every view, in raster order.",
                )
        devices = {cls_tokens.device, attn.device, valid.device}
        for extra in (features, relevance):
            if extra is not None:
                devices.add(extra.device)
        if len(devices) != 1:
            raise HeroError.field(
                "EncodedTiles devices", sorted(map(str, devices)), "one device", "Move all tensors with .to(device)."
            )
        layers = self.attention_layers
        if (
            not isinstance(layers, tuple)
            or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in layers)
            or len(set(layers)) != len(layers)
            or len(layers) != attn.shape[0]
        ):
            raise HeroError.field(
                "attention_layers",
                layers,
                f"a tuple of {attn.shape[0]} distinct non-negative ints, one per entry of cls_attention's L axis",
            )
        index = self.thumbnail_index
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < num_views:
            raise HeroError.field("thumbnail_index", index, f"an int in [0, {num_views - 1}]")
        _check_pair("grid", self.grid)
        if self.grid[0] * self.grid[1] != num_tokens:
            raise HeroError.field("grid", self.grid, f"rows * cols == N == {num_tokens}")
        if self.tile_grid is not None:
            _check_pair("tile_grid", self.tile_grid)
            if self.tile_grid[0] * self.tile_grid[1] != num_views - 1:
                raise HeroError.field(
                    "tile_grid", self.tile_grid, f"rows * cols == K == {num_views - 1} local tiles, or None"
                )

    @classmethod
    def from_outputs(cls, outputs: TileEncoderOutputs) -> EncodedTiles:
        """Validate any object that satisfies ``TileEncoderOutputs`` (returns it as is if already checked)."""
        if isinstance(outputs, EncodedTiles):
            return outputs
        try:
            return cls(
                cls_tokens=outputs.cls_tokens,
                cls_attention=outputs.cls_attention,
                attention_layers=tuple(outputs.attention_layers),
                valid_mask=outputs.valid_mask,
                thumbnail_index=outputs.thumbnail_index,
                grid=tuple(outputs.grid),  # type: ignore[arg-type]
                tile_grid=getattr(outputs, "tile_grid", None),
                query_source=getattr(outputs, "query_source", "cls"),
                token_features=getattr(outputs, "token_features", None),
                token_relevance=getattr(outputs, "token_relevance", None),
            )
        except (AttributeError, TypeError) as error:
            raise HeroError.field(
                "tiles", outputs, "an object with the TileEncoderOutputs attributes", f"Missing: {error}."
            ) from error

    @property
    def num_views(self) -> int:
        """V, the number of views (local tiles + thumbnail)."""
        return int(self.valid_mask.shape[0])

    @property
    def num_tokens(self) -> int:
        """N, the patch tokens per view."""
        return int(self.valid_mask.shape[1])

    @property
    def device(self) -> torch.device:
        return self.valid_mask.device

    @property
    def capacity(self) -> tuple[int, ...]:
        """Valid tokens of every view, as Python ints (one host sync the first time, none after)."""
        known = self.known_capacity
        if known is None:
            self.fetch()
            known = self.known_capacity
        assert known is not None  # set by fetch (or it raised)
        return known

    @property
    def known_capacity(self) -> tuple[int, ...] | None:
        """``capacity`` if it was already read to the host (by a ``fetch``), else None; never syncs."""
        return getattr(self, "_capacity", None)

    def check_later(self, name: str, value: Tensor, expected: str, fix: str = "") -> None:
        """Have the next ``fetch`` refuse ``value`` (any float tensor) with ``HeroError.field(name, ...)`` if it
        holds NaN/inf; checked at once (one sync) if the host facts were already read."""
        if self.known_capacity is not None:
            checked = getattr(self, "_checked", ())
            if any(ref() is value for ref in checked):
                return  # this very tensor was checked already (a plan made again on the same tiles)
            if not bool(torch.isfinite(value).all()):
                raise HeroError.field(name, value, expected, fix)
            object.__setattr__(self, "_checked", (*checked, weakref.ref(value)))
            return
        pending = getattr(self, "_pending", ())
        if not any(item[1] is value for item in pending):
            object.__setattr__(self, "_pending", (*pending, (name, value, expected, fix)))

    def require_finite(self) -> EncodedTiles:
        """Self, once the host facts are read (NaN/inf refused): free after the planner's ``fetch``."""
        _ = self.capacity
        return self

    def fetch(self, *values: Tensor) -> list[list[float]]:
        """``values`` (any shapes) as flat lists of floats, read in ONE host-device transfer together with,
        the first time, this image's host facts (``capacity`` and the finiteness of ``cls_tokens``,
        ``cls_attention`` and anything passed to ``check_later``). Values already on the CPU are read
        directly; values that ``fetch_together`` read already (the very tensors, unchanged) are not read again.

        Raises:
            HeroError: if ``cls_tokens``, ``cls_attention`` or a ``check_later`` value holds NaN/inf.
        """
        read = getattr(self, "_prefetched", ())
        known = [next((got for ref, seen, got in read if ref() is v and seen == _version(v)), None) for v in values]
        if values and self.known_capacity is not None and all(got is not None for got in known):
            return [list(got) for got in known if got is not None]
        return EncodedTiles._read([(self, values)])[0]

    @staticmethod
    def fetch_together(items: Sequence[tuple[EncodedTiles, Sequence[Tensor]]]) -> None:
        """Read every item's ``values`` and, where not read yet, its host facts, in ONE host-device transfer
        per device for the whole list (``Pruner.plan_batch``: one sync for a batch of images). Each tiles'
        next ``fetch`` of those very tensors (unchanged) then returns them without a transfer.

        Raises:
            HeroError: as ``fetch``, for the first item (in order) holding NaN/inf.
        """
        for (tiles, values), got in zip(items, EncodedTiles._read(items), strict=True):
            refs = tuple((weakref.ref(v), _version(v), tuple(g)) for v, g in zip(values, got, strict=True))
            object.__setattr__(tiles, "_prefetched", refs)

    @staticmethod
    def _read(items: Sequence[tuple[EncodedTiles, Sequence[Tensor]]]) -> list[list[list[float]]]:
        """The transfers behind ``fetch`` and ``fetch_together``: one ``tolist`` per device."""
        plans: list[tuple[list[tuple[str, Tensor, str, str]], list[bool]]] = []
        parts: dict[torch.device, list[Tensor]] = {}
        for tiles, values in items:
            checks: list[tuple[str, Tensor, str, str]] = []
            device_parts = parts.setdefault(tiles.device, [])
            if tiles.known_capacity is None:
                checks = [
                    ("cls_tokens", tiles.cls_tokens, _FINITE, _FINITE_FIX),
                    ("cls_attention", tiles.cls_attention, _FINITE, _FINITE_FIX),
                    *getattr(tiles, "_pending", ()),
                ]
                flags = torch.stack([torch.isfinite(item[1].to(tiles.device)).all() for item in checks]).double()
                device_parts += [flags, tiles.valid_mask.sum(-1).double()]
            on_host = [v.device.type == "cpu" and tiles.device.type != "cpu" for v in values]
            device_parts += [
                v.detach().reshape(-1).to(tiles.device, torch.float64)
                for v, h in zip(values, on_host, strict=True)
                if not h
            ]
            plans.append((checks, on_host))
        # the one host sync per device
        moved = {device: (torch.cat(chunk).tolist() if chunk else []) for device, chunk in parts.items()}
        out: list[list[list[float]]] = []
        for (tiles, values), (checks, on_host) in zip(items, plans, strict=True):
            rest = moved[tiles.device]
            if checks:
                flags_read, counts = rest[: len(checks)], rest[len(checks) : len(checks) + tiles.num_views]
                rest = rest[len(checks) + tiles.num_views :]
                object.__setattr__(tiles, "_pending", ())  # a refused value does not stay queued for the next call
                for ok, (name, tensor, expected, fix) in zip(flags_read, checks, strict=True):
                    if not ok:
                        raise HeroError.field(name, tensor, expected, fix)
                object.__setattr__(tiles, "_capacity", tuple(int(c) for c in counts))
                object.__setattr__(tiles, "_checked", tuple(weakref.ref(item[1]) for item in checks[2:]))
            got: list[list[float]] = []
            for value, host in zip(values, on_host, strict=True):
                if host:
                    got.append(value.detach().reshape(-1).double().tolist())
                else:
                    got.append(rest[: value.numel()])
                    rest = rest[value.numel() :]
            moved[tiles.device] = rest
            out.append(got)
        return out

    def remember_counts(self, budgets: Tensor, counts: tuple[int, ...]) -> None:
        """Record that ``budgets`` (a tensor an allocator built from host ints) holds ``counts``, so the
        planner checks them without reading the tensor back. An in-place change of ``budgets`` voids it."""
        object.__setattr__(self, "_counts", (budgets, budgets._version, counts))

    def known_counts(self, budgets: Tensor) -> tuple[int, ...] | None:
        """The host ints behind ``budgets`` if ``remember_counts`` recorded this very tensor, unchanged."""
        known = getattr(self, "_counts", None)
        if known is None or known[0] is not budgets or known[1] != budgets._version:
            return None
        return known[2]  # type: ignore[no-any-return]

    def layer_attention(self, layers: tuple[int, ...], *, field: str = "selector layers") -> Tensor:
        """CLS attention of the requested encoder layers: (len(layers), V, H, N), in float32.

        Raises:
            HeroError: if a layer was not recorded by the adapter.
        """
        missing = [layer for layer in layers if layer not in self.attention_layers]
        if missing:
            raise HeroError.field(
                field,
                layers,
                f"layers among the recorded attention_layers {self.attention_layers}",
                f"Layer(s) {missing} were not recorded: let the adapter hook the selector's `.layers`, "
                "or choose recorded layers.",
            )
        index = to_device([self.attention_layers.index(layer) for layer in layers], self.device, torch.long)
        return self.cls_attention.index_select(0, index).float()

    def replace(self, **changes: Any) -> EncodedTiles:
        """A copy with some fields changed (validated again)."""
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}  # the host facts are not copied
        values.update(changes)
        return EncodedTiles(**values)


def _version(value: Tensor) -> int:
    """The in-place version counter of ``value``; -1 for an inference tensor, which keeps none."""
    return -1 if value.is_inference() else int(value._version)


def _check_tensor(name: str, value: object, rank: int, shape: str) -> None:
    if not isinstance(value, Tensor) or value.dim() != rank:
        raise HeroError.field(name, value, f"a {rank}-d float tensor {shape}")
    if not value.dtype.is_floating_point:
        raise HeroError.field(name, value, f"a floating-point tensor {shape}", "Convert it with `.float()`.")


def _check_pair(name: str, value: object) -> None:
    if (
        not isinstance(value, tuple)
        or len(value) != 2
        or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in value)
    ):
        raise HeroError.field(name, value, "a tuple of two positive ints (rows, cols)")
