"""VM configuration parsing and validation: every error names the file and the field."""

from pathlib import Path

import pytest

from harness.config import DEFAULT_CONFIG_DIR, load_config, load_configs, parse_config, select_configs
from harness.errors import ConfigError

SOURCE = Path("vm_images/example.toml")


def parse(**fields: object):  # type: ignore[no-untyped-def]
    return parse_config("example", SOURCE, {"machine": "microvm", **fields})


def test_defaults_fill_every_optional_field() -> None:
    config = parse()
    assert (config.paging_levels, config.memory_mib, config.accelerator, config.cpu) == (4, 256, "tcg", "max")
    assert config.full_cmdline() == "paging=4"


def test_five_level_paging_requires_la57() -> None:
    assert "la57" in parse(paging_levels=5).required_features
    assert "la57" not in parse(paging_levels=4).required_features


def test_kernel_cmdline_is_appended_to_the_paging_choice() -> None:
    assert parse(paging_levels=5, kernel_cmdline="debug").full_cmdline() == "paging=5 debug"


@pytest.mark.parametrize(
    ("fields", "field", "fragment"),
    [
        ({"machine": "virt"}, "machine", "must be one of"),
        ({"paging_levels": 3}, "paging_levels", "must be 4 or 5"),
        ({"memory_mib": "256M"}, "memory_mib", "must be of type int"),
        ({"memory_mib": 16}, "memory_mib", "from 64"),
        ({"smp": 0}, "smp", "from 1 to 8"),
        ({"smp": 9}, "smp", "from 1 to 8"),
        ({"accelerator": "hvf"}, "accelerator", "must be one of"),
        ({"timeout": True}, "timeout", "must be of type"),
        ({"timeout": 0}, "timeout", "more than 0"),
        ({"extra_args": ["-s", 3]}, "extra_args", "list of non-empty strings"),
        ({"cpu": "max, +la57"}, "cpu", "without spaces"),
        ({"firmware": "seabios"}, "firmware", "microvm has no SeaBIOS"),
        ({"machine": "q35", "firmware": "mmhil"}, "firmware", "boots microvm only, not q35"),
        ({"paging": 4}, "paging", "unknown field"),
    ],
)
def test_invalid_fields_are_reported_with_file_and_field(fields: dict[str, object], field: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(**fields)
    assert info.value.field == field
    assert str(info.value).startswith(f"{SOURCE}: field '{field}'")
    assert fragment in str(info.value)


def test_machine_is_required() -> None:
    with pytest.raises(ConfigError, match="field 'machine': is required"):
        parse_config("x", SOURCE, {})


def test_broken_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('machine = "microvm"\npaging_levels = \n')
    with pytest.raises(ConfigError, match=r"broken\.toml: is not valid TOML"):
        load_config(path)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


def test_empty_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="holds no"):
        load_configs(tmp_path)


def test_shipped_configs_cover_the_matrix_the_project_promises() -> None:
    configs = load_configs(DEFAULT_CONFIG_DIR)
    default = configs["default"]
    assert (default.machine, default.accelerator) == ("microvm", "tcg")
    assert (default.paging_levels, default.memory_mib) == (4, 256)
    assert any(c.paging_levels == 5 for c in configs.values())
    assert any(c.memory_mib > 4096 for c in configs.values())
    assert any(c.cpu.startswith("qemu64") and c.paging_levels == 4 for c in configs.values())
    assert any(c.machine == "q35" and c.firmware in ("default", "seabios") for c in configs.values())
    assert all(c.firmware == "mmhil" for c in configs.values() if c.machine == "microvm"), \
        "every microvm config boots the project's own firmware (qboot is covered by a test of its own)"
    assert any(c.accelerator == "kvm" for c in configs.values())


def test_selection_by_name_and_group_and_unknown_names() -> None:
    configs = load_configs(DEFAULT_CONFIG_DIR)
    assert [c.name for c in select_configs(configs, ["default"])] == ["default"]
    assert {c.name for c in select_configs(configs, ["group:smoke"])} >= {"default"}
    with pytest.raises(ConfigError, match="unknown config 'nope'"):
        select_configs(configs, ["nope"])
    with pytest.raises(ConfigError, match="no config is in group"):
        select_configs(configs, ["group:nope"])
