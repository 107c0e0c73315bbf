"""VM configurations: one TOML file per VM in vm_images/, validated into a frozen VmConfig.

A file looks like this (every key but `machine` has a default)::

    description = "microvm, TCG, 4-level paging, 256 MiB"
    machine = "microvm"            # microvm | pc | q35
    firmware = "default"           # default (the machine's own) | seabios | qboot | mmhil (ours,
                                   # microvm only: driver_src/firmware)
    cpu = "max"                    # a QEMU -cpu model, with +feature/-feature if wanted
    cpu_features = ["nx"]          # QEMU feature names the tests need; 5-level paging adds "la57"
    paging_levels = 4              # 4 | 5
    smp = 1                        # vCPUs, 1..8; under TCG, smp > 1 runs multi-threaded (MTTCG)
    memory_mib = 256
    accelerator = "tcg"            # tcg | kvm | auto (KVM where usable and the features are there)
    ram_backend = "auto"           # auto | shared (/dev/shm file the host maps) | private
    extra_args = []                # appended to QEMU's command line
    kernel_cmdline = ""            # appended to the kernel command line mmhil builds
    groups = ["smoke"]
    timeout = 30                   # seconds any single wait on this VM may take
    host = ""                      # where its VMs run: "" (local, or --vm-host), "local", "ssh://..."
                                   # (docs/hosts.md); --vm-host overrides it
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.hosts.spec import parse_host_spec

MACHINES = ("microvm", "pc", "q35")
FIRMWARES = ("default", "seabios", "qboot", "mmhil")
ACCELERATORS = ("tcg", "kvm", "auto")
RAM_BACKENDS = ("auto", "shared", "private")
MAX_SMP = 8  # the guest kernel's MAX_CPUS (driver_src/include/smp.h)

DEFAULT_CONFIG_DIR = Path(__file__).resolve().parent.parent / "vm_images"


@dataclass(frozen=True)
class VmConfig:
    name: str
    source: Path
    machine: str
    description: str = ""
    firmware: str = "default"
    cpu: str = "max"
    cpu_features: tuple[str, ...] = ()
    paging_levels: int = 4
    smp: int = 1
    memory_mib: int = 256
    accelerator: str = "tcg"
    ram_backend: str = "auto"
    extra_args: tuple[str, ...] = ()
    kernel_cmdline: str = ""
    groups: tuple[str, ...] = ()
    timeout: float = 30.0
    host: str = ""

    @property
    def required_features(self) -> tuple[str, ...]:
        """CPU features the VM cannot run without: the declared ones, plus LA57 for 5-level paging."""
        features = list(self.cpu_features)
        if self.paging_levels == 5 and "la57" not in features:
            features.append("la57")
        return tuple(features)

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib << 20

    @property
    def shares_ram(self) -> bool:
        """Guest RAM lives in a file the host maps (auto and shared); private keeps it inside QEMU."""
        return self.ram_backend != "private"

    def full_cmdline(self) -> str:
        return " ".join(filter(None, [f"paging={self.paging_levels}", self.kernel_cmdline]))


_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "description": str,
    "machine": str,
    "firmware": str,
    "cpu": str,
    "cpu_features": list,
    "paging_levels": int,
    "smp": int,
    "memory_mib": int,
    "accelerator": str,
    "ram_backend": str,
    "extra_args": list,
    "kernel_cmdline": str,
    "groups": list,
    "timeout": (int, float),
    "host": str,
}


def _check_choice(source: Path, key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(source, key, f"must be one of {', '.join(choices)}; got {value!r}")


def _string_list(source: Path, key: str, value: list[Any]) -> tuple[str, ...]:
    for item in value:
        if not isinstance(item, str) or not item:
            raise ConfigError(source, key, f"must be a list of non-empty strings; found {item!r}")
    return tuple(value)


def parse_config(name: str, source: Path, data: dict[str, Any]) -> VmConfig:
    """Validate one parsed TOML document. Every error names the file and the field."""
    for key, value in data.items():
        expected = _SCHEMA.get(key)
        if expected is None:
            raise ConfigError(source, key, f"unknown field (known: {', '.join(sorted(_SCHEMA))})")
        # bool is an int in Python; a TOML `true` is never a valid number here.
        if isinstance(value, bool) or not isinstance(value, expected):
            names = expected.__name__ if isinstance(expected, type) else " or ".join(t.__name__ for t in expected)
            raise ConfigError(source, key, f"must be of type {names}; got {type(value).__name__} {value!r}")
    if "machine" not in data:
        raise ConfigError(source, "machine", f"is required (one of {', '.join(MACHINES)})")
    _check_choice(source, "machine", data["machine"], MACHINES)
    _check_choice(source, "firmware", data.get("firmware", "default"), FIRMWARES)
    _check_choice(source, "accelerator", data.get("accelerator", "tcg"), ACCELERATORS)
    _check_choice(source, "ram_backend", data.get("ram_backend", "auto"), RAM_BACKENDS)
    if data.get("firmware") == "seabios" and data["machine"] == "microvm":
        raise ConfigError(source, "firmware", "microvm has no SeaBIOS; use 'default' (its built-in qboot)")
    if data.get("firmware") == "mmhil" and data["machine"] != "microvm":
        raise ConfigError(source, "firmware", f"the mmhil firmware boots microvm only, not {data['machine']} "
                          "(it sets up no PCI or chipset): use 'default'")
    if data.get("paging_levels", 4) not in (4, 5):
        raise ConfigError(source, "paging_levels", f"must be 4 or 5; got {data['paging_levels']}")
    if not 1 <= data.get("smp", 1) <= MAX_SMP:
        raise ConfigError(source, "smp", f"must be from 1 to {MAX_SMP} vCPUs; got {data['smp']}")
    if not 64 <= data.get("memory_mib", 256) <= 1 << 20:
        raise ConfigError(source, "memory_mib", f"must be from 64 to 1048576 MiB; got {data['memory_mib']}")
    if not 0 < data.get("timeout", 30) <= 3600:
        raise ConfigError(source, "timeout", f"must be more than 0 and at most 3600 s; got {data['timeout']}")
    if data.get("host"):
        try:
            parse_host_spec(data["host"])
        except ConfigError as exc:
            raise ConfigError(source, "host", exc.problem) from exc
    cpu = data.get("cpu", "max")
    if not cpu or any(c.isspace() for c in cpu):
        raise ConfigError(source, "cpu", f"must be a QEMU -cpu value without spaces; got {cpu!r}")
    return VmConfig(
        name=name,
        source=source,
        machine=data["machine"],
        description=data.get("description", ""),
        firmware=data.get("firmware", "default"),
        cpu=cpu,
        cpu_features=_string_list(source, "cpu_features", data.get("cpu_features", [])),
        paging_levels=data.get("paging_levels", 4),
        smp=data.get("smp", 1),
        memory_mib=data.get("memory_mib", 256),
        accelerator=data.get("accelerator", "tcg"),
        ram_backend=data.get("ram_backend", "auto"),
        extra_args=_string_list(source, "extra_args", data.get("extra_args", [])),
        kernel_cmdline=data.get("kernel_cmdline", ""),
        groups=_string_list(source, "groups", data.get("groups", [])),
        timeout=float(data.get("timeout", 30)),
        host=data.get("host", ""),
    )


def load_config(path: Path) -> VmConfig:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, None, f"is not valid TOML: {exc}") from exc
    return parse_config(path.stem, path, data)


def load_configs(directory: Path = DEFAULT_CONFIG_DIR) -> dict[str, VmConfig]:
    """Every `*.toml` in the directory, by name (the file's stem), sorted by name."""
    paths = sorted(directory.glob("*.toml"))
    if not paths:
        raise ConfigError(directory, None, "holds no *.toml VM configuration")
    return {path.stem: load_config(path) for path in paths}


def select_configs(available: dict[str, VmConfig], names: list[str]) -> list[VmConfig]:
    """Configs by name or group (`group:NAME`); an unknown name is an error that lists the known ones."""
    selected: dict[str, VmConfig] = {}
    for name in names:
        if name.startswith("group:"):
            group = name.removeprefix("group:")
            members = [c for c in available.values() if group in c.groups]
            if not members:
                raise ConfigError("--vm-config", None, f"no config is in group {group!r}")
            selected.update((c.name, c) for c in members)
        elif name in available:
            selected[name] = available[name]
        else:
            raise ConfigError("--vm-config", None, f"unknown config {name!r} (known: {', '.join(available)})")
    return list(selected.values())
