"""Which machine a benchmark ran on: one `name: value` line per fact, and a peak-FLOP/s model."""

import datetime
import os
import platform


def cpu_info() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if ":" in line:
                    key, _, value = line.partition(":")
                    info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def machine_lines() -> list[str]:
    info = cpu_info()
    return [
        f"machine_nproc: {cores()}",
        f"machine_cpu: {info.get('model name', platform.processor() or 'unknown')}",
        f"machine_cpu_mhz: {info.get('cpu MHz', 'unknown')}",
        f"machine_load_1min: {load_average():.2f}",
        f"machine_date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"machine_host: {platform.node()}",
    ]


def print_machine() -> None:
    for line in machine_lines():
        print(line, flush=True)


def fp32_flops_per_cycle(info: dict[str, str] | None = None) -> tuple[int, str]:
    """FP32 FLOPs one core can retire per cycle, and the assumption behind the number.

    Two FMA pipes per core (every x86 server core since Haswell / Zen 1), each doing
    lanes x 2 FLOPs. AMD Zen 4 (family 25, model >= 0x10) runs AVX-512 on 256-bit
    datapaths, so it counts as 8 lanes; Intel cores with AVX-512 get 16 lanes.
    """
    info = info if info is not None else cpu_info()
    flags = set(info.get("flags", "").split())
    vendor = info.get("vendor_id", "")
    if "avx512f" in flags and vendor == "GenuineIntel":
        return 64, "2 AVX-512 FMA pipes x 16 fp32 lanes x 2 FLOPs (Intel)"
    if "avx512f" in flags:
        return 32, "2 FMA pipes x 8 fp32 lanes x 2 FLOPs (AMD Zen 4: AVX-512 on 256-bit datapaths)"
    if "fma" in flags and "avx2" in flags:
        return 32, "2 AVX2 FMA pipes x 8 fp32 lanes x 2 FLOPs"
    return 8, "SSE: 2 pipes x 4 fp32 lanes (no FMA)"


def peak_gflop_per_s() -> tuple[float, str]:
    info = cpu_info()
    ghz = float(info.get("cpu MHz", "2000")) / 1000.0
    per_cycle, why = fp32_flops_per_cycle(info)
    return cores() * ghz * per_cycle, f"{cores()} cores x {ghz:.2f} GHz x {per_cycle} ({why})"
