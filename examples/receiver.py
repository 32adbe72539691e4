#!/usr/bin/env python3
"""Example receiver for goldsmith rollout webhooks.

It does what a provisioner's endpoint should do:
  1. verify the Standard Webhooks signature (webhook-id, webhook-timestamp,
     webhook-signature) with the spec's library, rejecting stale timestamps;
  2. check the CloudEvents 1.0 envelope (and, with --schema, the event against
     schemas/rollout-event.v1.json);
  3. process each event id once: a repeat of an id already accepted is answered
     200 and ignored (goldsmith retries until it sees a 2xx).

Usage:
  WEBHOOK_SECRET=whsec_... python3 examples/receiver.py --port 8080 --log events.jsonl

Prints "listening on http://HOST:PORT" once ready. Every request becomes one JSON line
in --log. Flags for tests: --fail-first N answers the first N requests with
--fail-status (default 500), optionally with a Retry-After header.
"""

import argparse
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

EVENT_TYPE = "dev.goldsmith.rollout.v1"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    ap.add_argument("--secret-env", default="WEBHOOK_SECRET",
                    help="environment variable holding the whsec_ secret")
    ap.add_argument("--log", help="append one JSON line per request here")
    ap.add_argument("--schema", help="validate each event against this JSON Schema")
    ap.add_argument("--fail-first", type=int, default=0,
                    help="answer the first N requests with --fail-status")
    ap.add_argument("--fail-status", type=int, default=500)
    ap.add_argument("--retry-after", help="Retry-After header sent with the failures")
    args = ap.parse_args()

    secret = os.environ.get(args.secret_env, "")
    if not secret:
        print(f"receiver: ${args.secret_env} is not set", file=sys.stderr)
        return 2
    webhook = Webhook(secret)
    validator = None
    if args.schema:
        import jsonschema
        with open(args.schema) as f:
            schema = json.load(f)
        validator = jsonschema.Draft202012Validator(
            schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)

    lock = threading.Lock()
    state = {"requests": 0, "accepted": set()}

    def log(entry: dict) -> None:
        if args.log:
            with lock, open(args.log, "a") as f:
                f.write(json.dumps(entry) + "\n")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            entry = {
                "webhook_id": headers.get("webhook-id"),
                "idempotency_key": headers.get("idempotency-key"),
                "timestamp": headers.get("webhook-timestamp"),
                "content_type": headers.get("content-type"),
            }
            with lock:
                state["requests"] += 1
                n = state["requests"]
            if n <= args.fail_first:
                extra = {"Retry-After": args.retry_after} if args.retry_after else {}
                return self.answer(args.fail_status, "simulated failure", entry, extra)
            try:
                envelope = webhook.verify(body, headers)
            except WebhookVerificationError as e:
                entry["verified"] = False
                return self.answer(401, f"signature rejected: {e}", entry)
            entry["verified"] = True
            problem = check_envelope(envelope, headers, validator)
            if problem:
                return self.answer(400, problem, entry)
            event = envelope["data"]
            entry.update(group=envelope["subject"], event=event)
            with lock:
                duplicate = envelope["id"] in state["accepted"]
                state["accepted"].add(envelope["id"])
            entry["duplicate"] = duplicate
            # A real provisioner starts the rebuild of event["group"] in the waves of
            # event["waves"] from event["artifacts"] here (and only if not duplicate).
            self.answer(200, "duplicate, ignored" if duplicate else "accepted", entry)

        def answer(self, status: int, text: str, entry: dict, headers=None) -> None:
            entry.update(status=status, answer=text)
            log(entry)
            payload = (text + "\n").encode()
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, fmt: str, *a) -> None:  # keep stdout for the banner
            sys.stderr.write("receiver: " + (fmt % a) + "\n")

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"listening on http://{args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


def check_envelope(env, headers, validator) -> str:
    """Why the CloudEvent is not a goldsmith rollout event, or "" when it is."""
    if not headers.get("content-type", "").startswith("application/cloudevents+json"):
        return "expected Content-Type application/cloudevents+json"
    for key in ("specversion", "id", "source", "type", "subject", "time", "data"):
        if key not in env:
            return f"CloudEvent lacks '{key}'"
    if env["specversion"] != "1.0" or env["type"] != EVENT_TYPE:
        return f"not a {EVENT_TYPE} CloudEvent 1.0"
    if env["id"] != headers.get("webhook-id") or env["id"] != headers.get("idempotency-key"):
        return "event id, webhook-id and Idempotency-Key differ"
    if env["subject"] != env["data"].get("group") or env["id"] != env["data"].get("id"):
        return "envelope and event disagree"
    if validator is not None:
        errors = sorted(validator.iter_errors(env["data"]), key=str)
        if errors:
            return "event does not match the schema: " + errors[0].message
    return ""


if __name__ == "__main__":
    sys.exit(main())
