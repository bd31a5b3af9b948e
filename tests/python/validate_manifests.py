"""Validate rendered manifests: every object against its schema, offline.

Built-in kinds: kubernetes-validate --strict (unknown fields fail) for each Kubernetes version
given. KEDA objects: check-jsonschema against the strict KEDA v2.20.2 schemas in shared/spec.
KServe InferenceService: check-jsonschema against the v1beta1 schema of the KServe v0.20.0 CRD.
ServiceMonitor and cert-manager Certificate (no schema shipped): their required fields, by hand.
PrometheusRule: its groups written out as a rule file and checked by `promtool check rules`.
Any other kind is an error, so a typo in `kind:` cannot pass silently.

Usage: validate_manifests.py SPEC_DIR VERSIONS(comma-separated) OUT_JSON FILE...
Writes every object (as JSON, with its source file) to OUT_JSON; errors go to stderr, exit 1.
"""

import json
import os
import subprocess
import sys
import tempfile

import kubernetes_validate
import yaml

KEDA = {
    "ScaledObject": "scaledobjects",
    "TriggerAuthentication": "triggerauthentications",
    "ClusterTriggerAuthentication": "clustertriggerauthentications",
}


def main():
    spec, versions, out, files = sys.argv[1], sys.argv[2].split(","), sys.argv[3], sys.argv[4:]
    errors = []
    objects = []
    for f in files:
        with open(f) as fh:
            for doc in yaml.safe_load_all(fh):
                if doc:
                    objects.append((f, doc))
    work = tempfile.mkdtemp(prefix="gpuscale-manifests-")
    by_schema = {}
    check_jsonschema = os.path.join(os.path.dirname(sys.executable), "check-jsonschema")
    for i, (f, o) in enumerate(objects):
        kind, api = o.get("kind", ""), o.get("apiVersion", "")
        name = f"{f}: {kind} {o.get('metadata', {}).get('name', '?')}"
        group = api.split("/")[0] if "/" in api else ""
        if group == "keda.sh":
            if kind not in KEDA:
                errors.append(f"{name}: unknown KEDA kind")
                continue
            schema = os.path.join(spec, "keda-v2.20.2", "json", f"{KEDA[kind]}.v1alpha1.openapiv3.strict.json")
        elif group == "serving.kserve.io":
            schema = os.path.join(work, "inferenceservices.v1beta1.json")
            if not os.path.exists(schema):
                with open(os.path.join(spec, "kserve-v0.20.0", "serving.kserve.io_inferenceservices.yaml")) as fh:
                    crd = yaml.safe_load(fh)
                v = next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta1")
                with open(schema, "w") as fh:
                    json.dump(v["schema"]["openAPIV3Schema"], fh)
        elif group == "monitoring.coreos.com":
            s = o.get("spec", {})
            if kind == "PrometheusRule":
                rules = os.path.join(work, f"{i}.rules.yaml")
                with open(rules, "w") as fh:
                    yaml.safe_dump({"groups": s.get("groups", [])}, fh)
                if not s.get("groups"):
                    errors.append(f"{name}: a PrometheusRule needs spec.groups")
                r = subprocess.run(["promtool", "check", "rules", rules], capture_output=True, text=True)
                if r.returncode != 0:
                    errors.append(f"{name}: promtool check rules:\n{r.stdout}{r.stderr}")
            elif kind != "ServiceMonitor":
                errors.append(f"{name}: only ServiceMonitor and PrometheusRule are expected from monitoring.coreos.com")
            elif not s.get("selector") or not all(e.get("port") for e in s.get("endpoints", [])) or not s.get("endpoints"):
                errors.append(f"{name}: a ServiceMonitor needs spec.selector and endpoints with a port")
            continue
        elif group == "cert-manager.io":
            s = o.get("spec", {})
            if kind != "Certificate":
                errors.append(f"{name}: only Certificate is expected from cert-manager.io")
            elif not s.get("secretName") or not s.get("issuerRef", {}).get("name") or not (s.get("dnsNames") or s.get("commonName")):
                errors.append(f"{name}: a Certificate needs spec.secretName, issuerRef.name and dnsNames")
            continue
        elif "." in group and not group.endswith(".k8s.io"):
            errors.append(f"{name}: no schema for {api} {kind}")
            continue
        else:
            for v in versions:
                try:
                    kubernetes_validate.validate(o, v, strict=True)
                except kubernetes_validate.SchemaNotFoundError:
                    errors.append(f"{name}: Kubernetes {v} has no {api} {kind} (a typo in kind or apiVersion?)")
                except kubernetes_validate.ValidationError as e:
                    path = ".".join(str(p) for p in e.path)
                    errors.append(f"{name}: Kubernetes {v}: {path}: {e.message}")
            continue
        inst = os.path.join(work, f"{i}.json")
        with open(inst, "w") as fh:
            json.dump(o, fh)
        by_schema.setdefault(schema, []).append((inst, name))
    for schema, insts in by_schema.items():
        r = subprocess.run(
            [check_jsonschema, "--schemafile", schema] + [p for p, _ in insts],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            names = {p: n for p, n in insts}
            msg = r.stdout + r.stderr
            for p, n in names.items():
                msg = msg.replace(p, n)
            errors.append(f"check-jsonschema --schemafile {os.path.basename(schema)}:\n{msg}")
    with open(out, "w") as fh:
        json.dump([{"file": f, "object": o} for f, o in objects], fh)
    for e in errors:
        print(e, file=sys.stderr)
    print(f"validated {len(objects)} objects from {len(files)} files", file=sys.stderr)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
