"""``meshctl canary SERVICE --from v1 --to v3``: promote a canary step by step while its
golden metrics hold, roll it back when they do not (as Flagger or Argo Rollouts do).

Each --interval, the canary's success rate, p99 and request count over that interval are read
from the control plane (as `meshctl stat`). With at least --min-requests and every threshold
met, its weight rises by --step (applied as `meshctl shift` does, waiting for every sidecar's
ACK); at --max-weight it is promoted (100% to --to). A missed threshold counts a failure;
--failures in a row roll back to 100% --from and exit 1. Too few requests hold: no step, no
failure. Ctrl-C leaves the weights where they are (run the same command to resume).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from meshctl.api.canary import DONE
from meshctl.api.durations import format_duration, parse_duration
from meshctl.canary.analysis import Thresholds, percent
from meshctl.canary.measure import analysis_window
from meshctl.canary.meshtarget import MeshTarget
from meshctl.canary.stepper import CanaryError, CanaryPlan, CanaryRun, Result
from meshctl.client import ControlPlaneClient
from meshctl.commands.calls import make_client, reports_errors, request_json
from meshctl.commands.shift import ShiftRefused, about_service


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register ``canary``."""
    p = subparsers.add_parser(
        "canary", help="promote a canary step by step while its metrics hold, else roll back",
        description=__doc__.replace("``", "`"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("service", metavar="SERVICE")
    p.add_argument("--from", dest="source", required=True, metavar="SUBSET",
                   help="the stable subset (gets the rest of the traffic)")
    p.add_argument("--to", dest="target", required=True, metavar="SUBSET",
                   help="the canary subset")
    p.add_argument("-n", "--namespace", default="default")
    p.add_argument("--rule", metavar="NAME", help="step this named rule of the route instead "
                   "of its last (default) rule, as `meshctl shift --rule`")
    p.add_argument("--step", type=int, default=10, help="weight added per step (10)")
    p.add_argument("--interval", type=_duration, default=30.0, metavar="DURATION",
                   help="time between analyses, and their metrics window (30s)")
    p.add_argument("--max-weight", type=int, default=100,
                   help="canary weight at which it is promoted (100)")
    p.add_argument("--min-success-rate", type=float, default=99.0, metavar="PERCENT",
                   help="lowest success rate that passes (99)")
    p.add_argument("--max-p99", type=_duration, default=0.5, metavar="DURATION",
                   help="highest p99 latency that passes (500ms; 0 to not judge latency)")
    p.add_argument("--min-requests", type=int, default=20,
                   help="fewer canary requests in an interval hold the step (20)")
    p.add_argument("--failures", type=int, default=2,
                   help="failed analyses in a row that roll back (2)")
    p.add_argument("--max-holds", type=int, default=0, metavar="N",
                   help="analyses in a row with fewer than --min-requests that roll back, as "
                        "Flagger's progress deadline (0, the default: hold as long as it takes)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="how long each step waits for every sidecar to ACK (30)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.set_defaults(func=run_canary)


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def plan_from(args: argparse.Namespace) -> CanaryPlan:
    """The plan the arguments describe; ValueError says what is wrong."""
    if not 0 <= args.min_success_rate <= 100:
        raise ValueError(f"--min-success-rate must be a percentage, not {args.min_success_rate}")
    if args.min_requests < 1:
        raise ValueError(f"--min-requests must be at least 1, not {args.min_requests}")
    if args.interval <= 0:
        raise ValueError("--interval must be longer than 0s")
    thresholds = Thresholds(args.min_success_rate / 100, args.max_p99 * 1000 or None,
                            args.min_requests)
    return CanaryPlan(args.service, args.source, args.target, args.step, args.interval,
                      args.max_weight, args.failures, thresholds, args.max_holds)


def describe(plan: CanaryPlan, target: MeshTarget, window: float, current: int) -> list[str]:
    """The plan in words (``--dry-run``, and the head of a run)."""
    t = plan.thresholds
    latency = f", p99 <= {t.max_p99_ms:.0f}ms" if t.max_p99_ms is not None else ""
    widened = (f" (metrics over the last {format_duration(window)}: two scrapes of the "
               "control plane)" if window > plan.interval else "")
    rule = f", rule '{target.rule}'" if target.rule else ""
    return [f"canary {plan.service} (namespace {target.namespace}{rule}): {plan.source} -> "
            f"{plan.target}, measured as version {target.version}; now {target.split_text()}",
            f"  weights {', '.join(map(str, plan.weights(current)))}, then promote "
            f"({plan.target} 100%)",
            f"  every {format_duration(plan.interval)}{widened}: at least {t.min_requests} "
            f"requests, success rate >= {percent(t.min_success_rate)}{latency}",
            f"  roll back to {plan.source} 100% after {plan.failures} failed "
            f"analys{'es' if plan.failures > 1 else 'is'} in a row"
            + (f", or {plan.max_holds} with too little traffic" if plan.max_holds else "")]


def declared_canaries(client: ControlPlaneClient, service: str, namespace: str) -> list[str]:
    """The Canaries the control plane is running on ``service`` now, as ``Canary ns/name
    (phase)`` (none from a control plane older than the kind)."""
    status, body = request_json(client, "GET", f"/api/v1/namespaces/{namespace}/canaries")
    if status != 200 or not isinstance(body, dict):
        return []
    about = about_service(service, namespace)
    out = []
    for item in body.get("items") or []:
        phase = (item.get("status") or {}).get("phase", "Initializing")
        if phase not in DONE and about({"spec": {"host": item["spec"]["service"]}}):
            out.append(f"Canary {namespace}/{item['metadata']['name']} ({phase})")
    return out


@reports_errors
def run_canary(args: argparse.Namespace) -> int:
    try:
        plan = plan_from(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    client = make_client(args)
    declared = declared_canaries(client, plan.service, args.namespace)
    if declared:
        print(f"error: the control plane runs {', '.join(declared)} on {plan.service}: its "
              "first step would stop it (a hand edit of the route, to it); delete it or let it "
              "finish; nothing changed", file=sys.stderr)
        return 1
    try:
        target = MeshTarget(client, plan, args.namespace, timeout=args.timeout, rule=args.rule)
        current = target.current_weight()
        target.check(plan.start_weight(current))
        window = analysis_window(plan.interval, float(target.stat(plan.interval)
                                                      .get("scrapeInterval", 0.0)))
    except (ShiftRefused, CanaryError) as exc:
        print(f"error: {exc}; nothing changed", file=sys.stderr)
        return 1
    for line in describe(plan, target, window, current):
        print(line, flush=True)
    if args.dry_run:
        print("dry run: nothing changed")
        return 0
    run = CanaryRun(plan, target, window=window, out=lambda line: print(line, flush=True))
    try:
        outcome = run.run(current)
    except CanaryError as exc:
        print(f"error: {exc}; the weights are left as they are", file=sys.stderr)
        return 1
    if outcome.result is Result.PROMOTED:
        print(f"{plan.target} promoted", flush=True)
        return 0
    if outcome.result is Result.ROLLED_BACK:
        print(f"{plan.target} rolled back: {outcome.reason}", file=sys.stderr)
        return 1
    print(f"interrupted: the weights are left as they are ({target.split_text()}); run the "
          "same command to resume from there", file=sys.stderr)
    return 130
