"""`cart-fhir bulk-export`: its arguments and dispatch (the work is in adapter/remote/bulk.py)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    bulk = sub.add_parser("bulk-export", help="FHIR Bulk Data export from a server, downloaded and graded",
                          description="Kick off a Bulk Data $export (Patient or Group level), poll it honouring "
                                      "Retry-After, download the NDJSON (resuming interrupted files) and grade it. "
                                      "Auth and other server settings come from CART_FHIR_* variables.")
    bulk.add_argument("--server", dest="base_url", required=True, metavar="URL", help="FHIR base URL")
    bulk.add_argument("-o", "--output", required=True, metavar="DIR", help="folder for the NDJSON and graded/")
    bulk.add_argument("--group", metavar="ID", help="export this Group's patients (default: all patients)")
    bulk.add_argument("--since", metavar="INSTANT", help="only resources changed since (_since)")
    bulk.add_argument("--type", metavar="TYPES", help="comma-separated resource types (_type)")
    bulk.add_argument("--restart", action="store_true",
                      help="start a new export even if DIR holds an unfinished one (which is cancelled); "
                           "without it, a second run into DIR resumes the saved export")


def run(args: argparse.Namespace) -> int:
    from .remote.bulk import bulk_export_command

    return bulk_export_command(args.base_url, args.output, args.group, args.since, args.type, args.restart)
