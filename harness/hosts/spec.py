"""Naming a VM host: `local`, or `ssh://[user@]host[:port]` with options after `#`.

    local                                   QEMU on this machine (the default)
    local#cores=2                           ... counted as 2 cores when -n workers are spread over hosts
    ssh://ci@kvm1                           QEMU on kvm1, reached as ci over SSH (port 22)
    ssh://ci@kvm1:2222#cores=8,key=~/.ssh/mmhil_ed25519,known_hosts=~/.ssh/mmhil_known_hosts
    ssh://kvm1#trust=first-use              accept and record kvm1's key if known_hosts has none

Options (comma-separated `name=value` after `#`):
    cores        how many VMs this host can keep busy at once (default: the host's own core count)
    key          a private key file; without it, the SSH agent's keys and ~/.ssh/id_* are tried
    known_hosts  the known_hosts file that host keys are checked against (default ~/.ssh/known_hosts)
    trust        `known-hosts` (default: an unknown key is refused) or `first-use` (an unknown key is
                 accepted and written to known_hosts; a key that differs from a recorded one is always
                 refused)
Passwords have no place here: SSH authenticates with keys only.
"""

from __future__ import annotations

import getpass
import re
from dataclasses import dataclass
from pathlib import Path

from harness.errors import ConfigError

TRUST_MODES = ("known-hosts", "first-use")
_OPTIONS = ("cores", "key", "known_hosts", "trust")
_SSH = re.compile(r"ssh://(?:(?P<user>[^@/:#\s]+)@)?(?P<host>\[[0-9a-fA-F:.]+\]|[^@/:#\s\[\]]+)(?::(?P<port>\d+))?/?")


@dataclass(frozen=True)
class HostSpec:
    """A parsed host name. `name` is how reports show the host: the spec without its options."""

    kind: str  # "local" | "ssh"
    hostname: str = ""
    port: int = 22
    user: str = ""
    cores: int | None = None
    key_file: Path | None = None
    known_hosts: Path | None = None
    trust: str = "known-hosts"

    @property
    def name(self) -> str:
        if self.kind == "local":
            return "local"
        port = "" if self.port == 22 else f":{self.port}"
        return f"ssh://{self.user}@{self.hostname}{port}"

    @property
    def known_hosts_file(self) -> Path:
        return self.known_hosts or Path.home() / ".ssh" / "known_hosts"

    @property
    def key_source(self) -> str:
        """Where the client key comes from, for error messages."""
        return f"key file {self.key_file}" if self.key_file else "the SSH agent and ~/.ssh/id_*"


LOCAL = HostSpec("local")


def _problem(spec: str, problem: str) -> ConfigError:
    return ConfigError("--vm-host", None, f"{spec!r}: {problem}. Expected `local` or "
                       "`ssh://[user@]host[:port][#cores=N,key=FILE,known_hosts=FILE,trust=first-use]`")


def _options(spec: str, text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for item in filter(None, text.split(",")):
        name, sep, value = item.partition("=")
        if not sep or not value:
            raise _problem(spec, f"option {item!r} is not name=value")
        if name not in _OPTIONS:
            raise _problem(spec, f"unknown option {name!r} (known: {', '.join(_OPTIONS)})")
        if name in found:
            raise _problem(spec, f"option {name!r} is given twice")
        found[name] = value
    return found


def parse_host_spec(spec: str) -> HostSpec:
    """Parse a `--vm-host` value or a config's `host` key; a malformed one is a ConfigError saying why."""
    text = spec.strip()
    base, _, option_text = text.partition("#")
    options = _options(spec, option_text)
    cores = None
    if "cores" in options:
        if not options["cores"].isdigit() or not 1 <= int(options["cores"]) <= 4096:
            raise _problem(spec, f"cores must be a whole number from 1 to 4096, not {options['cores']!r}")
        cores = int(options["cores"])
    if base == "local":
        extra = sorted(set(options) - {"cores"})
        if extra:
            raise _problem(spec, f"a local host takes only `cores`, not {', '.join(extra)}")
        return HostSpec("local", cores=cores)
    match = _SSH.fullmatch(base)
    if match is None:
        if base.startswith("ssh://"):
            raise _problem(spec, "the part after ssh:// is not [user@]host[:port]")
        raise _problem(spec, "unknown kind of host")
    port = int(match.group("port") or 22)
    if not 1 <= port <= 65535:
        raise _problem(spec, f"port {port} is outside 1-65535")
    trust = options.get("trust", "known-hosts")
    if trust not in TRUST_MODES:
        raise _problem(spec, f"trust must be one of {', '.join(TRUST_MODES)}, not {trust!r}")
    return HostSpec(
        "ssh",
        hostname=match.group("host").strip("[]"),
        port=port,
        user=match.group("user") or getpass.getuser(),
        cores=cores,
        key_file=Path(options["key"]).expanduser() if "key" in options else None,
        known_hosts=Path(options["known_hosts"]).expanduser() if "known_hosts" in options else None,
        trust=trust,
    )
