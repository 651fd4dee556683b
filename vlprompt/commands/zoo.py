"""`vlprompt zoo list | info | download | verify | push | export | add`: the registry of published prompts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from vlprompt.commands import COMMANDS, counted_int
from vlprompt.errors import VLPromptError


def _classes_arg(value: str | None) -> list[str] | None:
    """``a,b,c`` or a text file with one class name per line."""
    if value is None:
        return None
    path = Path(value)
    if path.is_file():
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    else:
        names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise VLPromptError(f"--classes {value!r} names no classes")
    return names


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _list(args: argparse.Namespace) -> None:
    from vlprompt.zoo.registry import load_registry, local_copy

    entries = load_registry()
    if args.json:
        print(json.dumps([{**e.to_dict(), "local": str(local_copy(e) or "")} for e in entries.values()], indent=2))
        return
    if not entries:
        print("the zoo is empty (add entries with `vlprompt zoo add`, or name extra registry files in $VLPROMPT_ZOO)")
        return
    rows = [("name", "method", "backbone", "dataset", "size", "local")]
    for entry in entries.values():
        meta = entry.meta
        backbone = meta.get("backbone") or {}
        rows.append(
            (
                entry.name,
                str(meta.get("method", "?")),
                f"{backbone.get('name', '?')}/{backbone.get('pretrained') or 'random'}",
                str((meta.get("training") or {}).get("dataset", "")),
                _size(entry.size),
                "yes" if local_copy(entry) else "no",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _info(args: argparse.Namespace) -> None:
    from vlprompt.zoo.registry import get_entry, local_copy

    entry = get_entry(args.name)
    local = local_copy(entry)
    payload = {**entry.to_dict(), "registry": str(entry.registry), "cache_path": str(entry.cache_path), "local": str(local or "")}
    print(json.dumps(payload, indent=2))


def _download(args: argparse.Namespace) -> None:
    from vlprompt.zoo.registry import fetch, load_registry

    names = list(load_registry()) if args.all else args.names
    if not names:
        raise VLPromptError("name at least one zoo entry, or pass --all")
    for name in names:
        path = fetch(name, retries=args.retries, timeout=args.timeout)
        print(f"{name}: {path}")


def _verify(args: argparse.Namespace) -> None:
    from vlprompt.zoo.registry import get_entry, load_registry, verify_entry

    registry = load_registry()
    names = args.names or list(registry)
    bad = []
    for name in names:
        status, path = verify_entry(get_entry(name, registry))
        print(f"{name}: {status}{f' ({path})' if path else ' (not downloaded)'}")
        if status == "mismatch" or (status == "missing" and args.names):
            bad.append(f"{name} ({status})")
    if bad:
        raise VLPromptError(f"verification failed: {', '.join(bad)}")


def _push(args: argparse.Namespace) -> None:
    from vlprompt.zoo.hub import push_prompt

    entry = push_prompt(args.prompt, args.repo, revision=args.revision, private=args.private or None, token=args.token)
    print(json.dumps(entry, indent=2))
    print(f"pushed to https://huggingface.co/{args.repo}; the entry above can go in a zoo registry file", flush=True)


def _export(args: argparse.Namespace) -> None:
    from vlprompt.zoo.checkpoint import export_classifier

    classifier = export_classifier(
        args.prompt, args.out, classnames=_classes_arg(args.classes), device=args.device, check_classnames=args.check_classnames
    )
    out = Path(args.out)
    print(
        f"wrote {out}: classifier {list(classifier.shape)} [embed_dim, classes] "
        f"(+ {out.with_suffix('.json')}, class order in {out.with_suffix('.classnames.txt')})"
    )


def _add(args: argparse.Namespace) -> None:
    from vlprompt.zoo.bundle import BUNDLED_DIR, REGISTRY_FILE, add_bundled_entry

    entry = add_bundled_entry(
        args.checkpoint,
        args.name,
        description=args.description,
        registry_path=args.registry or REGISTRY_FILE,
        bundled_dir=args.bundled_dir or (Path(args.registry).parent / "bundled" if args.registry else BUNDLED_DIR),
        extra_sources=args.source,
        overwrite=args.force,
    )
    print(f"added {entry.name} ({_size(entry.size)}, sha256 {entry.sha256[:16]}...) to {entry.registry}")


@COMMANDS.register("zoo")
def _zoo_command(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("zoo", help="published prompts: list | info | download | verify | push | export | add")
    actions = parser.add_subparsers(dest="zoo_command", required=True)

    p = actions.add_parser("list", help="registered prompts and whether a local copy exists")
    p.add_argument("--json", action="store_true", help="print the entries as JSON")
    p.set_defaults(run=_list)

    p = actions.add_parser("info", help="one entry: sources, sha256, size, method, backbone, metrics")
    p.add_argument("name", help="zoo entry name (see `vlprompt zoo list`)")
    p.set_defaults(run=_info)

    p = actions.add_parser("download", help="fetch entries into the cache (sha256-verified)")
    p.add_argument("names", nargs="*", help="zoo entry names")
    p.add_argument("--all", action="store_true", help="every entry")
    p.add_argument("--retries", type=counted_int(0), default=3,
                   help="retries per URL source after a failed or broken transfer (resumed)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds without data before a retry")
    p.set_defaults(run=_download)

    p = actions.add_parser("verify", help="re-hash local copies (default: every entry)")
    p.add_argument("names", nargs="*", help="zoo entry names (default: every entry)")
    p.set_defaults(run=_verify)

    p = actions.add_parser("push", help="upload a prompt to a Hugging Face Hub repo")
    p.add_argument("prompt", help="checkpoint path or zoo name")
    p.add_argument("--repo", required=True, help="hub repo id, e.g. me/coop-eurosat-16shot")
    p.add_argument("--revision", default=None, help="branch to push to")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--token", default=None, help="default: $HF_TOKEN or the saved login")
    p.set_defaults(run=_push)

    p = actions.add_parser("export", help="class text features [D, C] as a .pt classifier (CLIP_benchmark --load_clfs)")
    p.add_argument("prompt", help="checkpoint path or zoo name")
    p.add_argument("--out", required=True, help="output .pt file")
    p.add_argument("--classes", default=None, help="'a,b,c' or a file with one class name per line")
    p.add_argument("--device", default="cpu", help="device that encodes the class texts: cpu, cuda, cuda:1 or auto")
    p.add_argument(
        "--check-classnames", default=None, metavar="FILE",
        help="a classnames.txt (e.g. a CLIP_benchmark dataset's) the class order must match",
    )
    p.set_defaults(run=_export)

    p = actions.add_parser("add", help="bundle a trained prompt in the package and list it in the registry (maintainers)")
    p.add_argument("checkpoint", help="a saved prompt (.safetensors/.json)")
    p.add_argument("--name", required=True, help="entry name: letters, digits, '.', '_', '+' or '-'")
    p.add_argument("--description", default="", help="one line shown by `vlprompt zoo info`")
    p.add_argument("--registry", default=None, help="registry file (default: the shipped vlprompt/zoo/registry.json)")
    p.add_argument("--bundled-dir", default=None, help="where the file goes (default: bundled/ beside the registry)")
    p.add_argument("--source", action="append", default=[], help="extra mirror source (URL or hf://...) after the bundled one")
    p.add_argument("--force", action="store_true", help="replace an entry of the same name")
    p.set_defaults(run=_add)
