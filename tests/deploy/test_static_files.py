"""Files that cannot run here are checked statically: the Dockerfile (no Docker engine on this machine) and
the Grafana dashboard JSON / provisioning files (their PromQL runs in test_real_traffic)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import dockerfile
import yaml

from .paths import DEPLOY, REPO, kustomize_build
from .regenerate import dashboards_module

DOCKERFILE = DEPLOY / "Dockerfile"
GRAFANA = DEPLOY / "grafana"


def commands() -> tuple[Any, ...]:
    # Parsed by BuildKit's own parser (the `dockerfile` package wraps it).
    return tuple(dockerfile.parse_file(str(DOCKERFILE)))


def test_dockerfile_pins_its_base_and_adds_nothing_from_the_network() -> None:
    cmds = commands()
    args = {
        c.value[0].split("=", 1)[0]: c.value[0].split("=", 1)[1]
        for c in cmds
        if c.cmd == "ARG" and "=" in c.value[0]
    }
    bases = [c.value[0] for c in cmds if c.cmd == "FROM"]
    assert len(bases) == 2, "a build stage and a slim runtime stage"
    for base in bases:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
        name, _, tag = image.partition(":")
        assert name == "python", image
        assert re.fullmatch(r"\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", tag), f"unpinned base {image}"
    assert not [c for c in cmds if c.cmd == "ADD"], "COPY only: ADD can fetch URLs and unpack archives"


def test_dockerfile_runs_as_the_same_non_root_user_as_the_manifests() -> None:
    cmds = commands()
    last_from = max(i for i, c in enumerate(cmds) if c.cmd == "FROM")
    users = [c.value[0] for c in cmds[last_from:] if c.cmd == "USER"]
    assert users, "the runtime stage must switch user"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit(), "numeric uid, so runAsNonRoot can verify it"
    assert int(uid) != 0
    assert gid.isdigit()
    assert int(gid) != 0
    for obj in kustomize_build("kubernetes/base"):
        spec = obj.get("spec", {})
        template = spec.get("template") or spec.get("jobTemplate", {}).get("spec", {}).get("template")
        if template:
            assert template["spec"]["securityContext"]["runAsUser"] == int(uid)


def test_dockerfile_copies_only_existing_sources_and_exposes_the_manifest_ports() -> None:
    cmds = commands()
    for copy in (c for c in cmds if c.cmd == "COPY" and not any(f.startswith("--from") for f in c.flags)):
        for source in copy.value[:-1]:
            assert (REPO / source).exists(), f"COPY {source}: not in the build context"
    exposed = {int(p) for c in cmds if c.cmd == "EXPOSE" for p in c.value}
    container_ports = {
        p["containerPort"]
        for obj in kustomize_build("kubernetes/base")
        if obj["kind"] == "Deployment"
        for container in obj["spec"]["template"]["spec"]["containers"]
        for p in container.get("ports", [])
    }
    assert exposed == container_ports == {9191, 9192, 8080}
    (entrypoint,) = [c for c in cmds if c.cmd == "ENTRYPOINT"]
    assert entrypoint.json
    assert entrypoint.value == ("remixer",)
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignore[ignore.index("*") :], "deny by default"


def test_dashboard_files_are_the_generators_output() -> None:
    module = dashboards_module()
    rendered = module.rendered_files()
    on_disk = {p.name: p.read_text() for p in (GRAFANA / "dashboards").glob("*.json")}
    assert on_disk == rendered, "dashboards are stale: python -m tests.deploy.regenerate"
    titles = {json.loads(text)["title"] for text in rendered.values()}
    assert len(titles) == 6


def test_dashboards_are_well_formed_grafana_models() -> None:
    uids = set()
    for path in sorted((GRAFANA / "dashboards").glob("*.json")):
        board = json.loads(path.read_text())
        assert board["uid"] not in uids
        uids.add(board["uid"])
        assert len(board["uid"]) <= 40
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), path.name
        for panel in board["panels"]:
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, f"{path.name}: {panel['title']} overflows the grid"
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            ref_ids = [t["refId"] for t in panel["targets"]]
            assert ref_ids
            assert len(ref_ids) == len(set(ref_ids))
            for target in panel["targets"]:
                used = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval", "__range"}
                assert used <= set(variables), f"{panel['title']}: undefined {used - set(variables)}"


def test_grafana_provisioning_files() -> None:
    dashboards = yaml.safe_load((GRAFANA / "provisioning/dashboards.yaml").read_text())
    assert dashboards["apiVersion"] == 1
    (provider,) = dashboards["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")
    datasources = yaml.safe_load((GRAFANA / "provisioning/datasources.yaml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"].startswith("http")


def test_the_image_build_context_is_enough_to_build_remixer(tmp_path: Path) -> None:
    """Stage exactly what the Dockerfile COPYs in an empty context; build the wheel `pip install` would."""
    context = tmp_path / "context"
    context.mkdir()
    for copy in (
        c for c in commands() if c.cmd == "COPY" and not any(f.startswith("--from") for f in c.flags)
    ):
        for source in copy.value[:-1]:
            src = REPO / source
            if src.is_dir():
                shutil.copytree(src, context / source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(src, context / source)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            ".",
        ],
        cwd=context,
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = tmp_path.glob("remixer-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "remixer = remixer.cli:main" in archive.read(entry_points).decode()
    for package in ("remixer", "policy", "telemetry", "controller"):
        assert f"{package}/__init__.py" in names
    # Alembic migrations are code the image runs at start: every card's must be in the wheel.
    for migrations in REPO.glob("*/migrations/versions"):
        card = migrations.parent.parent.name
        scripts = {f"{card}/migrations/versions/{p.name}" for p in migrations.glob("*.py")}
        assert scripts <= names, f"missing from the image: {sorted(scripts - names)}"


def test_readme_explains_every_file_in_deploy() -> None:
    readme = (DEPLOY / "README.md").read_text()
    unexplained = []
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_dir() or "__pycache__" in path.parts or path.name == "README.md":
            continue
        relative = path.relative_to(DEPLOY)
        # A file is explained when the README names it (by its own name or its folder's path).
        if path.name not in readme and f"{relative.parent}/" not in readme:
            unexplained.append(str(relative))
    assert not unexplained, f"deploy/README.md does not mention: {unexplained}"
