"""Review a classify report on a local web page: the cells grouped by class
with the differential count beside it, flagged cells first with their reason,
one key per class to reclassify, Enter to approve, u or Backspace to undo, a
class activation map per cell (toggle), and sign-off, which is refused while
flagged cells are unreviewed.

Every decision is saved at once in OUT/REPORT.review-state.json, so a crash
or a closed tab loses nothing: run the same command again to continue. Export
(or sign-off) writes OUT/corrections.csv (path,sha256,predicted,confidence,
corrected,reviewer,reviewed_at,model_sha256: one row per reviewed cell, for
'wbc-edge adapt --labeled') and OUT/REPORT.reviewed.json (the report with the
decisions, the reviewer and the reviewed differential). Existing files of
those names that this review did not write are never overwritten.

The page listens on 127.0.0.1 (this machine only) and its URL holds a random
token made for this run; it serves only the images the report lists.

examples:
  wbc-edge classify cells/ --out run1.json && wbc-edge review run1.json
  wbc-edge review run1.json --reviewer "A. Smith" --out review/
  wbc-edge review run1.json --no-browser --port 0     print the URL, any free port

Needs the review extra: pip install "wbc-edge[review]".
"""

from __future__ import annotations

import argparse
import sys

INSTALL = 'pip install "wbc-edge[review]"'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("report", metavar="REPORT.json", help="a report written by 'wbc-edge classify --out'")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on; anything but a loopback address lets other machines reach "
                             "the page (a warning says so)")
    parser.add_argument("--port", type=int, default=8765, help="port to listen on; 0: any free port")
    parser.add_argument("--no-browser", action="store_true", help="print the URL but do not open a browser")
    parser.add_argument("--reviewer", metavar="NAME",
                        help="who reviews, recorded with each decision (default: your login name, or the "
                             "reviewer of the saved review being continued)")
    parser.add_argument("--out", metavar="DIR",
                        help="folder for REPORT.review-state.json, REPORT.reviewed.json and corrections.csv "
                             "(default: the report's folder)")


def run(args: argparse.Namespace) -> int:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        print(f"wbc-edge review: the review page needs Starlette and uvicorn ({error}). "
              f"Install them with: {INSTALL}", file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535:
        print(f"wbc-edge review: error: --port must be 0..65535, got {args.port}", file=sys.stderr)
        return 2

    from ..review_page.app import ReviewServer, is_loopback
    from ..review_page.state import ReviewSession

    session = ReviewSession(args.report, args.out, args.reviewer)
    try:
        server = ReviewServer(session, args.host, args.port)
    except OSError as error:
        hint = " (in use? pass --port 0 for any free port)" if args.port else ""
        print(f"wbc-edge review: error: cannot listen on {args.host}:{args.port}: {error.strerror or error}{hint}",
              file=sys.stderr)
        return 2

    p = session.progress()
    print(f"reviewing {session.report_path} as {session.reviewer}: {p['cells']} cells, {p['flagged']} flagged"
          + (f"; continuing the saved review ({p['reviewed']} reviewed)" if session.resumed else ""))
    if session.missing:
        print(f"warning: {len(session.missing)} image(s) listed in the report are not here "
              "(paths are resolved from the current folder, then the report's)", file=sys.stderr)
    print(f"saving to {session.state_path}; Export writes {session.corrections_path} and {session.reviewed_path}")
    if not is_loopback(args.host):
        print(f"warning: listening on {args.host}, not only this machine: anyone who can reach port {server.port} "
              "and has the URL can see these cells and change the review", file=sys.stderr)
    print(f"open {server.url}", flush=True)
    print("press Ctrl-C to stop (decisions are already saved)", flush=True)
    if not args.no_browser:
        import threading
        import webbrowser

        threading.Timer(0.5, webbrowser.open, args=(server.url,)).start()
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn shuts down gracefully, then passes Ctrl-C on
        pass
    p = session.progress()
    print(f"stopped: {p['flagged_reviewed']} of {p['flagged']} flagged reviewed, saved in {session.state_path}")
    return 0
