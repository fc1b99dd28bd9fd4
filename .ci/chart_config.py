"""Checks one rendered helm/kabar manifest stream (stdin) for chart/config drift.

Writes the config Secret's files (kabar.yaml and templates) into OUT_DIR/etc/kabar, and for
every *_file path in kabar.yaml proves that the rendered workload mounts a Secret key at
exactly that path; it then creates a placeholder at that path under OUT_DIR and rewrites
kabar.yaml to point there, so `kabar check` can load the config as the pod would.
Prints the rewritten config's path, or nothing when the config comes from an existing
Secret. Exits non-zero, naming the problem, on any mismatch.
"""

import base64
import os
import posixpath
import subprocess
import sys

import yaml

PLACEHOLDERS = {
    "webhook_url_file": "https://chat.googleapis.com/v1/spaces/CI/messages?key=ci&token=ci",
    "bearer_token_file": "ci-placeholder-token",
    "password_file": "ci-placeholder-password",
    # kabar check reads and parses the URL; nothing listens there.
    "url_file": "postgres://kabar:ci-placeholder@127.0.0.1:1/kabar?sslmode=disable",
}


def tls_pair(out_dir):
    """A throwaway self-signed certificate and key (PEM), so a check that reads
    server.tls files finds a real pair where the pod would find the mounted Secret."""
    cert, key = posixpath.join(out_dir, "ci-tls.crt"), posixpath.join(out_dir, "ci-tls.key")
    if not os.path.exists(cert):
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-subj", "/CN=kabar-ci", "-days", "1", "-keyout", key, "-out", cert],
            check=True, capture_output=True,
        )
    with open(cert) as c, open(key) as k:
        return {"cert_file": c.read(), "key_file": k.read()}


def fail(message):
    sys.exit(f"chart config check: {message}")


def secret_files(path, mounts, volumes):
    """The (secret name, key) mounted at `path`, or None."""
    for mount in mounts:
        root = mount["mountPath"].rstrip("/")
        if not path.startswith(root + "/"):
            continue
        relative = path[len(root) + 1 :]
        secret = volumes.get(mount["name"], {}).get("secret")
        if secret is None:
            continue
        items = secret.get("items")
        if items is None:
            return (secret["secretName"], relative)
        for item in items:
            if item["path"] == relative:
                return (secret["secretName"], item["key"])
    return None


def walk_files(node, trail=()):
    if isinstance(node, dict):
        for key, value in node.items():
            if key.endswith("_file") and isinstance(value, str):
                yield trail + (key,), key, value
            else:
                yield from walk_files(value, trail + (key,))


def set_at(node, trail, value):
    for key in trail[:-1]:
        node = node[key]
    node[trail[-1]] = value


def check_exposure(docs, pod, container, config):
    """TLS reaches the probes and the ServiceMonitor; the ServiceMonitor scrapes the pod
    through a Service that lists unready pods; a NetworkPolicy admits only kabar's port."""
    tls = bool(((config or {}).get("server") or {}).get("tls")) or any(
        v.get("secret", {}).get("secretName") and v["name"] == "tls" for v in pod["volumes"]
    )
    for probe in ("livenessProbe", "readinessProbe"):
        http_get = container.get(probe, {}).get("httpGet")
        if http_get is not None:
            scheme = http_get.get("scheme", "HTTP")
            if scheme != ("HTTPS" if tls else "HTTP"):
                fail(f"{probe} uses {scheme} while kabar serves {'HTTPS' if tls else 'HTTP'}")
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    for monitor in (d for d in docs if d["kind"] == "ServiceMonitor"):
        wanted = monitor["spec"]["selector"]["matchLabels"]
        selected = [s for s in services.values()
                    if wanted.items() <= s["metadata"].get("labels", {}).items()]
        if len(selected) != 1:
            fail(f"the ServiceMonitor selects {len(selected)} Services, not the metrics one")
        if not selected[0]["spec"].get("publishNotReadyAddresses"):
            fail("the ServiceMonitor's Service drops unready pods: an unready kabar would not be scraped")
        for endpoint in monitor["spec"]["endpoints"]:
            if tls and endpoint.get("scheme") != "https":
                fail("kabar serves HTTPS but the ServiceMonitor scrapes with " + str(endpoint.get("scheme")))
    for policy in (d for d in docs if d["kind"] == "NetworkPolicy"):
        if policy["spec"]["policyTypes"] != ["Ingress"]:
            fail("the NetworkPolicy should restrict ingress only")
        for rule in policy["spec"]["ingress"]:
            if rule.get("ports") != [{"port": "http", "protocol": "TCP"}] or not rule.get("from"):
                fail(f"NetworkPolicy rule admits more than kabar's port from named peers: {rule}")


def check_replicas(docs, workload, pod, container, config):
    """SQLite (no store.postgres): one pod, never two at once. PostgreSQL: a Deployment of
    2+ pods without volume claims that rolls one new pod in before an old one goes, a
    budget that lets one pod go at a time, spread over nodes, the URL mounted read-only."""
    spec = workload["spec"]
    replicas = spec.get("replicas", 1)
    if config is None:
        # The config is not rendered: the chart's own PostgreSQL mount tells the store.
        postgres = next(({"url_file": "/etc/kabar-secrets/postgres/url"} for v in pod["volumes"]
                         if v["name"] == "postgres-url"), None)
    else:
        postgres = (config.get("store") or {}).get("postgres")
    budgets = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    pod_labels = workload["spec"]["template"]["metadata"]["labels"]
    for budget in budgets:
        if not budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items():
            fail("the PodDisruptionBudget does not select kabar's pods")
    if not postgres:
        if replicas > 1:
            fail(f"{replicas} replicas on SQLite: each would keep its own state")
        if workload["kind"] == "Deployment" and spec["strategy"]["type"] != "Recreate":
            fail("a SQLite Deployment must stop the old pod before starting the new one")
        return
    if workload["kind"] != "Deployment" or spec.get("volumeClaimTemplates"):
        fail("on PostgreSQL kabar runs as a Deployment without volume claims")
    if replicas < 2:
        fail(f"{replicas} replica(s) on PostgreSQL: no second pod to take the spaces over")
    rolling = spec["strategy"].get("rollingUpdate", {})
    if spec["strategy"]["type"] != "RollingUpdate" or rolling.get("maxUnavailable") != 0:
        fail("on PostgreSQL an upgrade must start a new pod before stopping an old one")
    if len(budgets) != 1 or budgets[0]["spec"].get("maxUnavailable") != 1:
        fail("on PostgreSQL a PodDisruptionBudget with maxUnavailable: 1 is expected")
    keys = {c["topologyKey"] for c in pod.get("topologySpreadConstraints", [])
            if c["labelSelector"]["matchLabels"].items() <= pod_labels.items()}
    if "kubernetes.io/hostname" not in keys:
        fail("on PostgreSQL the replicas must be spread over nodes")
    url_file = postgres.get("url_file")
    if not url_file or "url" in postgres:
        fail("store.postgres must take the URL from a mounted file (url_file), not inline")
    mounts = [m for m in container["volumeMounts"] if url_file.startswith(m["mountPath"].rstrip("/") + "/")]
    if not mounts or not all(m.get("readOnly") for m in mounts):
        fail(f"store.postgres.url_file {url_file} is not on a read-only mount")


def main():
    out_dir = sys.argv[1]
    docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    if len(workloads) != 1:
        fail(f"expected one Deployment or StatefulSet, found {len(workloads)}")
    pod = workloads[0]["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "kabar"]
    mounts = container["volumeMounts"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    args = container["args"]
    config_path = args[args.index("--config") + 1]
    config_secret = secret_files(config_path, mounts, volumes)
    if config_secret is None:
        fail(f"--config {config_path} is not a mounted Secret key")
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    if config_secret[0] not in secrets:
        # An existing Secret the chart does not render: only what the chart itself decides.
        check_exposure(docs, pod, container, None)
        check_replicas(docs, workloads[0], pod, container, None)
        return
    config_secret_doc = secrets[config_secret[0]]
    config_dir = posixpath.dirname(config_path)
    local_config_dir = out_dir + config_dir
    os.makedirs(local_config_dir, exist_ok=True)
    for key, value in config_secret_doc.get("data", {}).items():
        with open(posixpath.join(local_config_dir, key), "wb") as f:
            f.write(base64.b64decode(value))
    config = yaml.safe_load(base64.b64decode(config_secret_doc["data"][config_secret[1]]))
    if config.get("listen") != "0.0.0.0:9095":
        fail(f"listen is {config.get('listen')!r}, the container port is 9095")
    check_replicas(docs, workloads[0], pod, container, config)
    state_mounts = [m for m in mounts if m["mountPath"] == config.get("state_dir")]
    if not state_mounts:
        fail(f"state_dir {config.get('state_dir')!r} is not a volume mount")
    for trail, key, path in walk_files(config):
        if not path.startswith("/"):
            path = posixpath.join(config_dir, path)
        found = secret_files(path, mounts, volumes)
        if found is None:
            fail(f"{'.'.join(trail)} names {path}, which no Secret volume mounts")
        secret_name, secret_key = found
        if secret_name in secrets:
            data = secrets[secret_name].get("data", {})
            if secret_key not in data:
                fail(f"{'.'.join(trail)}: Secret {secret_name} has no key {secret_key}")
        local = out_dir + path
        os.makedirs(posixpath.dirname(local), exist_ok=True)
        if key in ("cert_file", "key_file"):
            content = tls_pair(out_dir)[key]
        else:
            content = PLACEHOLDERS.get(key, "ci-placeholder")
        with open(local, "w") as f:
            f.write(content)
        set_at(config, trail, local)
    check_exposure(docs, pod, container, config)
    rewritten = posixpath.join(local_config_dir, "kabar.check.yaml")
    with open(rewritten, "w") as f:
        yaml.safe_dump(config, f)
    print(rewritten)


main()
