"""deploy/kubernetes: every manifest is valid against the API schemas of a
current Kubernetes, the kustomizations render, and the pieces agree with each
other and with the CSI plugin (driver name, socket paths, capabilities,
parameters, RBAC of every sidecar, secret and service wiring)."""

import shutil
import subprocess
from pathlib import Path, PurePosixPath

import kubernetes_validate
import pytest
import yaml

from csi_plugin import controller, identity, parameters

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
EXAMPLE = KUBE / "example"
# Objects of the snapshot CRDs: applied by hand once the CRDs are installed,
# so in no kustomization (and not in the API schemas kubernetes-validate has).
SNAPSHOTS = KUBE / "snapshots"
FOLDERS = {KUBE: "dfs", EXAMPLE: "dfs-demo"}
K8S_VERSION = "1.37"
KUBELET_DIR = PurePosixPath("/var/lib/kubelet")
DFS_IMAGE = "dfs"
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CSIDriver",
                  "StorageClass"}

READ = {"get", "list", "watch"}
EVENTS = {"list", "watch", "create", "update", "patch"}
# What each sidecar needs for a driver that publishes (attachRequired),
# expands, snapshots and clones volumes, after the RBAC files the sidecars
# ship (without group snapshots). Leader election needs LEASES in the pod's
# namespace on top.
SIDECAR_RULES = {
    "csi-provisioner": {
        ("", "persistentvolumes"): READ | {"create", "patch", "delete"},
        ("", "persistentvolumeclaims"): READ | {"update"},
        ("storage.k8s.io", "storageclasses"): READ,
        ("", "events"): EVENTS,
        ("storage.k8s.io", "csinodes"): READ,
        ("", "nodes"): READ,
        ("storage.k8s.io", "volumeattachments"): READ,
        ("snapshot.storage.k8s.io", "volumesnapshots"): {"get", "list"},
        ("snapshot.storage.k8s.io", "volumesnapshotcontents"): {"get", "list"},
    },
    "csi-attacher": {
        ("", "persistentvolumes"): READ | {"patch"},
        ("storage.k8s.io", "csinodes"): READ,
        ("storage.k8s.io", "volumeattachments"): READ | {"patch"},
        ("storage.k8s.io", "volumeattachments/status"): {"patch"},
    },
    "csi-resizer": {
        ("", "persistentvolumes"): READ | {"patch"},
        ("", "persistentvolumeclaims"): READ,
        ("", "persistentvolumeclaims/status"): {"patch"},
        ("", "events"): EVENTS,
    },
    "csi-snapshotter": {
        ("", "events"): EVENTS,
        ("snapshot.storage.k8s.io", "volumesnapshotclasses"): READ,
        ("snapshot.storage.k8s.io", "volumesnapshotcontents"): READ | {"update", "patch"},
        ("snapshot.storage.k8s.io", "volumesnapshotcontents/status"): {"update", "patch"},
    },
    "csi-node-driver-registrar": {},
    "livenessprobe": {},
}
LEASES = {("coordination.k8s.io", "leases"): READ | {"create", "update", "delete"}}


def manifest_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.yaml") if p.name != "kustomization.yaml")


def load(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def objects(folder: Path = KUBE) -> list[dict]:
    return [doc for path in manifest_files(folder) for doc in load(path)]


def kustomization(folder: Path) -> dict:
    return yaml.safe_load((folder / "kustomization.yaml").read_text())


def the(kind: str, name: str, folder: Path = KUBE) -> dict:
    found = [o for o in objects(folder) if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def container(workload: dict, name: str) -> dict:
    found = [c for c in pod_spec(workload)["containers"] if c["name"] == name]
    assert found, f"{workload['metadata']['name']} has no container {name}"
    return found[0]


def sidecar_kind(c: dict) -> str:
    return c["image"].rpartition("/")[2].partition(":")[0]


def flags(c: dict) -> dict[str, str]:
    """`--name=value` and bare `--name` arguments of a container, as a dict."""
    out = {}
    for arg in c.get("args", []):
        if arg.startswith("--"):
            name, _, value = arg.partition("=")
            out[name] = value
    return out


def mount_at(workload: dict, c: dict, path: str) -> tuple[dict, dict]:
    """The volumeMount of `c` at `path` and the pod volume behind it."""
    mounts = [m for m in c.get("volumeMounts", []) if m["mountPath"] == path]
    assert mounts, f"container {c['name']} mounts nothing at {path}"
    volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
    return mounts[0], volumes[mounts[0]["name"]]


def generated_secrets(folder: Path) -> dict[str, dict[str, str]]:
    """secretGenerator name -> {key: file} of a kustomization."""
    return {g["name"]: dict(f.split("=", 1) for f in g["files"])
            for g in kustomization(folder).get("secretGenerator", [])}


def validate(doc: dict, where: str) -> None:
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{where}: {doc['kind']}/{doc['metadata']['name']} at {path}: {exc.message}")


@pytest.mark.parametrize("path", manifest_files(KUBE) + manifest_files(EXAMPLE),
                         ids=lambda p: str(p.relative_to(KUBE)))
def test_manifest_is_valid_against_the_api_schema(path):
    docs = load(path)
    assert docs, f"{path} holds no object"
    for doc in docs:
        validate(doc, path.name)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("folder", FOLDERS, ids=lambda f: str(f.relative_to(ROOT)))
def test_kustomization_renders_every_manifest_and_its_secrets(folder, tmp_path):
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with its built-in kustomize) is needed to render kustomizations"
    work = tmp_path / folder.name
    shutil.copytree(folder, work, ignore=shutil.ignore_patterns("example"))
    for files in generated_secrets(folder).values():
        for file in files.values():
            (work / file).write_text("0123456789abcdef0123456789abcdef\n")
    rendered = subprocess.run([kubectl, "kustomize", str(work)], capture_output=True,
                              text=True, timeout=50)
    assert rendered.returncode == 0, rendered.stderr
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    for doc in docs:
        validate(doc, f"kubectl kustomize {folder.name}")
    expected = {(o["kind"], o["metadata"]["name"]) for o in objects(folder)}
    expected |= {("Secret", name) for name in generated_secrets(folder)}
    assert {(d["kind"], d["metadata"]["name"]) for d in docs} == expected


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda f: str(f.relative_to(ROOT)))
def test_apply_k_and_apply_f_install_the_same_objects(folder):
    assert sorted(kustomization(folder)["resources"]) == [p.name for p in manifest_files(folder)]
    ignored = set((folder / ".gitignore").read_text().split())
    for files in generated_secrets(folder).values():
        assert set(files.values()) <= ignored, "secret files must never be committed"


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda f: str(f.relative_to(ROOT)))
def test_namespaced_objects_name_their_namespace(folder):
    namespace = FOLDERS[folder]
    the("Namespace", namespace, folder)
    for obj in objects(folder):
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"].get("namespace") == namespace, obj["metadata"]["name"]
    for generator in kustomization(folder).get("secretGenerator", []):
        assert generator["namespace"] == namespace


def test_driver_name_agrees_everywhere():
    driver = the("CSIDriver", identity.PLUGIN_NAME)["metadata"]["name"]
    storage_class = the("StorageClass", "dfs")
    assert storage_class["provisioner"] == driver
    claim = the("PersistentVolumeClaim", "mysql-data", EXAMPLE)
    assert claim["spec"]["storageClassName"] == storage_class["metadata"]["name"]
    node = the("DaemonSet", "dfs-csi-node")
    registrar = flags(container(node, "node-driver-registrar"))
    assert PurePosixPath(registrar["--kubelet-registration-path"]).parent.name == driver


def test_csidriver_and_sidecars_match_the_plugin_capabilities():
    caps = set(controller.CAPABILITIES)
    rpc = controller.RPC
    driver = the("CSIDriver", identity.PLUGIN_NAME)["spec"]
    sidecars = {sidecar_kind(c) for c in pod_spec(the("Deployment", "dfs-csi-controller"))
                ["containers"]}
    publishes = rpc.PUBLISH_UNPUBLISH_VOLUME in caps
    assert driver["attachRequired"] is publishes
    assert ("csi-attacher" in sidecars) is publishes
    assert ("csi-resizer" in sidecars) is (rpc.EXPAND_VOLUME in caps)
    assert ("csi-snapshotter" in sidecars) is (rpc.CREATE_DELETE_SNAPSHOT in caps)
    assert "csi-provisioner" in sidecars and rpc.CREATE_DELETE_VOLUME in caps
    assert the("StorageClass", "dfs")["allowVolumeExpansion"] is (rpc.EXPAND_VOLUME in caps)


# The VolumeSnapshotClass CRD's schema (snapshot.storage.k8s.io/v1), which
# kubernetes-validate does not have: its fields, the required ones, the choices.
SNAPSHOT_CLASS_FIELDS = {"apiVersion", "kind", "metadata", "driver", "deletionPolicy",
                         "parameters"}
SNAPSHOT_CLASS_REQUIRED = {"apiVersion", "kind", "metadata", "driver", "deletionPolicy"}
DELETION_POLICIES = {"Delete", "Retain"}


def test_snapshot_class_matches_the_plugin_and_stays_out_of_kustomize():
    snapshots = controller.RPC.CREATE_DELETE_SNAPSHOT in controller.CAPABILITIES
    files = manifest_files(SNAPSHOTS) if SNAPSHOTS.is_dir() else []
    assert bool(files) is snapshots
    classes = [doc for path in files for doc in load(path)]
    assert [c["kind"] for c in classes] == ["VolumeSnapshotClass"] * len(classes)
    for snapshot_class in classes:
        name = snapshot_class["metadata"]["name"]
        assert SNAPSHOT_CLASS_REQUIRED <= snapshot_class.keys() <= SNAPSHOT_CLASS_FIELDS, name
        assert snapshot_class["apiVersion"] == "snapshot.storage.k8s.io/v1"
        assert snapshot_class["driver"] == identity.PLUGIN_NAME
        assert snapshot_class["deletionPolicy"] in DELETION_POLICIES
        assert "namespace" not in snapshot_class["metadata"], "the class is cluster-wide"
        parameters.check_snapshot_parameters(snapshot_class.get("parameters", {}))
    assert not (SNAPSHOTS / "kustomization.yaml").exists()
    for folder in FOLDERS:
        assert not any(r.startswith("snapshots") for r in kustomization(folder)["resources"])


def test_storageclass_parameters_are_accepted_by_the_plugin():
    settings = parameters.parse(the("StorageClass", "dfs")["parameters"])
    assert settings["replicas"] >= 1


@pytest.mark.parametrize("kind,name", [("Deployment", "dfs-csi-controller"),
                                       ("DaemonSet", "dfs-csi-node")])
def test_every_sidecar_finds_the_plugin_socket(kind, name):
    workload = the(kind, name)
    plugin = container(workload, "dfs-csi")
    endpoint = flags(plugin)["--endpoint"]
    assert endpoint.startswith("unix://")
    socket = PurePosixPath(endpoint.removeprefix("unix://"))
    _, socket_volume = mount_at(workload, plugin, str(socket.parent))
    for c in pod_spec(workload)["containers"]:
        if c is plugin:
            continue
        assert flags(c)["--csi-address"] == str(socket), c["name"]
        _, volume = mount_at(workload, c, str(socket.parent))
        assert volume == socket_volume, c["name"]


def test_node_plugin_socket_is_where_the_kubelet_looks():
    node = the("DaemonSet", "dfs-csi-node")
    plugin = container(node, "dfs-csi")
    socket = PurePosixPath(flags(plugin)["--endpoint"].removeprefix("unix://"))
    _, volume = mount_at(node, plugin, str(socket.parent))
    host_dir = KUBELET_DIR / "plugins" / identity.PLUGIN_NAME
    assert volume["hostPath"]["path"] == str(host_dir)
    registrar = container(node, "node-driver-registrar")
    assert flags(registrar)["--kubelet-registration-path"] == str(host_dir / socket.name)
    # The registrar drops its registration socket in /registration.
    _, registration = mount_at(node, registrar, "/registration")
    assert registration["hostPath"]["path"] == str(KUBELET_DIR / "plugins_registry")


def test_node_plugin_can_mount_fuse_for_the_kubelet():
    node = the("DaemonSet", "dfs-csi-node")
    plugin = container(node, "dfs-csi")
    assert plugin["securityContext"]["privileged"] is True
    mount, volume = mount_at(node, plugin, str(KUBELET_DIR))
    assert mount["mountPropagation"] == "Bidirectional"
    assert volume["hostPath"]["path"] == str(KUBELET_DIR)
    _, fuse = mount_at(node, plugin, "/dev/fuse")
    assert fuse["hostPath"] == {"path": "/dev/fuse", "type": "CharDevice"}
    _, state = mount_at(node, plugin, flags(plugin)["--state-dir"])
    assert "hostPath" in state, "the plugin's state must outlive its container"
    assert pod_spec(node)["tolerations"] == [{"operator": "Exists"}]
    namespace = the("Namespace", "dfs")["metadata"]["labels"]
    assert namespace["pod-security.kubernetes.io/enforce"] == "privileged"


def _rules(role: dict) -> set[tuple[str, str, str]]:
    granted = set()
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (group, resource, verb), f"wildcard in {role['metadata']}"
                    granted.add((group, resource, verb))
    return granted


def _expand(rules: dict) -> set[tuple[str, str, str]]:
    return {(g, r, v) for (g, r), verbs in rules.items() for v in verbs}


def granted_to(account: str, namespace: str) -> tuple[set, set]:
    """(cluster-wide, in-namespace) permissions of a service account."""
    objs = objects()
    subject = {"kind": "ServiceAccount", "name": account, "namespace": namespace}
    roles = {(o["kind"], o["metadata"]["name"]): o for o in objs
             if o["kind"] in ("Role", "ClusterRole")}
    cluster, local = set(), set()
    for binding in objs:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if subject not in binding["subjects"]:
            continue
        rules = _rules(roles[(binding["roleRef"]["kind"], binding["roleRef"]["name"])])
        if binding["kind"] == "ClusterRoleBinding":
            cluster |= rules
        else:
            assert binding["metadata"]["namespace"] == namespace
            local |= rules
    return cluster, local


@pytest.mark.parametrize("kind,name", [("Deployment", "dfs-csi-controller"),
                                       ("DaemonSet", "dfs-csi-node")])
def test_rbac_gives_each_sidecar_what_it_needs_and_no_more(kind, name):
    workload = the(kind, name)
    spec = pod_spec(workload)
    namespace = workload["metadata"]["namespace"]
    account = spec["serviceAccountName"]
    the("ServiceAccount", account)
    needed_cluster, needed_local = set(), set()
    for c in spec["containers"]:
        if c["image"].startswith(DFS_IMAGE + ":"):
            continue
        needed_cluster |= _expand(SIDECAR_RULES[sidecar_kind(c)])
        if "--leader-election" in flags(c):
            needed_local |= _expand(LEASES)
    cluster, local = granted_to(account, namespace)
    assert needed_cluster - cluster == set(), "missing cluster-wide permissions"
    assert needed_local - local == set(), "missing leader-election permissions"
    assert cluster - needed_cluster == set(), "permissions no sidecar needs"
    assert local - needed_local == set(), "namespaced permissions no sidecar needs"
    if not needed_cluster | needed_local:
        account_obj = the("ServiceAccount", account)
        assert account_obj.get("automountServiceAccountToken") is False


def test_replicated_controllers_elect_a_leader_and_spread_out():
    deployment = the("Deployment", "dfs-csi-controller")
    assert deployment["spec"]["replicas"] >= 2
    for c in pod_spec(deployment)["containers"]:
        if sidecar_kind(c) in ("csi-provisioner", "csi-attacher", "csi-resizer",
                               "csi-snapshotter"):
            assert "--leader-election" in flags(c), c["name"]
    terms = pod_spec(deployment)["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"]
    assert _spreads(terms[0]["podAffinityTerm"], deployment)


def _spreads(term: dict, workload: dict) -> bool:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    selector = term["labelSelector"]["matchLabels"]
    return term["topologyKey"] == "kubernetes.io/hostname" and selector.items() <= labels.items()


def test_chunk_servers_land_on_different_nodes():
    chunkservers = the("StatefulSet", "dfs-chunkserver")
    terms = pod_spec(chunkservers)["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]
    assert any(_spreads(term, chunkservers) for term in terms)


def test_metalogger_lands_on_another_node_than_the_metaserver():
    metalogger = the("StatefulSet", "dfs-metalogger")
    assert metalogger["spec"]["replicas"] == 1
    terms = pod_spec(metalogger)["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]
    assert any(_spreads(term, the("StatefulSet", "dfs-metaserver")) for term in terms)


def test_servers_keep_their_folders_on_their_own_persistent_volumes():
    for workload in _workloads():
        if workload["kind"] != "StatefulSet":
            continue
        claims = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        for c in pod_spec(workload)["containers"]:
            for flag in ("--data-dir", "--backup-dir"):
                if flag not in flags(c):
                    continue
                mounts = [m["name"] for m in c["volumeMounts"]
                          if m["mountPath"] == flags(c)[flag]]
                assert mounts and mounts[0] in claims, f"{c['name']} {flag}"


def _workloads(folder: Path = KUBE) -> list[dict]:
    return [o for o in objects(folder) if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]


def test_every_container_has_requests_and_dfs_services_have_probes():
    for workload in _workloads() + _workloads(EXAMPLE):
        for c in pod_spec(workload)["containers"]:
            requests = c["resources"]["requests"]
            assert {"cpu", "memory"} <= requests.keys(), c["name"]
            if c["image"].startswith(DFS_IMAGE + ":"):
                assert "livenessProbe" in c, c["name"]
    for name in ("dfs-metaserver", "dfs-metalogger", "dfs-chunkserver"):
        server = pod_spec(the("StatefulSet", name))["containers"][0]
        assert "readinessProbe" in server and "livenessProbe" in server, name


def test_images_are_pinned_and_dfs_image_is_set_in_one_place():
    for workload in _workloads() + _workloads(EXAMPLE):
        for c in pod_spec(workload)["containers"]:
            name, _, tag = c["image"].rpartition(":")
            assert name and tag and tag != "latest", c["image"]
    images = {i["name"] for i in kustomization(KUBE)["images"]}
    assert images == {DFS_IMAGE}


def test_secret_files_are_the_mounted_cluster_secret():
    secrets = generated_secrets(KUBE)
    for workload in _workloads():
        for c in pod_spec(workload)["containers"]:
            secret_file = flags(c).get("--secret-file")
            if secret_file is None:
                continue
            path = PurePosixPath(secret_file)
            mount, volume = mount_at(workload, c, str(path.parent))
            assert mount["readOnly"] is True
            assert path.name in secrets[volume["secret"]["secretName"]], secret_file
    mysql = container(the("StatefulSet", "mysql", EXAMPLE), "mysql")
    ref = mysql["env"][0]["valueFrom"]["secretKeyRef"]
    assert ref["key"] in generated_secrets(EXAMPLE)[ref["name"]]


def _service_address(name: str) -> tuple[str, int]:
    service = the("Service", name)
    return (f"{name}.{service['metadata']['namespace']}.svc",
            service["spec"]["ports"][0]["port"])


def _listen_port(c: dict, port_name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    listen_port = int(flags(c)["--listen"].rpartition(":")[2])
    assert ports[port_name] == listen_port
    return listen_port


def test_services_lead_to_the_ports_the_servers_listen_on():
    meta_host, meta_port = _service_address("dfs-metaserver")
    metaserver = pod_spec(the("StatefulSet", "dfs-metaserver"))["containers"][0]
    service = the("Service", "dfs-metaserver")["spec"]["ports"][0]
    assert _listen_port(metaserver, service["targetPort"]) == meta_port
    for workload in _workloads():
        for c in pod_spec(workload)["containers"]:
            if "--meta" in flags(c):
                assert flags(c)["--meta"] == f"{meta_host}:{meta_port}", c["name"]
    chunkservers = the("StatefulSet", "dfs-chunkserver")
    chunk_host, chunk_port = _service_address("dfs-chunkserver")
    assert chunkservers["spec"]["serviceName"] == "dfs-chunkserver"
    assert the("Service", "dfs-chunkserver")["spec"]["clusterIP"] == "None"
    chunkserver = pod_spec(chunkservers)["containers"][0]
    assert _listen_port(chunkserver, "chunk") == chunk_port
    assert flags(chunkserver)["--advertise"] == f"$(POD_NAME).{chunk_host}:{chunk_port}"
