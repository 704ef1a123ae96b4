"""Validates FHIR resources with fhir.resources (R4B models), independently of the Rust
models that produced them and of the FHIR engine that stored them.

Input: one JSON resource per line on stdin. Output: one JSON object on stdout,
{"checked": N, "invalid": ["<type>/<id>: <first errors>", ...]}.
"""

import json
import sys

from fhir.resources.R4B import get_fhir_model_class


def main() -> None:
    checked = 0
    invalid = []
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        checked += 1
        resource = json.loads(line)
        name = f"{resource.get('resourceType')}/{resource.get('id')}"
        try:
            model = get_fhir_model_class(resource["resourceType"])
            model.model_validate(resource)
        except Exception as error:  # every failure is a finding, whatever its class
            invalid.append(f"{name}: {str(error)[:500]}")
    json.dump({"checked": checked, "invalid": invalid}, sys.stdout)


if __name__ == "__main__":
    main()
