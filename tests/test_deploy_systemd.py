"""deploy/systemd: the units pass `systemd-analyze verify`, their settings files
define what they use, and the fstab mount helper turns mount(8)'s call into
the right `dfs mount` and really mounts a cluster."""

import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path, PurePosixPath

import pytest

from dfs import mounts

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD = ROOT / "deploy" / "systemd"
HELPER = SYSTEMD / "mount.fuse.dfs"
BIN = Path(sys.executable).parent
INSTALLED_BIN = "/opt/dfs/bin/"
UNITS = sorted([*SYSTEMD.glob("*.service"), *SYSTEMD.glob("*.mount")])


def instance_name(unit: Path) -> str:
    """A template is verified through an instance of it."""
    return unit.name.replace("@.", "@disk1.")


@pytest.mark.timeout(60)
def test_units_pass_systemd_analyze_verify(tmp_path):
    """`verify` insists that every ExecStart program exists. The units run dfs
    from /opt/dfs/bin, where deploy/README.md installs it; the copies verified
    here run the same programs from this test's Python environment instead."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze (Debian package systemd) is needed to verify units"
    for unit in UNITS:
        text = unit.read_text()
        assert INSTALLED_BIN in text or unit.suffix == ".mount", unit.name
        (tmp_path / unit.name).write_text(text.replace(INSTALLED_BIN, f"{BIN}/"))
    targets = [str(tmp_path / instance_name(unit)) for unit in UNITS]
    checked = subprocess.run([analyze, "verify", *targets], capture_output=True, text=True,
                             timeout=50)
    problems = [line for line in (checked.stdout + checked.stderr).splitlines()
                if any(unit.name in line or instance_name(unit) in line for unit in UNITS)]
    assert checked.returncode == 0 and not problems, checked.stdout + checked.stderr


def test_settings_files_define_every_variable_the_units_use():
    defined = set()
    for env in SYSTEMD.glob("*.env"):
        defined |= set(re.findall(r"^([A-Z_]+)=", env.read_text(), re.M))
    for unit in UNITS:
        used = set(re.findall(r"\$\{([A-Z_]+)\}", unit.read_text()))
        assert used <= defined, f"{unit.name} uses {sorted(used - defined)}"


def test_services_restart_and_read_the_secret_as_a_credential():
    for unit in SYSTEMD.glob("*.service"):
        text = unit.read_text()
        assert "Restart=on-failure" in text, unit.name
        assert "LoadCredential=secret:/etc/dfs/secret" in text, unit.name
        assert "--secret-file=%d/secret" in text, unit.name
        assert "User=dfs" in text and "NoNewPrivileges=yes" in text, unit.name


def test_services_may_write_the_folders_they_are_given():
    """ProtectSystem=strict leaves a service only its StateDirectory= (under
    /var/lib) and ReadWritePaths= to write to; verify does not check that."""
    for unit in SYSTEMD.glob("*.service"):
        text = unit.read_text()
        writable = [PurePosixPath("/var/lib", d) for line in re.findall(
            r"^StateDirectory=(.*)$", text, re.M) for d in line.split()]
        writable += [PurePosixPath(d) for line in re.findall(
            r"^ReadWritePaths=(.*)$", text, re.M) for d in line.split()]
        folders = re.findall(r"--(?:data|backup)-dir=(\S+)", text)
        assert folders, unit.name
        for folder in map(PurePosixPath, folders):
            assert any(folder.is_relative_to(w) for w in writable), f"{unit.name}: {folder}"


def test_mount_unit_keeps_the_host_mount_namespace():
    """Sandboxing options would hide the FUSE mount from the rest of the host."""
    namespacing = ("ProtectSystem", "PrivateTmp", "PrivateDevices", "PrivateMounts",
                   "ProtectHome", "NoNewPrivileges", "CapabilityBoundingSet")
    for unit in SYSTEMD.glob("*.mount"):
        keys = set(re.findall(r"^(\w+)=", unit.read_text(), re.M))
        assert not keys & set(namespacing), unit.name
        assert "Type=fuse.dfs" in unit.read_text()


def run_helper(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(HELPER), *args], capture_output=True, text=True, timeout=60,
                          env=env)


def shown_command(*args: str) -> str:
    """What the helper would run, in fake (-f) verbose (-v) mode."""
    done = run_helper(*args, "-f", "-v")
    assert done.returncode == 0, done.stderr
    return done.stderr.strip().removeprefix("mount.fuse.dfs: /opt/dfs/bin/dfs ")


@pytest.mark.parametrize("args,expected", [
    (["meta:9400", "/mnt/dfs"],
     "mount --meta meta:9400 --secret-file /etc/dfs/secret /mnt/dfs"),
    (["meta:9400/", "/mnt/dfs", "-o", "defaults,_netdev,noauto,x-systemd.automount"],
     "mount --meta meta:9400 --secret-file /etc/dfs/secret /mnt/dfs"),
    (["10.0.0.5:9400/volumes/pvc-1", "/mnt/v", "-o", "rw,secret_file=/s,ro"],
     "mount --meta 10.0.0.5:9400 --secret-file /s --subdir /volumes/pvc-1 --read-only /mnt/v"),
    (["[::1]:9400/a", "/m", "-n", "-o", "log_file=/var/log/a.log", "-t", "fuse.dfs"],
     "mount --meta [::1]:9400 --secret-file /etc/dfs/secret --subdir /a "
     "--log-file /var/log/a.log /m"),
    (["meta:9400", "/m", "-o", "zone=rack-2,_netdev"],
     "mount --meta meta:9400 --secret-file /etc/dfs/secret --zone rack-2 /m"),
    (["meta:9400", "/m", "-s", "-o", "noatime"],
     "mount --meta meta:9400 --secret-file /etc/dfs/secret /m"),
])
def test_mount_helper_translates_mount_options(args, expected):
    assert shown_command(*args) == expected


@pytest.mark.parametrize("args,message", [
    ([], "usage"),
    (["meta:9400"], "usage"),
    (["meta", "/m"], "META_HOST:PORT"),
    (["meta:port/x", "/m"], "META_HOST:PORT"),
    (["meta:9400", "/m", "-o", "noatime"], "unsupported option 'noatime'"),
    (["meta:9400", "/m", "-o", "*"], "unsupported option '*'"),
])
def test_mount_helper_rejects_what_it_cannot_honour(args, message):
    done = run_helper(*args)
    assert done.returncode == 1
    assert message in done.stderr


def test_mount_helper_reports_a_failed_mount_as_mount_does(tmp_path):
    done = run_helper("127.0.0.1:1", str(tmp_path), "-o", f"secret_file={tmp_path}/none",
                      env={**os.environ, "DFS_BIN": str(BIN / "dfs")})
    assert done.returncode == 32, done.stderr


@pytest.mark.timeout(120)
def test_mount_helper_mounts_a_folder_of_a_running_cluster(shared_cluster, tmp_path):
    folder = f"helper-{uuid.uuid4().hex[:8]}"
    (shared_cluster.mnt / folder).mkdir()
    (shared_cluster.mnt / folder / "hello").write_text("from the first mount\n")
    ref = shared_cluster.ref
    target = tmp_path / "mnt"
    target.mkdir()
    env = {**os.environ, "DFS_BIN": str(BIN / "dfs")}
    try:
        done = run_helper(f"{ref.meta}/{folder}", str(target), "-o",
                          f"secret_file={ref.secret_file},log_file={tmp_path}/mount.log",
                          env=env)
        assert done.returncode == 0, done.stderr
        assert (target / "hello").read_text() == "from the first mount\n"
        (target / "back").write_text("through the helper\n")
        assert (shared_cluster.mnt / folder / "back").read_text() == "through the helper\n"
    finally:
        if mounts.is_mounted(str(target)):
            try:
                mounts.unmount(str(target))
            except OSError:
                mounts.unmount(str(target), lazy=True)
