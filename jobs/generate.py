"""Ray job entrypoint: make and publish one dataset version.

    ray job submit --working-dir . -- python jobs/generate.py specs/demo-pv-el.yaml --out s3://bucket/datasets
    factory submit specs/demo-pv-el.yaml --address http://HEAD:8265     (ships the spec in FACTORY_SPEC_YAML)

Inside a job `ray.init()` joins the job's cluster (RAY_ADDRESS is set by Ray).
Progress goes to stdout as plain lines (job logs are not a terminal); the last line
is the manifest summary as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from factory.spec import SpecError, load_spec, parse_spec


def main(argv: list[str] | None = None) -> int:
    from factory.pipeline import RunError, RunOptions, run_dataset
    from factory.storage import StorageError
    from factory.retrain.trigger import publish_hook  # spec `retrain: {on: publish}` -> one Ray job

    ap = argparse.ArgumentParser(prog="jobs/generate.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("spec", nargs="?", help="spec file (or use --spec-env)")
    ap.add_argument("--spec-env", help="read the spec's YAML from this environment variable")
    ap.add_argument("--out", help="registry root URI")
    ap.add_argument("--version", type=int)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--restart", action="store_true", help="discard this version's staging first")
    ap.add_argument("--actors", type=int)
    a = ap.parse_args(argv)
    try:
        if a.spec_env:
            spec = parse_spec(os.environ.get(a.spec_env, ""), f"${a.spec_env}")
        elif a.spec:
            spec = load_spec(a.spec)
        else:
            ap.error("give a spec file or --spec-env VAR")
    except SpecError as e:
        print(e, file=sys.stderr)
        return 2
    last = [0.0]

    def show(p) -> None:
        if time.time() - last[0] > 2 or p.phase == "publishing" or p.accepted >= p.count:
            last[0] = time.time()
            print(f"[{spec.name}] round {p.round}: {min(p.accepted, p.count)}/{p.count} accepted, {p.rejected} rejected ({p.phase})",
                  flush=True)

    try:
        r = run_dataset(spec, RunOptions(out=a.out, version=a.version, resume=a.resume, restart=a.restart,
                                           actors=a.actors, on_publish=publish_hook), show)
    except (StorageError, RunError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    m = r.manifest
    print(f"published {spec.name}@{r.version} at {r.uri}; report {r.report_uri}", flush=True)
    print(json.dumps({"uri": r.uri, "version": r.version, "counts": m["counts"], "reject_reasons": m["reject_reasons"],
                      "seconds": round(r.seconds, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
