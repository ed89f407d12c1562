"""``isodose phantom``: a 20-ROI head-and-neck phantom as DICOM, to try the other commands on."""

from __future__ import annotations

import argparse


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser("phantom", help="write a head-and-neck-sized phantom case as DICOM")
    parser.add_argument("--out", default="out/phantom", help="folder for RD, RS and RP (default out/phantom)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..dicom.write import write_dose, write_plan, write_structures
    from ..outputs import output_folder
    from ..phantoms import head_neck_case

    out = output_folder(args.out, "--out")
    grid, structures = head_neck_case()
    rd = write_dose(grid, out / "RD.phantom.dcm")
    rs = write_structures(structures, out / "RS.phantom.dcm")
    rp = write_plan(
        out / "RP.phantom.dcm",
        prescription_gy=70.0,
        number_of_fractions=35,
        frame_of_reference_uid=grid.frame_of_reference_uid,
        target_name="PTV70",
    )
    print(f"head-and-neck phantom (dose grid 200 x 200 x 120 at 2.5 mm, 20 ROIs): {rd}, {rs}, {rp}")
    print(f"try: isodose dvh --dose {rd} --structures {rs} --plan {rp} --metric D95 --metric V95%")
    return 0
