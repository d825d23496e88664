"""NVML used memory of one GPU, sampled every 20 ms in a thread, through ctypes (no pynvml)."""

from __future__ import annotations

import ctypes
import sys
import threading


class _MemV1(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


class _MemV2(ctypes.Structure):
    _fields_ = [
        ("version", ctypes.c_uint),
        ("total", ctypes.c_ulonglong),
        ("reserved", ctypes.c_ulonglong),
        ("free", ctypes.c_ulonglong),
        ("used", ctypes.c_ulonglong),
    ]


class NvmlSampler:
    """Peak of nvmlDeviceGetMemoryInfo().used (v1: total - free, driver reservation included) and,
    where the driver has it, of the v2 `used` that nvidia-smi prints (reservation excluded)."""

    def __init__(self, uuid: str, period_s: float = 0.02):
        self.period_s = period_s
        self.peak_v1 = None
        self.peak_v2 = None
        self.error = None
        self._stop = threading.Event()
        self._thread = None
        try:
            self._lib = ctypes.CDLL("libnvidia-ml.so.1")
            if self._lib.nvmlInit_v2() != 0:
                raise OSError("nvmlInit_v2 failed")
            self._handle = ctypes.c_void_p()
            name = uuid if uuid.startswith(("GPU-", "MIG-")) else "GPU-" + uuid
            rc = self._lib.nvmlDeviceGetHandleByUUID(name.encode(), ctypes.byref(self._handle))
            if rc != 0:
                raise OSError(f"nvmlDeviceGetHandleByUUID({name}) returned {rc}")
            self._has_v2 = hasattr(self._lib, "nvmlDeviceGetMemoryInfo_v2")
        except OSError as e:
            self.error = str(e)
            print(f"probe: NVML unavailable, peak_nvml_used_bytes will be null: {e}", file=sys.stderr)

    def sample(self) -> None:
        m = _MemV1()
        if self._lib.nvmlDeviceGetMemoryInfo(self._handle, ctypes.byref(m)) == 0:
            self.peak_v1 = max(self.peak_v1 or 0, m.used)
        if self._has_v2:
            m2 = _MemV2()
            m2.version = ctypes.sizeof(_MemV2) | (2 << 24)
            if self._lib.nvmlDeviceGetMemoryInfo_v2(self._handle, ctypes.byref(m2)) == 0:
                self.peak_v2 = max(self.peak_v2 or 0, m2.used)

    def used_now(self):
        """NVML used bytes of the whole GPU right now (v1, like the peak), or None."""
        if self.error is not None:
            return None
        m = _MemV1()
        return m.used if self._lib.nvmlDeviceGetMemoryInfo(self._handle, ctypes.byref(m)) == 0 else None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.period_s)

    def start(self) -> NvmlSampler:
        if self.error is None:
            self.sample()
            self._thread = threading.Thread(target=self._run, name="nvml-sampler", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.sample()
