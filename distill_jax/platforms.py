"""Which JAX platforms a command starts: keeps libtpu quiet on machines without a TPU.

With libtpu installed (the [tpu] extra, the test venv) JAX initializes its TPU plugin on every
start, and on a machine without a TPU that prints several lines of libtpu start-up errors before
falling back to the CPU. `choose_platforms` sets JAX_PLATFORMS, before JAX initializes a backend,
to the platforms this machine has, unless:
  - JAX_PLATFORMS is already set (the user's choice wins),
  - libtpu is not installed (nothing to quiet),
  - a TPU is present (a Google TPU on the PCI bus, /dev/accel*, or /dev/vfio devices), or
  - the caller asks for TPU (wants_tpu=True: e.g. compiling for a TPU topology without one).
"""

from __future__ import annotations

import glob
import importlib.util
import os

GOOGLE_PCI_VENDOR = "0x1ae0"  # the vendor id of Cloud TPU chips on the PCI bus


def tpu_present() -> bool:
    """True when this machine has TPU chips (what a TPU VM shows: PCI vendor 0x1ae0, /dev/accel*
    or /dev/vfio/<n>)."""
    if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
        return True
    for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            with open(vendor) as f:
                if f.read().strip() == GOOGLE_PCI_VENDOR:
                    return True
        except OSError:
            continue
    return False


def libtpu_installed() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def _gpu_platforms() -> list[str]:
    """'cuda' / 'rocm' when the device and JAX's plugin for it are both present."""
    out = []
    if glob.glob("/dev/nvidia[0-9]*") and any(
            importlib.util.find_spec(m) for m in ("jax_cuda12_plugin", "jax_cuda13_plugin")):
        out.append("cuda")
    if os.path.exists("/dev/kfd") and any(
            importlib.util.find_spec(m) for m in ("jax_rocm60_plugin", "jax_rocm7_plugin")):
        out.append("rocm")
    return out


def choose_platforms(wants_tpu: bool = False) -> str | None:
    """Sets JAX_PLATFORMS to this machine's non-TPU platforms (e.g. 'cpu', 'cuda,cpu') when libtpu
    would only print errors (see the module docstring); returns what it set, None when it left
    JAX_PLATFORMS alone. Call before JAX initializes a backend (before jax.devices())."""
    if os.environ.get("JAX_PLATFORMS") or wants_tpu or not libtpu_installed() or tpu_present():
        return None
    platforms = ",".join(_gpu_platforms() + ["cpu"])
    os.environ["JAX_PLATFORMS"] = platforms
    try:  # jax may already be imported (not yet initialized): its config read the env at import
        import sys
        if "jax" in sys.modules:
            sys.modules["jax"].config.update("jax_platforms", platforms)
    except Exception:  # noqa: BLE001 (an old jax without the option: the env var still applies)
        pass
    return platforms
