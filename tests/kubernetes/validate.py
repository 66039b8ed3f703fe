#!/usr/bin/env python3
"""Validate every manifest in config/kubernetes/ offline.

- Built-in kinds: against the Kubernetes OpenAPI schemas of 1.29, 1.30 and 1.31, strictly
  (unknown fields are errors), with the `kubernetes-validate` package.
- cert-manager Certificates and Prometheus Operator PodMonitors (CRDs, which those schemas do
  not have): their fields, structurally, after the CRDs' own schemas.
- Every pod template against the "restricted" Pod Security Standard, and against the image:
  the user is the Dockerfile's numeric USER.
- References: every ConfigMap and Secret a pod mounts is defined here (a Secret by a
  Certificate's secretName), every PodMonitor and NetworkPolicy port exists on the pods they
  select.

Usage: validate.py [REPO_ROOT]. Exit 0 when everything passes, 1 with a list of problems.
Needs PyYAML and kubernetes-validate (`pip install kubernetes-validate`).
"""

import pathlib
import re
import sys

import kubernetes_validate
import yaml

KUBERNETES_VERSIONS = ["1.29.0", "1.30.0", "1.31.0"]

# Volume types the restricted profile allows.
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}
CERT_MANAGER_USAGES = {
    "signing", "digital signature", "content commitment", "key encipherment", "key agreement",
    "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any",
    "server auth", "client auth", "code signing", "email protection", "s/mime",
    "ipsec end system", "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing",
    "microsoft sgc", "netscape sgc",
}
DURATION = re.compile(r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$")


class Problems:
    def __init__(self):
        self.items = []

    def add(self, where, message):
        self.items.append(f"{where}: {message}")

    def check(self, condition, where, message):
        if not condition:
            self.add(where, message)


def name_of(doc):
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def load(repo):
    docs = []
    for path in sorted((repo / "config" / "kubernetes").glob("*.yaml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                docs.append((f"{path.name}#{i}", doc))
    return docs


def schema_validate(where, doc, problems):
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            problems.add(where, f"{name_of(doc)} invalid for Kubernetes {version} at {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.add(where, f"{name_of(doc)}: no schema for Kubernetes {version}: {e}")


def is_str_list(value):
    return isinstance(value, list) and value and all(isinstance(v, str) for v in value)


def check_certificate(where, doc, problems):
    """cert-manager.io/v1 Certificate, after the CRD's schema (required fields and types)."""
    w = f"{where} {name_of(doc)}"
    spec = doc.get("spec") or {}
    known = {
        "secretName", "issuerRef", "commonName", "dnsNames", "uris", "ipAddresses",
        "emailAddresses", "usages", "duration", "renewBefore", "privateKey", "isCA", "subject",
        "secretTemplate", "keystores", "literalSubject", "revisionHistoryLimit",
        "additionalOutputFormats", "encodeUsagesInRequest", "nameConstraints",
        "otherNames", "renewBeforePercentage", "signatureAlgorithm",
    }
    for key in spec:
        problems.check(key in known, w, f"unknown field spec.{key}")
    problems.check(isinstance(spec.get("secretName"), str), w, "spec.secretName (string) is required")
    issuer = spec.get("issuerRef") or {}
    problems.check(isinstance(issuer.get("name"), str), w, "spec.issuerRef.name is required")
    problems.check(issuer.get("kind") in ("Issuer", "ClusterIssuer") or issuer.get("group") not in (None, "cert-manager.io"),
                   w, "spec.issuerRef.kind must be Issuer or ClusterIssuer")
    problems.check(any(spec.get(k) for k in ("commonName", "dnsNames", "uris", "ipAddresses", "emailAddresses", "literalSubject")),
                   w, "a certificate needs at least one name")
    for key in ("dnsNames", "uris", "ipAddresses", "emailAddresses"):
        if key in spec:
            problems.check(is_str_list(spec[key]), w, f"spec.{key} must be a list of strings")
    for usage in spec.get("usages", []):
        problems.check(usage in CERT_MANAGER_USAGES, w, f"unknown usage {usage!r}")
    for key in ("duration", "renewBefore"):
        if key in spec:
            problems.check(isinstance(spec[key], str) and DURATION.match(spec[key]), w, f"spec.{key} is not a Go duration")
    key = spec.get("privateKey") or {}
    problems.check(key.get("algorithm", "RSA") in ("RSA", "ECDSA", "Ed25519"), w, "privateKey.algorithm")
    problems.check(key.get("encoding", "PKCS1") in ("PKCS1", "PKCS8"), w, "privateKey.encoding")
    problems.check(key.get("rotationPolicy", "Never") in ("Never", "Always"), w, "privateKey.rotationPolicy")
    if key.get("algorithm") == "ECDSA":
        problems.check(key.get("size", 256) in (256, 384, 521), w, "ECDSA privateKey.size")
    usages = set(spec.get("usages", []))
    problems.check("server auth" in usages or "client auth" in usages, w, "neither server auth nor client auth usage")
    return spec.get("secretName")


def check_podmonitor(where, doc, problems):
    """monitoring.coreos.com/v1 PodMonitor, after the CRD's schema."""
    w = f"{where} {name_of(doc)}"
    spec = doc.get("spec") or {}
    for key in spec:
        problems.check(key in {"selector", "podMetricsEndpoints", "namespaceSelector", "jobLabel",
                               "podTargetLabels", "sampleLimit", "targetLimit", "attachMetadata",
                               "labelLimit", "labelNameLengthLimit", "labelValueLengthLimit",
                               "keepDroppedTargets", "scrapeProtocols", "scrapeClass",
                               "bodySizeLimit", "fallbackScrapeProtocol"},
                       w, f"unknown field spec.{key}")
    selector = spec.get("selector")
    problems.check(isinstance(selector, dict) and (selector.get("matchLabels") or selector.get("matchExpressions")),
                   w, "spec.selector with matchLabels or matchExpressions is required")
    endpoints = spec.get("podMetricsEndpoints")
    problems.check(isinstance(endpoints, list) and endpoints, w, "spec.podMetricsEndpoints is required")
    for ep in endpoints or []:
        problems.check(isinstance(ep.get("port"), str), w, "each endpoint names a container port")
        problems.check(ep.get("scheme", "http") in ("http", "https"), w, "endpoint scheme")
        if "interval" in ep:
            problems.check(re.match(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$", ep["interval"]),
                           w, "endpoint interval is not a Prometheus duration")
    return selector or {}, endpoints or []


def dockerfile_user(repo):
    for line in (repo / "Dockerfile").read_text().splitlines():
        if line.startswith("USER "):
            user = line.split()[1]
    return user


def check_restricted(where, pod, image_user, problems):
    """The "restricted" Pod Security Standard (Kubernetes 1.29+), plus our own requirements."""
    spec = pod.get("spec") or {}
    psc = spec.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        problems.check(not spec.get(key), where, f"{key} is not allowed")
    problems.check(spec.get("automountServiceAccountToken") is False, where,
                   "automountServiceAccountToken must be false (no API access needed)")
    for volume in spec.get("volumes", []):
        types = set(volume) - {"name"}
        problems.check(types <= RESTRICTED_VOLUMES, where, f"volume {volume['name']}: type {types} not allowed")
    uid, gid = (int(x) for x in image_user.split(":"))
    containers = spec.get("containers", []) + spec.get("initContainers", [])
    problems.check(containers, where, "no containers")
    for c in containers:
        csc = c.get("securityContext") or {}
        cw = f"{where} container {c['name']}"

        def effective(key):
            return csc.get(key, psc.get(key))

        problems.check(effective("runAsNonRoot") is True, cw, "runAsNonRoot must be true")
        run_as = effective("runAsUser")
        problems.check(isinstance(run_as, int) and run_as != 0, cw, "runAsUser must be a non-zero number")
        seccomp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        problems.check(seccomp in ("RuntimeDefault", "Localhost"), cw, "seccompProfile must be RuntimeDefault")
        problems.check(csc.get("allowPrivilegeEscalation") is False, cw, "allowPrivilegeEscalation must be false")
        problems.check(not csc.get("privileged"), cw, "privileged is not allowed")
        caps = csc.get("capabilities") or {}
        problems.check("ALL" in (caps.get("drop") or []), cw, "capabilities must drop ALL")
        problems.check(set(caps.get("add") or []) <= {"NET_BIND_SERVICE"}, cw, "only NET_BIND_SERVICE may be added")
        problems.check(csc.get("readOnlyRootFilesystem") is True, cw, "readOnlyRootFilesystem must be true")
        problems.check(csc.get("procMount", "Default") == "Default", cw, "procMount")
        for port in c.get("ports", []):
            problems.check("hostPort" not in port, cw, "hostPort is not allowed")
        if "certguard" in c.get("image", ""):
            problems.check(run_as == uid and effective("runAsGroup") == gid, cw,
                           f"runs as {run_as}:{effective('runAsGroup')}, the image's USER is {image_user}")


def labels_match(selector, labels):
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def main():
    repo = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    problems = Problems()
    docs = load(repo)
    image_user = dockerfile_user(repo)
    problems.check(re.fullmatch(r"[1-9][0-9]*:[1-9][0-9]*", image_user or ""), "Dockerfile",
                   f"USER {image_user} is not a numeric non-root user:group")
    kinds = {}
    configmaps, secrets, pods, podmonitors, policies = set(), set(), [], [], []
    for where, doc in docs:
        kind = doc.get("kind")
        kinds[kind] = kinds.get(kind, 0) + 1
        api = doc.get("apiVersion", "")
        if api == "cert-manager.io/v1" and kind == "Certificate":
            secrets.add(check_certificate(where, doc, problems))
        elif api == "monitoring.coreos.com/v1" and kind == "PodMonitor":
            podmonitors.append((where, check_podmonitor(where, doc, problems)))
        else:
            schema_validate(where, doc, problems)
        if kind == "ConfigMap":
            configmaps.add(doc["metadata"]["name"])
        elif kind == "Secret":
            secrets.add(doc["metadata"]["name"])
        elif kind in ("Deployment", "StatefulSet", "DaemonSet"):
            pods.append((f"{where} {name_of(doc)}", doc["spec"]["template"]))
        elif kind == "Pod":
            pods.append((f"{where} {name_of(doc)}", doc))
        elif kind == "NetworkPolicy":
            policies.append((where, doc))
    for kind in ("Deployment", "NetworkPolicy", "Certificate", "PodMonitor", "Service"):
        problems.check(kinds.get(kind), "config/kubernetes", f"no {kind}")

    for where, pod in pods:
        check_restricted(where, pod, image_user, problems)
        for volume in pod["spec"].get("volumes", []):
            if "configMap" in volume:
                problems.check(volume["configMap"]["name"] in configmaps, where,
                               f"ConfigMap {volume['configMap']['name']} is not defined")
            if "secret" in volume:
                problems.check(volume["secret"]["secretName"] in secrets, where,
                               f"Secret {volume['secret']['secretName']} is neither defined nor issued by a Certificate")
    ports = {}  # pod template labels -> {name: number}
    for where, pod in pods:
        named = {p["name"]: p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", []) if "name" in p}
        ports[where] = (pod["metadata"].get("labels") or {}, named)
    for where, (selector, endpoints) in podmonitors:
        selected = [named for labels, named in ports.values() if labels_match(selector, labels)]
        problems.check(selected, where, "the PodMonitor selects no pod template")
        for named in selected:
            for ep in endpoints:
                problems.check(ep.get("port") in named, where, f"port {ep.get('port')} is not a named container port")
    for where, policy in policies:
        selected = [named for labels, named in ports.values() if labels_match(policy["spec"]["podSelector"], labels)]
        problems.check(selected, where, "the NetworkPolicy selects no pod template")
        admin_ports = {9901}
        for named in selected:
            for rule in policy["spec"].get("ingress", []):
                for port in rule.get("ports", []):
                    problems.check(port["port"] in named.values(), where, f"port {port['port']} is not a container port")
                    if port["port"] in admin_ports:
                        # The admin port is for Prometheus only, wherever it runs: every peer
                        # needs both a namespace and a pod selector.
                        for peer in rule.get("from", []):
                            problems.check("namespaceSelector" in peer and "podSelector" in peer, where,
                                           "the admin port must be admitted by namespaceSelector + podSelector")

    if problems.items:
        print("\n".join(problems.items))
        print(f"{len(problems.items)} problem(s) in {len(docs)} manifests")
        return 1
    print(f"{len(docs)} manifests valid for Kubernetes {', '.join(KUBERNETES_VERSIONS)}; "
          f"{len(pods)} pod template(s) meet the restricted profile; kinds: {dict(sorted(kinds.items()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
