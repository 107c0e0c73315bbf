"""VM hosts: where QEMU runs. `local` (this machine) or `ssh://user@host[:port]` (over paramiko).

    host = get_host(parse_host_spec("ssh://ci@kvm1:2222#cores=8"))
    vm = Vm(config, kernel=..., accelerator=..., artifacts=..., host=host)

Hosts are kept per process by name, so one SSH connection serves every VM of a worker.
"""

from __future__ import annotations

import threading

from harness.hosts.base import VmHost
from harness.hosts.local import LocalHost, local_host
from harness.hosts.spec import LOCAL, HostSpec, parse_host_spec

_hosts: dict[HostSpec, VmHost] = {}
_hosts_lock = threading.Lock()


def get_host(spec: HostSpec) -> VmHost:
    """The host for `spec`, made once per process (an SSH host connects when first used)."""
    if spec.kind == "local" and spec.cores is None:
        return local_host()
    with _hosts_lock:
        host = _hosts.get(spec)
        if host is None:
            if spec.kind == "local":
                host = LocalHost(spec)
            else:
                from harness.hosts.ssh import SshHost

                host = SshHost(spec)
            _hosts[spec] = host
        return host


def close_hosts() -> None:
    with _hosts_lock:
        hosts = list(_hosts.values())
        _hosts.clear()
    for host in hosts:
        host.close()


__all__ = ["LOCAL", "HostSpec", "LocalHost", "VmHost", "close_hosts", "get_host", "local_host", "parse_host_spec"]
