"""The QEMU front end's config reads qemu-sanlock.conf keys in libvirt's conf syntax, typed as libvirt types them."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from diskpaxos import errors
from diskpaxos.qemu import config
from diskpaxos.qemu.config import DEFAULT_DISK_LEASE_DIR, ConfigError, QemuConfig, load, parse

LIBVIRT_SAMPLE = """\
#
# Sample configuration file for the lock_driver_sanlock.so plugin
#
# Enable auto disk leases
auto_disk_leases = 1

#
# The directory in which sanlock will store leases
disk_lease_dir = "/var/lib/libvirt/sanlock"

# The unique ID for this host.
host_id = 1

#require_lease_for_disks = 1
#io_timeout = 10
#user = "root"
#group = "root"
"""


def test_libvirt_sample() -> None:
    cfg = parse(LIBVIRT_SAMPLE, "/etc/x.conf")
    assert cfg == QemuConfig(host_id=1, auto_disk_leases=True, disk_lease_dir="/var/lib/libvirt/sanlock",
                             require_lease_for_disks=False, path="/etc/x.conf")


def test_defaults() -> None:
    cfg = parse("host_id = 7\n", "/c")
    assert (cfg.host_id, cfg.auto_disk_leases, cfg.disk_lease_dir, cfg.require_lease_for_disks, cfg.io_timeout,
            cfg.user, cfg.group, cfg.path) == (7, False, DEFAULT_DISK_LEASE_DIR, True, 0, None, None, "/c")


@pytest.mark.parametrize("text, auto, require", [
    ("host_id = 1", False, True),
    ("host_id = 1\nauto_disk_leases = 0", False, True),
    ("host_id = 1\nauto_disk_leases = 1", True, False),
    ("host_id = 1\nauto_disk_leases = 1\nrequire_lease_for_disks = 1", True, True),
    ("host_id = 1\nrequire_lease_for_disks = 0", False, False),
])
def test_require_lease_for_disks_defaults_to_not_auto(text: str, auto: bool, require: bool) -> None:
    cfg = parse(text, "/c")
    assert (cfg.auto_disk_leases, cfg.require_lease_for_disks) == (auto, require)


@pytest.mark.parametrize("text, key, value", [
    ("host_id = 2000", "host_id", 2000),
    ("host_id = +5", "host_id", 5),
    ("host_id=3", "host_id", 3),
    ("  host_id\t=\t3  # trailing comment", "host_id", 3),
    ("host_id = 1; io_timeout = 5", "io_timeout", 5),
    ("host_id = 1\nio_timeout = 255", "io_timeout", 255),
    ("host_id = 1\nio_timeout = 0", "io_timeout", 0),
    ("host_id = 1\ndisk_lease_dir = '/srv/leases'", "disk_lease_dir", "/srv/leases"),
    ('host_id = 1\ndisk_lease_dir = "/srv/it\'s"', "disk_lease_dir", "/srv/it's"),
    ('host_id = 1\ndisk_lease_dir = """/srv/x"""', "disk_lease_dir", "/srv/x"),
    ('host_id = 1\nuser = "sanlock"', "user", "sanlock"),
    ('host_id = 1\ngroup = "+107"', "group", "+107"),
    ("\n\n# only comments\n\nhost_id = 9\n\n", "host_id", 9),
    ("host_id = 1\r\nio_timeout = 4\r\n", "io_timeout", 4),
])
def test_values(text: str, key: str, value: object) -> None:
    assert getattr(parse(text, "/c"), key) == value


def test_disk_lease_dir_longest_that_fits() -> None:
    longest = "/" + "d" * (1023 - 33 - 1)
    assert parse(f'host_id = 1\ndisk_lease_dir = "{longest}"', "/c").disk_lease_dir == longest


def test_obsolete_key_is_ignored_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        cfg = parse("host_id = 1\nignore_readonly_and_shared_disks = 1\n", "/c")
    assert cfg == QemuConfig(host_id=1, path="/c")
    assert "/c:2: ignore_readonly_and_shared_disks is obsolete and ignored" in caplog.text


@pytest.mark.parametrize("text, message", [
    ("", "/c: host_id: expected an integer 1..2000 (required: unique per host sharing disk_lease_dir), "
         "got no host_id line"),
    ("auto_disk_leases = 1\n", "/c: host_id: expected an integer 1..2000 (required: unique per host sharing "
                               "disk_lease_dir), got no host_id line"),
    ("host_id = 0", "/c:1: host_id: expected an integer 1..2000, got 0"),
    ("host_id = 2001", "/c:1: host_id: expected an integer 1..2000, got 2001"),
    ("host_id = -1", "/c:1: host_id: expected an integer 1..2000, got -1"),
    ('host_id = "1"', "/c:1: host_id: expected an integer 1..2000, got the string '1'"),
    ("host_id = [1]", "/c:1: host_id: expected an integer 1..2000, got a list [1]"),
    ("host_id = 1\nauto_disk_leases = 2", "/c:2: auto_disk_leases: expected 0 or 1, got 2"),
    ('host_id = 1\nauto_disk_leases = "1"', "/c:2: auto_disk_leases: expected 0 or 1, got the string '1'"),
    ("host_id = 1\nauto_disk_leases = yes", "/c:2: auto_disk_leases: expected an integer, a quoted string or a "
                                            "list, got 'yes'"),
    ("host_id = 1\nrequire_lease_for_disks = -1", "/c:2: require_lease_for_disks: expected 0 or 1, got -1"),
    ("host_id = 1\nio_timeout = 256", "/c:2: io_timeout: expected an integer 0..255, got 256"),
    ("host_id = 1\nio_timeout = '10'", "/c:2: io_timeout: expected an integer 0..255, got the string '10'"),
    ("host_id = 1\ndisk_lease_dir = 'relative/dir'", "/c:2: disk_lease_dir: expected an absolute path, "
                                                     "got 'relative/dir'"),
    ("host_id = 1\ndisk_lease_dir = ''", "/c:2: disk_lease_dir: expected a non-empty quoted string, got the "
                                         "string ''"),
    ("host_id = 1\ndisk_lease_dir = 5", "/c:2: disk_lease_dir: expected a non-empty quoted string, got 5"),
    ("host_id = 1\ndisk_lease_dir = '/" + "d" * 990 + "'",
     "/c:2: disk_lease_dir: expected at most 990 bytes (a lease path fits 1023), got 991 bytes"),
    ("host_id = 1\nuser = 0", "/c:2: user: expected a non-empty quoted string, got 0"),
    ("host_id = 1\ngroup = ['a']", "/c:2: group: expected a non-empty quoted string, got a list ['a']"),
    ("host_id = 1\nhostid = 2", "/c:2: hostid: expected one of the keys auto_disk_leases, disk_lease_dir, group, "
                                "host_id, io_timeout, require_lease_for_disks, user, got an unknown key"),
    ("host_id = 1\nhost_id = 2", "/c:2: host_id: expected each key once, got a second value (first on line 1)"),
    ("host_id 1", "/c:1: host_id: expected '=' after the key, got '1'"),
    ("host_id", "/c:1: host_id: expected '=' after the key, got the end of the line"),
    ("host_id =\nio_timeout = 1", "/c:1: host_id: expected a value, got the end of the line"),
    ("host_id =", "/c:1: host_id: expected a value, got the end of the file"),
    ("host_id = 1 2", "/c:1: host_id: expected the end of the line after the value, got '2'"),
    ("host_id = 1\n= 2", "/c:2: expected a key name, got '='"),
    ("host_id = 1\nuser = \"root", "/c:2: expected a closing \" on the same line, got the end of the line"),
    ("host_id = 1\nuser = 'root", "/c:2: expected a closing ' on the same line, got the end of the line"),
    ("host_id = 1\nuser = @", "/c:2: expected a key, value or comment, got '@'"),
    ("host_id = [1,\n  2", "/c:1: host_id: expected ']' closing the list, got the end of the file"),
    ("host_id = [1 2]", "/c:1: host_id: expected ',' or ']' in the list, got '2'"),
])
def test_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse(text, "/c")
    assert str(e.value) == message


def test_lists_span_lines_with_comments() -> None:
    """Lists are valid syntax (no key takes one, so the type check names it)."""
    with pytest.raises(ConfigError) as e:
        parse("host_id = 1\nuser = [\n  'a',  # first\n  'b',\n]\n", "/c")
    assert str(e.value) == "/c:2: user: expected a non-empty quoted string, got a list ['a', 'b']"


def test_error_is_a_usage_error_with_fields() -> None:
    with pytest.raises(errors.UsageError) as e:
        parse("host_id = 1\nio_timeout = 300\n", "/c")
    assert e.value.code == -errno.EINVAL
    assert (e.value.file, e.value.line, e.value.key) == ("/c", 2, "io_timeout")


# --- user and group --------------------------------------------------------------

@pytest.mark.parametrize("key, value, expected", [
    ("user", "root", 0), ("user", "+0", 0), ("user", "+4242", 4242), ("user", "4242", 4242),
    ("group", "root", 0), ("group", "+107", 107), ("group", "107", 107),
])
def test_uid_gid(key: str, value: str, expected: int) -> None:
    cfg = parse(f"host_id = 1\n{key} = '{value}'", "/c")
    assert (cfg.uid() if key == "user" else cfg.gid()) == expected


def test_uid_gid_unset() -> None:
    cfg = parse("host_id = 1", "/c")
    assert (cfg.uid(), cfg.gid()) == (None, None)


@pytest.mark.parametrize("key, method, what", [("user", "uid", "user"), ("group", "gid", "group")])
def test_unknown_user_or_group(key: str, method: str, what: str) -> None:
    cfg = parse(f"host_id = 1\n\n{key} = 'no-such-{what}-dp'", "/c")
    with pytest.raises(ConfigError) as e:
        getattr(cfg, method)()
    assert str(e.value) == f"/c:3: {key}: expected a {what} name on this host or +N, got 'no-such-{what}-dp' " \
                           f"(no such {what})"


# --- load -------------------------------------------------------------------------

def test_load_explicit(tmp_path: Path) -> None:
    path = tmp_path / "qemu.conf"
    path.write_text("host_id = 3\n")
    assert load(str(path)) == QemuConfig(host_id=3, path=str(path))


def test_load_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "qemu.conf"
    path.write_text("host_id = 4\n")
    monkeypatch.setenv(config.ENV, str(path))
    assert load().host_id == 4


def test_load_explicit_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load(str(tmp_path / "missing.conf"))
    assert str(e.value) == f"{tmp_path}/missing.conf: config file not found"


def test_load_environment_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(config.ENV, str(tmp_path / "missing.conf"))
    with pytest.raises(ConfigError) as e:
        load()
    assert str(e.value) == f"{tmp_path}/missing.conf: config file not found"


def test_load_default_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(config.ENV, raising=False)
    monkeypatch.setattr(config, "DEFAULT_PATH", str(tmp_path / "qemu.conf"))
    with pytest.raises(ConfigError) as e:
        load()
    assert str(e.value) == (f"{tmp_path}/qemu.conf: config file not found: the QEMU front end expects its config "
                            f"here (or at $DISKPAXOS_QEMU_CONF), with at least host_id = N (1..2000)")


def test_load_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(config.ENV, raising=False)
    monkeypatch.setattr(config, "DEFAULT_PATH", str(tmp_path / "qemu.conf"))
    (tmp_path / "qemu.conf").write_text("host_id = 5\n")
    assert load().path == str(tmp_path / "qemu.conf")


def test_default_path() -> None:
    assert config.DEFAULT_PATH == "/etc/diskpaxos/qemu.conf"


def test_load_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load(str(tmp_path))
    assert str(e.value) == f"{tmp_path}: cannot read config: {os.strerror(errno.EISDIR)}"


def test_load_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "qemu.conf"
    path.write_bytes(b"host_id = 1\nuser = '\xff'\n")
    with pytest.raises(ConfigError) as e:
        load(str(path))
    assert str(e.value) == f"{path}: cannot read config: not UTF-8 text (invalid start byte)"


def test_the_sample_config_in_contrib_loads() -> None:
    sample = Path(__file__).resolve().parents[2] / "contrib" / "qemu.conf"
    c = load(str(sample))
    assert (c.host_id, c.auto_disk_leases, c.disk_lease_dir, c.require_lease_for_disks, c.io_timeout) == \
        (1, True, "/var/lib/libvirt/sanlock", False, 0)
