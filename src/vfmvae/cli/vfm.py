"""`vfmvae vfm list`: the registered frozen vision foundation models."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "vfm",
        help="frozen vision foundation models (list the registry)",
        description="Frozen vision foundation models used as the tokenizer encoder, the alignment "
        "target and in SE-CKNNA analysis.",
    )
    vsub = p.add_subparsers(dest="vfm_command", metavar="SUBCOMMAND", required=True)
    ls = vsub.add_parser(
        "list",
        help="names, hub ids, patch size, width and layer count",
        description="List the registered VFMs. Build one with `build_vfm(VFMSpec(name, "
        "path=LOCAL_FOLDER))`, or name it in a tokenizer recipe as model.vfm.name; weights come from "
        "the hub id when online or from a local folder (model.vfm.path).",
    )
    ls.add_argument("--all", action="store_true", help="include the tiny random `*-test` variants used by the tests")
    ls.set_defaults(func=run_list)


def run_list(args: argparse.Namespace) -> int:
    from vfmvae.cli.common import print_table
    from vfmvae.vfm import list_vfms

    rows = [("name", "family", "hub id", "patch", "width", "layers", "scale@256px", "note")]
    for e in list_vfms(include_test=args.all):
        rows.append(
            (
                e.name,
                e.family,
                e.hub_id or "-",
                str(e.patch_size),
                str(e.width),
                str(e.num_layers),
                f"{e.scale_factor:g}",
                e.note,
            )
        )
    print_table(rows)
    return 0
