"""``tgg convert <dataset>``: published dataset files → the project's JSONL sample format."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from tinygroundinggpt.cli import add_command

if TYPE_CHECKING:
    from tinygroundinggpt.data.converters.common import ReferEvalImages


def _common(p: argparse.ArgumentParser, *, coco_images: bool = True) -> None:
    p.add_argument("--out", required=True, help="output JSONL (samples, or a synthesis manifest)")
    p.add_argument("--image-prefix", default="", help="prepended to each image path (e.g. 'train2014/')")
    p.add_argument("--no-progress", action="store_true")
    if coco_images:
        p.add_argument(
            "--exclude-refer-eval", metavar="REFER_ROOT",
            help="leave out the images of the RefCOCO/+/g val and test splits (refs(unc).p, refs(umd).p in REFER_ROOT "
            "or its subfolders): recommended for training data, as the REC benchmarks use COCO train2014 images",
        )  # fmt: skip


def _exclude(args: argparse.Namespace) -> ReferEvalImages:
    from tinygroundinggpt.data.converters.common import NO_EXCLUSION, ReferEvalImages

    if not args.exclude_refer_eval:
        return NO_EXCLUSION
    exclude = ReferEvalImages.load(args.exclude_refer_eval)
    print(f"excluding {len(exclude.coco_ids)} images of the val/test splits of {', '.join(exclude.files)}")
    if getattr(args, "vg_image_data", None):
        exclude = exclude.with_visual_genome(args.vg_image_data)
        print(f"matching Visual Genome images through {len(exclude.vg_to_coco or {})} COCO ids of {args.vg_image_data}")
    return exclude


def add_commands(sub: argparse._SubParsersAction) -> None:
    conv = add_command(sub, "convert")
    ds = conv.add_subparsers(dest="dataset", required=True)

    p = ds.add_parser("refcoco", aliases=["refcoco+", "refcocog"], help="refer API files: refs(*).p + instances.json")
    p.add_argument("--refs", required=True, help="refs(unc).p, refs(umd).p or refs(google).p")
    p.add_argument("--instances", required=True, help="instances.json next to it")
    p.add_argument(
        "--split", default="train",
        help="the split to convert (default train; val, testA, testB, test are evaluation data, with a warning; "
        "'all': every split)",
    )  # fmt: skip
    p.add_argument("--tasks", default="rec,reg", help="rec (expression → box) and/or reg (box → expression)")
    _common(p)
    p.set_defaults(func=_refcoco)

    for kind, help_ in (("regions", "region_descriptions.json"), ("relationships", "relationships.json")):
        p = ds.add_parser(f"vg-{kind}", help=f"Visual Genome {help_} (+ image_data.json)")
        p.add_argument("input", help=help_)
        p.add_argument("--image-data", required=True, help="image_data.json (image sizes and folders)")
        _common(p)
        p.set_defaults(func=_vg, kind=kind)

    p = ds.add_parser("flickr30k", help="Flickr30K Entities Sentences/ + Annotations/")
    p.add_argument("--sentences", required=True, help="the Sentences folder")
    p.add_argument("--annotations", required=True, help="the Annotations folder")
    p.add_argument("--ids", help="an id list as published (train.txt, val.txt, test.txt); default: all")
    p.add_argument("--manifest", action="store_true", help="write a synthesis manifest for `tgg synth` instead")
    _common(p, coco_images=False)  # Flickr30K's own images: none is a COCO image
    p.set_defaults(func=_flickr)

    p = ds.add_parser("coco-manifest", help="COCO instances (+ captions) → a synthesis manifest for `tgg synth`")
    p.add_argument("instances", help="instances_*.json")
    p.add_argument("--captions", help="captions_*.json of the same images")
    _common(p)
    p.set_defaults(func=_coco)

    p = ds.add_parser(
        "llava", aliases=["llava-pretrain", "llava-mix665k", "sharegpt4v"],
        help="LLaVA-format JSON (LLaVA-Pretrain-595K, LLaVA-v1.5-mix665K, ShareGPT4V)",
    )  # fmt: skip
    p.add_argument("input", help="the JSON file")
    p.add_argument("--id-prefix", help="prepended to record ids (default: the command name and '-')")
    p.add_argument(
        "--keep-box-text", action="store_true",
        help="keep records whose text holds [x1, y1, x2, y2] boxes (their frame is unknown; skipped by default)",
    )  # fmt: skip
    p.add_argument(
        "--vg-image-data", metavar="IMAGE_DATA_JSON",
        help="Visual Genome's image_data.json: with --exclude-refer-eval, mix665K's GQA and VG images (VG ids) are "
        "matched to the evaluation images through its coco_id (without it they are counted as unchecked)",
    )  # fmt: skip
    _common(p)
    p.set_defaults(func=_llava)


def _done(report: object) -> int:
    print(report.summary())  # type: ignore[attr-defined]
    return 0


def _refcoco(args: argparse.Namespace) -> int:
    from tinygroundinggpt.data.converters.refcoco import TASKS, convert_refcoco

    tasks = tuple(args.tasks.split(","))
    if not set(tasks) <= set(TASKS):
        raise SystemExit(f"--tasks must be drawn from {TASKS}, got {args.tasks!r}")
    return _done(convert_refcoco(
        args.refs, args.instances, args.out, dataset=args.dataset, split=None if args.split == "all" else args.split,
        tasks=tasks, image_prefix=args.image_prefix, exclude=_exclude(args), progress=not args.no_progress,
    ))  # fmt: skip


def _vg(args: argparse.Namespace) -> int:
    from tinygroundinggpt.data.converters.visual_genome import convert_vg

    return _done(convert_vg(
        args.kind, args.input, args.image_data, args.out, image_prefix=args.image_prefix, exclude=_exclude(args),
        progress=not args.no_progress,
    ))  # fmt: skip


def _flickr(args: argparse.Namespace) -> int:
    from tinygroundinggpt.data.converters.flickr30k import convert_flickr30k

    return _done(convert_flickr30k(
        args.sentences, args.annotations, args.out, manifest=args.manifest, ids_file=args.ids,
        image_prefix=args.image_prefix, progress=not args.no_progress,
    ))  # fmt: skip


def _coco(args: argparse.Namespace) -> int:
    from tinygroundinggpt.data.converters.coco import convert_coco_manifest

    return _done(convert_coco_manifest(
        args.instances, args.out, captions_path=args.captions, image_prefix=args.image_prefix,
        exclude=_exclude(args), progress=not args.no_progress,
    ))  # fmt: skip


def _llava(args: argparse.Namespace) -> int:
    from tinygroundinggpt.data.converters.llava import convert_llava

    prefix = args.id_prefix if args.id_prefix is not None else f"{args.dataset}-"
    return _done(convert_llava(
        args.input, args.out, prefix=prefix, image_prefix=args.image_prefix, exclude=_exclude(args),
        progress=not args.no_progress, keep_box_text=args.keep_box_text,
    ))  # fmt: skip
