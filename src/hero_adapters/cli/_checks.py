"""The checks every command runs before anything expensive: output paths, prompts, the ``--set`` fields against
the presets and the encoder depth in the checkpoint's ``config.json``, and ``--clip``'s config."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hero_core import HeroError, presets

from .._paths import check_path, exists
from ..rows import check_placeholders
from ._args import _one_line, _Override

#: What ``hero layers --images FOLDER`` takes from a folder (and the picture suffixes an output may have).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
#: Preset fields that name encoder layers (checked against the encoder's depth).
LAYER_FIELDS = ("low_layers", "high_layers", "layer", "allocator_layer", "selector_layer")


def _positive(flag: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise HeroError.field(flag, value, "an int >= 1")


def _image_formats() -> tuple[str, ...]:
    """The picture suffixes Pillow can write here (of ``IMAGE_SUFFIXES``)."""
    from ..extras import require

    image_module = require("PIL.Image")
    image_module.init()
    known = image_module.registered_extensions()
    return tuple(s for s in IMAGE_SUFFIXES if known.get(s) in image_module.SAVE)


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return exists(a) and exists(b) and os.path.samefile(a, b)
    except OSError:
        return False


def _check_outputs(
    outputs: Sequence[tuple[str, Path | None, str]],
    inputs: Sequence[tuple[str, Path]] = (),
    folders: Sequence[tuple[str, str | Path | None]] = (),
) -> None:
    """Refuse, before anything runs, an output that cannot be what its flag writes.

    Args:
        outputs: (flag, path or None, kind) with kind ``"image"`` (needs a picture suffix Pillow writes) or
            ``"json"`` (must not have a picture suffix).
        inputs: (flag, path) of every file read: an output must not be one of them.
        folders: (flag, path) of checkpoint folders read: an output must not lie inside one.
    """
    written: list[tuple[str, Path]] = []
    for flag, path, kind in outputs:
        if path is None:
            continue
        check_path(flag, path)
        if path.is_dir():
            raise HeroError.field(flag, str(path), "a file path, not a directory", "Name a file inside it.")
        suffix = path.suffix.lower()
        if kind == "image":
            formats = _image_formats()
            if suffix not in formats:
                raise HeroError.field(
                    flag, str(path), f"a picture file name ending in one of {', '.join(formats)}", "E.g. kept.png."
                )
        elif suffix in IMAGE_SUFFIXES:
            raise HeroError.field(flag, str(path), "a JSON file name, e.g. out.json, not a picture's")
        folder = path.resolve().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise HeroError.field(flag, str(path), "a file in an existing, writable folder")
        for source, read in inputs:
            if _same_file(path, read):
                raise HeroError.field(
                    flag, str(path), f"a file other than {source} (it would be overwritten)", "Name a new file."
                )
        for source, checkpoint in folders:
            if (
                checkpoint is not None
                and Path(checkpoint).is_dir()
                and path.resolve().is_relative_to(Path(checkpoint).resolve())
            ):
                raise HeroError.field(flag, str(path), f"a path outside the {source} checkpoint folder")
        for other, earlier in written:
            if _same_file(path, earlier):
                raise HeroError.field(flag, str(path), f"a file other than {other}'s", "Name two different files.")
        written.append((flag, path))


def _check_prompt(flag: str, prompt: str) -> None:
    if not prompt.strip():
        raise HeroError.field(
            flag, prompt, "a non-empty question / instruction", "E.g. 'What is written on the sign?'."
        )
    check_placeholders(flag, prompt)


def _check_clip(source: str) -> None:
    """``--clip``'s config, read before anything loads: a directory with a config.json, or a cached hub id, of a
    full CLIP model."""
    from ..extras import require

    transformers = require("transformers")
    local = Path(source)
    if exists(local) and not (local / "config.json").is_file():
        raise HeroError.field("--clip", source, "a CLIP checkpoint directory with a config.json, or a cached hub id")
    try:
        config = transformers.AutoConfig.from_pretrained(
            source, local_files_only=exists(local) and local.is_dir(), trust_remote_code=False
        )
    except (OSError, ValueError) as error:
        from ..evaluate import refused_checkpoint

        raise refused_checkpoint("--clip", source, error) or HeroError.field(
            "--clip",
            source,
            "a CLIP checkpoint directory or a cached hub id",
            "Check the path (a hub id is read from the local cache when HF_HUB_OFFLINE=1).",
        ) from error
    from ..text_scorers.transformers import check_clip_config

    check_clip_config(config, "--clip", f"{source} is not one.")
    _check_weights("--clip", source)


#: safetensors refuses headers over 100 MB; a larger length is a damaged file, not a header to read.
_HEADER_MAX = 100_000_000


def _checkpoint_folder(source: str) -> Path | None:
    """The local folder holding a checkpoint's files: ``source`` itself, or a cached hub id's snapshot (None when
    neither is found: the loader then reports it)."""
    local = Path(source)
    if exists(local):
        return local if local.is_dir() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, "config.json")
    except (ImportError, ValueError, OSError):  # not a hub id either
        return None
    return Path(cached).parent if isinstance(cached, str) else None


def _safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole safetensors file (empty, cut short, a damaged header), or None. Reads the
    header alone: 8 bytes of length, the JSON header, whose tensors' ``data_offsets`` must end at the file's end."""
    try:
        size = path.stat().st_size
        with path.open("rb") as file:
            head = file.read(8)
            if len(head) < 8:
                return f"it is {size} bytes long: empty or cut short"
            length = int.from_bytes(head, "little")
            if length > min(size - 8, _HEADER_MAX):
                return f"it is {size} bytes long, shorter than its own header ({length} bytes): cut short or damaged"
            header = json.loads(file.read(length))
    except OSError as error:
        return f"it cannot be read ({error.strerror or error})"
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return "its header is not valid JSON: the file is damaged"
    if not isinstance(header, dict):
        return "its header is not a JSON object: the file is damaged"
    ends = [
        entry["data_offsets"][1]
        for name, entry in header.items()
        if name != "__metadata__" and isinstance(entry, dict) and isinstance(entry.get("data_offsets"), list)
        and len(entry["data_offsets"]) == 2 and isinstance(entry["data_offsets"][1], int)
    ]  # fmt: skip
    expected = 8 + length + max(ends, default=0)
    if size < expected:
        return f"it is {size} bytes long, its header says {expected}: cut short"
    return None


def _check_weights(flag: str, source: str) -> None:
    """Every ``*.safetensors`` file of the checkpoint ``flag`` names is whole (an interrupted download leaves a
    file cut short, or empty): read before any weights load, so that it is one line naming the file, not
    safetensors' traceback minutes later."""
    folder = _checkpoint_folder(source)
    if folder is None:
        return
    try:
        files = sorted(folder.glob("*.safetensors"))
    except OSError:  # a folder that may be entered but not listed: the loader reports it
        return
    for path in files:
        problem = _safetensors_problem(path)
        if problem is not None:
            raise HeroError.field(
                flag,
                source,
                "a checkpoint with complete weights files",
                f"{path} is not a whole safetensors file: {problem} (an interrupted download?). Download or copy "
                "it again.",
            )


def _set_error(item: _Override, error: HeroError, preset: str | None) -> HeroError:
    """A preset's message about one ``--set`` field, worded with the flag as typed."""
    message = _one_line(error)
    head, sep, rest = message.partition(" is invalid: ")
    where = f" (preset {preset})" if preset else ""
    if sep and head.partition("=")[0] == item.key:
        return HeroError(f"--set {item.text} is invalid{where}: {rest}")
    return HeroError(f"--set {item.text}{where}: {message}")


def _check_overrides(
    names: Sequence[str],
    ratios: Sequence[float],
    overrides: Sequence[_Override],
    depth: int | None,
    depth_from: str,
) -> dict[str, dict[str, Any]]:
    """Every ``--set`` field checked against the presets it goes to (``route_overrides``), alone and together,
    and its layers against ``depth`` (None: not known yet, checked again once the model has loaded).

    Returns:
        preset -> the fields it receives.
    """
    from ..evaluate import route_overrides

    keys = [item.key for item in overrides]
    reserved = {"name": "--preset", "keep_ratio": "--keep-ratio", "depth": "the encoder depth of --model"}
    for item in overrides:
        if item.key in reserved:
            raise HeroError(
                f"--set {item.text} is invalid: {item.key} is not a preset field; it is set by {reserved[item.key]}."
            )
    twice = [key for i, key in enumerate(keys) if key in keys[:i]]
    if twice:
        raise HeroError.field("--set", twice[0], "each field once", f"{twice[0]} is given twice.")
    by_key = {item.key: item for item in overrides}
    routed = route_overrides(names, depth or presets.PAPER_DEPTH, {item.key: item.value for item in overrides})
    several = len(names) > 1
    for preset in names:
        for key, value in routed[preset].items():
            item = by_key[key]
            if depth is not None and key in LAYER_FIELDS:
                layers = value if isinstance(value, tuple) else (value,)
                if any(isinstance(x, int) and not 0 <= x < depth for x in layers):
                    raise HeroError(
                        f"--set {item.text} is invalid: expected layers in [0, {depth - 1}]: the vision encoder of "
                        f"--model has {depth} layers ({depth_from})."
                    )
            for ratio in ratios:
                try:
                    presets.get(preset, ratio, depth=depth, **{key: value})
                except HeroError as error:
                    raise _set_error(item, error, preset if several else None) from error
        for ratio in ratios:
            try:
                presets.get(preset, ratio, depth=depth, **routed[preset])
            except HeroError as error:
                given = " ".join(f"--set {by_key[key].text}" for key in routed[preset])
                raise HeroError(f"{given}: {_one_line(error)}") from error
    return routed


@dataclass
class _Checked:
    """What the cheap checks found: the device and dtype, the encoder depth from the config (or None)."""

    device: torch.device
    dtype: torch.dtype
    depth: int | None
    config: Any = None  # the checkpoint's transformers config (None: read again when needed)


def _precheck(
    args: argparse.Namespace, names: Sequence[str], ratios: Sequence[float], overrides: Sequence[_Override]
) -> _Checked:
    """The model's config (supported type, encoder depth), the ``--set`` fields and ``--clip``'s config; nothing
    loads."""
    from ..evaluate import device_dtype, host_config

    device, dtype = device_dtype(args.device, args.dtype)
    config = host_config(args.model)
    _check_weights("--model", args.model)
    from ..evaluate import config_depth

    depth = config_depth(config)
    _check_overrides(names, ratios, overrides, depth, "vision_config.num_hidden_layers in its config.json")
    if args.clip is not None:
        _check_clip(args.clip)
    else:
        needing = [name for name in names if presets.get(name, 1.0).needs_token_relevance]
        if needing:  # refused before any weights load (HeroVLM would refuse it after)
            raise HeroError.field(
                "--clip",
                None,
                f"a CLIP checkpoint: preset {needing[0]!r} weighs each token by its CLIP cosine to the instruction",
                "Pass --clip DIR (a CLIP checkpoint directory, e.g. openai/clip-vit-large-patch14-336 saved locally), "
                "or choose a preset that needs no text (divprune, dart).",
            )
    return _Checked(device, dtype, depth, config)
