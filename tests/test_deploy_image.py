"""deploy/Dockerfile, read as an operator would (Docker does not run here): a
multi-stage build on a slim Python that satisfies the project, compilers only in
the build stage, fuse3 and a non-root user in the final one, and a build context
that holds every package the project installs."""

import fnmatch
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / "deploy" / "Dockerfile.dockerignore"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
BUILD_ONLY = {"gcc", "g++", "clang", "make", "build-essential", "pkg-config", "libc6-dev",
              "libfuse3-dev"}


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def lines(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]

    def apt_packages(self) -> set[str]:
        packages = set()
        for run in self.lines("RUN"):
            for command in re.findall(r"apt-get install ([^&;]*)", run):
                packages |= {w for w in command.split() if not w.startswith("-")}
        return packages


def parse() -> tuple[dict[str, str], list[Stage]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    args, stages = {}, []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            base, _, name = rest.partition(" AS ")
            stages.append(Stage(re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], base.strip()),
                                name.strip()))
        elif not stages and keyword == "ARG":
            key, _, default = rest.partition("=")
            args[key] = default
        else:
            stages[-1].instructions.append((keyword, rest))
    return args, stages


def test_image_is_built_in_stages_on_a_slim_python_the_project_accepts():
    _, stages = parse()
    assert len(stages) >= 2
    requires = SpecifierSet(PYPROJECT["project"]["requires-python"])
    for stage in stages:
        match = re.fullmatch(r"python:(\d+\.\d+)-slim(-\w+)?", stage.base)
        assert match, f"{stage.base} is not a slim Python image"
        assert requires.contains(match[1] + ".0"), f"{stage.base} vs {requires}"


def test_build_stage_installs_the_project_with_the_csi_extra():
    _, stages = parse()
    build = stages[0]
    assert {"gcc", "libfuse3-dev", "pkg-config"} <= build.apt_packages()
    installs = " ".join(build.lines("RUN"))
    extras = re.findall(r"pip install .*\[(\w+)\]", installs)
    assert extras and set(extras) <= PYPROJECT["project"]["optional-dependencies"].keys()
    assert "csi" in extras


def test_final_stage_has_fuse_no_compilers_and_a_non_root_user():
    _, stages = parse()
    final = stages[-1]
    packages = final.apt_packages()
    assert {"fuse3", "libfuse3-3"} <= packages
    assert not packages & BUILD_ONLY
    assert not any(p.endswith("-dev") for p in packages)
    assert "--no-install-recommends" in " ".join(final.lines("RUN"))
    copied = final.lines("COPY")
    assert any(c.startswith(f"--from={stages[0].name} ") for c in copied)
    user = final.lines("USER")[-1].split(":")[0]
    assert user not in ("0", "root")


def test_final_image_puts_the_installed_commands_on_path():
    _, stages = parse()
    env = " ".join(stages[-1].lines("ENV"))
    venv_bin = re.search(r"PATH=(\S+?)/bin:", env)[1]
    assert any("/src[" in run and f"{venv_bin}/bin/pip" in run for run in stages[0].lines("RUN"))
    scripts = PYPROJECT["project"]["scripts"]
    assert {"dfs", "dfs-metaserver", "dfs-metalogger", "dfs-chunkserver",
            "dfs-csi"} <= scripts.keys()


def _included(name: str, rules: list[str]) -> bool:
    """Whether the build context keeps the top-level `name`: the last rule that
    matches it decides, `!` keeps."""
    kept = True
    for rule in rules:
        negated = rule.startswith("!")
        if fnmatch.fnmatch(name, rule.removeprefix("!")):
            kept = negated
    return kept


def _context_rules() -> list[str]:
    return [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
            if line.strip() and not line.startswith("#")]


def test_build_context_leaves_out_what_the_image_does_not_need():
    rules = _context_rules()
    for name in (".git", ".venv", "tests", "deploy", "benchmarks"):
        assert not _included(name, rules), f"{name} should stay out of the build context"


@pytest.mark.timeout(120)
def test_build_context_is_enough_for_pip_to_build_dfs(tmp_path):
    """What `COPY . /src` copies builds a wheel with every package and command."""
    rules = _context_rules()
    context = tmp_path / "src"
    context.mkdir()
    for entry in ROOT.iterdir():
        if not _included(entry.name, rules):
            continue
        if entry.is_dir():
            shutil.copytree(entry, context / entry.name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(entry, context / entry.name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "-q", "-w", str(tmp_path / "wheels"),
                            str(context)], capture_output=True, text=True, timeout=110)
    assert built.returncode == 0, built.stderr
    wheel, = (tmp_path / "wheels").glob("dfs-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    patterns = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = [p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()
                and any(fnmatch.fnmatch(p.name, pattern) for pattern in patterns)]
    assert packages
    for package in packages:
        assert f"{package}/__init__.py" in names, f"{package} is missing from the image"
    for command in PYPROJECT["project"]["scripts"]:
        assert f"{command} = " in scripts
