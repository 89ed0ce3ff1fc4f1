"""Renders the Helm chart with Helm's own engine, for tests/helm.rs.

helm-python-sdk binds Helm's Go SDK (a shared library in its wheel), so this
is Helm's template engine, values coalescing, values.schema.json validation
and --set / --set-json parsing, without a helm binary. `cargo xtask setup`
installs it.

Usage: helm_render.py CHART < CASES
CASES is a JSON list of {"namespace": NS, "set": [EXPR...], "set_json":
[EXPR...]}, one render each (like `helm template lb-agent CHART --namespace
NS --set-json ... --set ...`). Prints a JSON list, per case either
{"rendered": {template path: text}} or {"error": message}. Exit 3: the
renderer is missing.
"""

import json
import sys

try:
    import helm_python as helm
except ImportError as error:
    print(f"helm-python-sdk is missing ({error}): run `cargo xtask setup`", file=sys.stderr)
    sys.exit(3)


def merge(base, extra):
    """Merges `extra` into `base` as Helm merges successive --set flags."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value


def render(chart, case):
    """One case: its values as the helm CLI builds them, then the render."""
    values = {}
    try:
        # As the helm CLI: every --set-json, then every --set.
        for expr in case.get("set_json", []):
            merge(values, helm.parse_set_json(expr))
        for expr in case.get("set", []):
            merge(values, helm.parse_set_string(expr))
        rendered = chart.render(values, name="lb-agent", namespace=case["namespace"], is_install=True)
    except helm.HelmError as error:
        return {"error": str(error)}
    return {"rendered": rendered}


def main(chart_dir):
    cases = json.load(sys.stdin)
    with helm.Chart.load(chart_dir) as chart:
        json.dump([render(chart, case) for case in cases], sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
