"""``udiff data DIR``: the report of a label-folder dataset, before any training (reads only)."""

from __future__ import annotations

from pathlib import Path

from ..errors import UdiffError

NAME = "data"
HELP = "report what a folder of label folders holds: counts, sizes, duplicates, cropping"


def add_arguments(p) -> None:
    p.add_argument("dir", metavar="DIR", help="a folder with one sub-folder of images per label")
    p.add_argument("--out", metavar="DIR", help="write data.json and data.png (a contact sheet, a "
                   "row per label) here; never inside DIR")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of text")


def main(args) -> int:
    import json

    from ..data_report import contact_sheet, scan
    from ..run.files import atomic_write, write_json

    root = Path(args.dir)
    out = Path(args.out) if args.out else None
    if out is not None and root.exists() and out.resolve().is_relative_to(root.resolve()):
        raise UdiffError(f"--out {out} is inside {root}: udiff data never writes into the data")
    if out is not None and out.exists() and not out.is_dir():
        raise UdiffError(f"--out {out} exists and is not a directory")
    report = scan(root)  # every user error is raised here, before anything is written
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "data.png", lambda p: contact_sheet(report).save(p, format="PNG"))
        write_json(out / "data.json", report)
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    for name, v in report["labels"].items():
        size = (f"{v['width']['median']:g}x{v['height']['median']:g} median, aspect "
                f"{v['aspect']['min']:g}-{v['aspect']['max']:g}, {'/'.join(v['modes'])}"
                if v["images"] else "no images")
        print(f"  {name}: {v['images']} images ({size})")
    for key, what in (("unreadable", "unreadable"), ("duplicates", "exact duplicates"),
                      ("near_duplicates", "near-duplicate pairs"), ("cropped", "cropped by > 25%"),
                      ("few_images", "labels under 100 images")):
        for item in report[key][:10]:
            print(f"  {what}: {describe(item)}")
        if len(report[key]) > 10:
            print(f"  {what}: ... {len(report[key]) - 10} more (--json lists all)")
    print(report["summary"])
    if out is not None:
        print(f"report: {out / 'data.json'}  contact sheet: {out / 'data.png'}")
    return 0


def describe(item) -> str:
    if isinstance(item, list):
        return " = ".join(item)
    if "bits" in item:
        return f"{item['a']} ~ {item['b']} ({item['bits']} bits" + (
            ", across labels)" if item["across_labels"] else ")")
    if "cut" in item:
        return f"{item['file']} ({item['size'][0]}x{item['size'][1]}: {item['cut']:.0%} cut)"
    if "label" in item:
        return f"{item['label']} ({item['images']})"
    return f"{item['file']}: {item['error']}"
