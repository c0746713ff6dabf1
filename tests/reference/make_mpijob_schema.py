#!/usr/bin/env python3
"""The MPIJob (kubeflow.org/v2beta1) schema deploy/k8s's training job is checked against.

Reads the MPI Operator's CustomResourceDefinition (manifests/base/kubeflow.org_mpijobs.yaml
of the mpi-operator repository; the committed fixture came from its v0.8.2) and writes the
v2beta1 version's openAPIV3Schema as a JSON Schema, descriptions removed, with
additionalProperties false on every object that lists its properties (the API server
prunes unknown fields; here they are errors, so that a typo does not pass):

usage: tests/reference/make_mpijob_schema.py CRD.yaml OUT.json
"""
import json
import sys

import yaml


def clean(node):
    if isinstance(node, dict):
        out = {k: clean(v) for k, v in node.items() if k != "description"}
        if out.get("type") == "object" and "properties" in out and \
                "additionalProperties" not in out and \
                not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [clean(v) for v in node]
    return node


def main():
    crd = yaml.safe_load(open(sys.argv[1]))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v2beta1")
    schema = clean(version["schema"]["openAPIV3Schema"])
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    json.dump(schema, open(sys.argv[2], "w"), indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
