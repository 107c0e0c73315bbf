"""Host names as users write them, and how workers are spread over hosts."""

from pathlib import Path

import pytest

from harness.config import parse_config
from harness.errors import ConfigError
from harness.hosts.spec import parse_host_spec
from harness.pytest_plugin import spread


def test_local_is_local_with_an_optional_core_count() -> None:
    assert parse_host_spec("local").kind == "local"
    assert parse_host_spec("local#cores=3").cores == 3


def test_ssh_host_with_user_port_and_options() -> None:
    spec = parse_host_spec("ssh://ci@kvm1.example:2222#cores=8,key=/k/id,known_hosts=/k/kh,trust=first-use")
    assert (spec.kind, spec.user, spec.hostname, spec.port, spec.cores) == ("ssh", "ci", "kvm1.example", 2222, 8)
    assert (spec.key_file, spec.known_hosts, spec.trust) == (Path("/k/id"), Path("/k/kh"), "first-use")
    assert spec.name == "ssh://ci@kvm1.example:2222"
    assert spec.key_source == "key file /k/id"


def test_ssh_host_defaults() -> None:
    spec = parse_host_spec("ssh://ci@[::1]")
    assert (spec.hostname, spec.port, spec.trust, spec.key_file) == ("::1", 22, "known-hosts", None)
    assert spec.name == "ssh://ci@::1"
    assert "agent" in spec.key_source


@pytest.mark.parametrize(("text", "problem"), [
    ("kvm1", "unknown kind of host"),
    ("ssh://", "is not [user@]host[:port]"),
    ("ssh://a@b:0", "port 0 is outside"),
    ("ssh://a@b#cores=0", "cores must be"),
    ("ssh://a@b#cores", "is not name=value"),
    ("ssh://a@b#password=x", "unknown option 'password'"),
    ("ssh://a@b#trust=always", "trust must be one of"),
    ("ssh://a@b#cores=1,cores=2", "given twice"),
    ("local#key=/k", "a local host takes only `cores`"),
])
def test_malformed_hosts_are_refused_with_the_reason(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match="--vm-host") as refused:
        parse_host_spec(text)
    assert problem in str(refused.value)


def test_a_config_host_is_checked_where_it_is_written() -> None:
    source = Path("vm_images/remote.toml")
    assert parse_config("remote", source, {"machine": "microvm", "host": "ssh://ci@kvm1"}).host == "ssh://ci@kvm1"
    with pytest.raises(ConfigError, match=r"remote\.toml: field 'host'"):
        parse_config("remote", source, {"machine": "microvm", "host": "kvm1"})


def test_workers_are_spread_in_proportion_to_cores() -> None:
    assert spread([1, 1], 8).count(0) == 4
    assert spread([4, 4], 8) == [0, 1, 0, 1, 0, 1, 0, 1]
    assert [spread([2, 1], n).count(0) for n in (3, 6)] == [2, 4]
    assert spread([1, 3], 4).count(1) == 3
