#!/usr/bin/env python3
"""Validates every MPIJob (kubeflow.org/v2beta1) in the given YAML files against the
schema in tests/reference/fixtures/k8s/mpijob-v2beta1.schema.json (made by
make_mpijob_schema.py from the MPI Operator's CRD). Prints one line per MPIJob; exit 1
when one does not validate or a file holds none.

usage: tests/reference/validate_mpijob.py FILE.yaml...
"""
import json
import os
import sys

import jsonschema
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    schema = json.load(open(os.path.join(HERE, "fixtures/k8s/mpijob-v2beta1.schema.json")))
    validator = jsonschema.Draft7Validator(schema)
    bad = seen = 0
    for path in sys.argv[1:]:
        for doc in yaml.safe_load_all(open(path)):
            if not doc or doc.get("kind") != "MPIJob":
                continue
            seen += 1
            errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
            name = doc.get("metadata", {}).get("name", "?")
            if errors:
                bad += 1
                for e in errors[:5]:
                    where = "/".join(str(p) for p in e.path) or "(top)"
                    print("%s: MPIJob %s: %s: %s" % (path, name, where, e.message[:200]))
            else:
                print("%s: MPIJob %s validates against kubeflow.org/v2beta1" % (path, name))
    if not seen:
        print("no MPIJob in %s" % " ".join(sys.argv[1:]))
    sys.exit(1 if bad or not seen else 0)


if __name__ == "__main__":
    main()
