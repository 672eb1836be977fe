"""Every dfs command line in deploy/ (Kubernetes containers and exec probes,
systemd ExecStart lines, what the fstab mount helper runs) uses only flags the
command's own --help lists, gives every flag it requires, and picks choices it
offers."""

import functools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
SYSTEMD = ROOT / "deploy" / "systemd"
BIN = Path(sys.executable).parent
DFS_COMMANDS = {"dfs", "dfs-metaserver", "dfs-metalogger", "dfs-chunkserver", "dfs-csi"}
# `dfs` takes a subcommand; the others are one service each.
WITH_SUBCOMMAND = {"dfs"}


def kubernetes_command_lines() -> list[tuple[str, list[str]]]:
    lines = []
    for path in sorted(KUBE.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc["kind"] not in ("Deployment", "StatefulSet", "DaemonSet"):
                continue
            for c in doc["spec"]["template"]["spec"]["containers"]:
                where = f"{path.name}:{c['name']}"
                if c.get("command", [""])[0] in DFS_COMMANDS:
                    lines.append((where, c["command"] + c.get("args", [])))
                for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                    exec_probe = c.get(probe, {}).get("exec")
                    if exec_probe and exec_probe["command"][0] in DFS_COMMANDS:
                        lines.append((f"{where}:{probe}", exec_probe["command"]))
    return lines


def systemd_command_lines() -> list[tuple[str, list[str]]]:
    lines = []
    for path in sorted(SYSTEMD.glob("*.service")):
        for line in path.read_text().splitlines():
            if line.startswith("ExecStart="):
                argv = shlex.split(line.removeprefix("ExecStart="))
                lines.append((path.name, [Path(argv[0]).name] + argv[1:]))
    return lines


def mount_helper_command_line() -> list[tuple[str, list[str]]]:
    """The `dfs mount` the helper runs for a source with every option it knows."""
    shown = subprocess.run(
        [str(SYSTEMD / "mount.fuse.dfs"), "meta:9400/volumes/v", "/mnt/v", "-f", "-v",
         "-o", "ro,secret_file=/etc/dfs/secret,log_file=/var/log/dfs.log,zone=rack1"],
        capture_output=True, text=True, timeout=10, check=True)
    argv = shlex.split(shown.stderr.strip().removeprefix("mount.fuse.dfs: "))
    return [("mount.fuse.dfs", [Path(argv[0]).name] + argv[1:])]


COMMAND_LINES = kubernetes_command_lines() + systemd_command_lines() + mount_helper_command_line()


@functools.cache
def help_text(*command: str) -> str:
    shown = subprocess.run([str(BIN / command[0]), *command[1:], "--help"],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, f"{' '.join(command)} --help failed: {shown.stderr}"
    return shown.stdout


def usage(text: str) -> str:
    return text.split("\n\n", 1)[0]


def split_flags(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """Positional arguments, and flags with their values (`--a=b` or `--a b`)."""
    positional, given = [], {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            if not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value = argv[i + 1]
                i += 1
            given[name] = value
        else:
            positional.append(arg)
        i += 1
    return positional, given


def test_deploy_runs_every_dfs_command():
    used = {argv[0] for _, argv in COMMAND_LINES}
    assert used == DFS_COMMANDS


@pytest.mark.timeout(120)
@pytest.mark.parametrize("where,argv", COMMAND_LINES, ids=[w for w, _ in COMMAND_LINES])
def test_flags_exist_in_the_commands_help(where, argv):
    command = argv[0]
    assert command in DFS_COMMANDS, f"{where} runs {command}, not a dfs command"
    positional, given = split_flags(argv[1:])
    if command in WITH_SUBCOMMAND:
        assert positional, f"{where}: {command} needs a subcommand"
        text = help_text(command, positional[0])
    else:
        text = help_text(command)
    known = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text))
    unknown = set(given) - known
    assert not unknown, f"{where}: {sorted(unknown)} not in `{command} --help`"
    # In argparse's usage line a required option stands outside brackets.
    required = set(re.findall(r"(?<![\[\w-])--[a-z][a-z0-9-]*", usage(text)))
    missing = required - set(given)
    assert not missing, f"{where}: required {sorted(missing)} missing"
    for flag, choices in re.findall(r"(--[a-z][a-z0-9-]*) \{([^}]*)\}", usage(text)):
        if flag in given:
            assert given[flag] in choices.split(","), f"{where}: {flag}={given[flag]}"
