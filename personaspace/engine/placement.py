"""Where a model's weights are and in what form: what a backend must know before it reads them itself.

A Hugging Face model may be dispatched by accelerate (``device_map`` over several devices, CPU or disk
offload with ``offload_folder``, ``accelerate.cpu_offload``), hold weights on the meta device (offloaded,
or never loaded), or be quantized (torchao, bitsandbytes, GPTQ, ...). Its own forward handles all of
that -- accelerate's hooks fetch offloaded weights and move activations between devices, quantized
layers dequantize -- so the hooks backend runs such models as they are. The fused backend reads and
concatenates weights itself and must step aside: :func:`fast_path_reason` says why.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch


def _hooks(module: Any) -> Iterator[Any]:
    """accelerate's hooks on ``module`` (a ``SequentialHook`` holds several)."""
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return
    inner = getattr(hook, "hooks", None)
    yield from (inner if isinstance(inner, (list, tuple)) else (hook,))


def _place(device: Any) -> str:
    """A ``device_map`` value as text: 'disk', 'cpu', 'cuda:0' (an int indexes the accelerator, CUDA by default)."""
    if isinstance(device, str) and device in ("disk", "meta"):
        return device
    if isinstance(device, int) and not isinstance(device, bool):
        accelerator = torch.accelerator.current_accelerator() if hasattr(torch, "accelerator") else None
        return f"{accelerator.type if accelerator is not None else 'cuda'}:{device}"
    try:
        return str(torch.device(device))
    except (RuntimeError, TypeError, ValueError):
        return str(device)


def _device_map_reason(device_map: Any) -> str | None:
    if not isinstance(device_map, Mapping) or not device_map:
        return None  # "auto", "cpu", ...: known only once the model is loaded
    places = sorted({_place(d) for d in device_map.values()})
    if "disk" in places:
        return "weights offloaded to disk by device_map"
    if len(places) > 1:
        return f"weights spread over {', '.join(places)} by device_map"
    return None


def _method(config: Any) -> str:
    method = config.get("quant_method") if isinstance(config, Mapping) else getattr(config, "quant_method", None)
    method = getattr(method, "value", method)
    return str(method or type(config).__name__)


def placement_reason(hf_model: Any) -> str | None:
    """Why the weights are not all in memory on one device (disk or CPU offload, several devices, meta
    weights), or None when they are."""
    reason = _device_map_reason(getattr(hf_model, "hf_device_map", None))
    if reason:
        return reason
    if any(getattr(hook, "offload", False) for module in hf_model.modules() for hook in _hooks(module)):
        return "weights offloaded by accelerate"
    devices = {p.device for p in hf_model.parameters()}
    if any(d.type == "meta" for d in devices):
        return "weights on the meta device (offloaded, or not loaded)"
    if len(devices) > 1:
        return f"weights on several devices ({', '.join(sorted(str(d) for d in devices))})"
    return None


def quantization_reason(hf_model: Any) -> str | None:
    """How the weights are quantized (a quantization config, tensor-subclass or integer weights), or None."""
    quantizer = getattr(hf_model, "hf_quantizer", None)
    config = getattr(getattr(hf_model, "config", None), "quantization_config", None)
    config = getattr(quantizer, "quantization_config", None) or config
    if config is not None:
        return f"quantized weights ({_method(config)})"
    for name, param in hf_model.named_parameters():
        if type(param) not in (torch.nn.Parameter, torch.Tensor):
            return f"quantized weights ({type(param).__name__} at {name})"
        if not param.is_floating_point():
            return f"quantized weights ({param.dtype} at {name})"
    return None


def fast_path_reason(hf_model: Any) -> str | None:
    """Why a backend that reads the weights itself cannot run ``hf_model``: placement or quantization."""
    return placement_reason(hf_model) or quantization_reason(hf_model)


def requested_reason(options: Mapping[str, Any]) -> str | None:
    """What loading with these ``from_pretrained`` options will give that :func:`fast_path_reason` refuses,
    as far as the options alone tell (before any weight loads): a ``device_map`` with disk or several
    devices, a quantization config."""
    reason = _device_map_reason(options.get("device_map"))
    if reason:
        return reason
    if options.get("quantization_config") is not None:
        return f"quantized weights ({_method(options['quantization_config'])})"
    for key in ("load_in_8bit", "load_in_4bit"):
        if options.get(key):
            return f"quantized weights ({key})"
    return None


def input_device(hf_model: Any) -> torch.device:
    """Where a forward's input ids belong.

    For a model dispatched or offloaded by accelerate, the execution device of its input embedding
    (its weights may be on the meta device or on another device); otherwise the device of its first
    weight.
    """
    if getattr(hf_model, "hf_device_map", None) is not None or getattr(hf_model, "_hf_hook", None) is not None:
        for module in (_input_embeddings(hf_model), hf_model):
            for hook in _hooks(module):
                device = getattr(hook, "execution_device", None)
                if device is not None:
                    return torch.device(device)
    param = next(hf_model.parameters(), None)
    if param is None or param.device.type == "meta":
        return torch.device("cpu")
    return param.device


def _input_embeddings(hf_model: Any) -> Any:
    try:
        return hf_model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        return None
