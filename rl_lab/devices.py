"""Which torch device a command runs on: ``--device auto|cpu|cuda[:N]``, checked before anything is created.

``auto`` is the first CUDA device when torch sees one, else the CPU. Whatever the device, the
commands keep one torch CPU thread by default (``TrainConfig.torch_threads``): the lab's networks
are small and a busy machine's second core is worth more to the environments.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

from rl_lab.errors import LabError

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def check_device_text(text: str) -> str:
    """``text`` if it is of the form ``auto|cpu|cuda[:N]`` (no torch import), else raise ``LabError``."""
    if not isinstance(text, str) or not DEVICE_PATTERN.match(text.strip().lower()):
        raise LabError(f"--device must be {DEVICE_CHOICES}, got {str(text)[:40]!r}")
    return text.strip().lower()


def resolve_device(text: str | None) -> str:
    """The concrete device (``"cpu"`` or ``"cuda:N"``) for ``--device text`` (``None`` means ``auto``).

    Raises
    ------
    LabError
        For an unknown form, or a CUDA device this machine does not have (one line, before
        anything is created).
    """
    text = check_device_text(text or "auto")
    if text == "cpu":
        return "cpu"
    import torch

    available = torch.cuda.is_available()
    count = torch.cuda.device_count() if available else 0
    if text == "auto":
        return "cuda:0" if count else "cpu"
    index = int(text.split(":", 1)[1]) if ":" in text else 0
    if not count:
        raise LabError(f"--device {text}: torch sees no CUDA device on this machine "
                       f"(torch {torch.__version__}); use --device cpu or auto")
    if index >= count:
        raise LabError(f"--device {text}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return f"cuda:{index}"


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run the block with one torch CPU thread, restoring the previous count after (recording,
    steering and splicing feed the network one sample or one small batch at a time: a second
    intra-op thread only adds synchronisation, measured 10x slower on a busy 2-core machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)

