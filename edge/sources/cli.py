"""`hlgfa camera list` and `hlgfa camera grab`: see what a GenTL producer offers, record frames.

A grab folder (PNG per frame + frames.jsonl) replays with the folder source (`folder:DIR`),
keeping the recorded frame ids and device timestamps.
"""

import json
import logging
from pathlib import Path

from edge.core.errors import ConfigError, SourceError

log = logging.getLogger(__name__)

# GenTL DEVICE_ACCESS_STATUS values.
ACCESS_STATUS = {0: "unknown", 1: "available (read/write)", 2: "read-only", 3: "no access", 4: "busy",
                 5: "open (read/write)", 6: "open (read-only)"}


def configure(camera) -> None:
    """The arguments and handler of `hlgfa camera` (edge/cli.py names the command and its one-line help)."""
    actions = camera.add_subparsers(dest="camera_command", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="GenTL producers, interfaces and devices")
    listing.add_argument("--cti", type=Path, help="GenTL producer (.cti); default GENICAM_GENTL64_PATH or viky.cti")
    listing.set_defaults(handler=list_devices)

    grab = actions.add_parser("grab", help="record N frames as PNGs + frames.jsonl")
    grab.add_argument("--cti", type=Path, help="GenTL producer (.cti); default GENICAM_GENTL64_PATH or viky.cti")
    grab.add_argument("--device", help="serial number, user-defined name or device id (default: first device)")
    grab.add_argument("--set", dest="settings", action="append", default=[], metavar="NODE=VALUE",
                      help="GenICam feature to set before acquiring (repeatable), e.g. AcquisitionFrameRate=30")
    grab.add_argument("--count", type=int, required=True, help="frames to record")
    grab.add_argument("--out", type=Path, required=True, help="folder to write (created; must not hold frames.jsonl)")
    grab.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for each frame")
    grab.set_defaults(handler=grab_frames)


def _parse_settings(pairs: list[str]) -> dict[str, str]:
    settings = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--set {pair!r}: expected NODE=VALUE")
        settings[name.strip()] = value.strip()
    return settings


def list_devices(args) -> int:
    from edge.sources.genicam import import_harvesters, device_summary, resolve_cti_files

    Harvester = import_harvesters()
    for cti in resolve_cti_files(args.cti):
        print(f"producer {cti}")
        harvester = Harvester()
        try:
            harvester.add_file(cti)
            harvester.update()
            interfaces: dict[str, list] = {}
            for info in harvester.device_info_list:
                interface = info.parent.module
                interfaces.setdefault(f"{interface.id_} ({interface.display_name})", []).append(info)
            if not interfaces:
                print("  no devices")
            for interface_name, infos in interfaces.items():
                print(f"  interface {interface_name}")
                for info in infos:
                    d = device_summary(info)
                    index = harvester.device_info_list.index(info)
                    status = ACCESS_STATUS.get(d["access_status"], d["access_status"])
                    print(f"    [{index}] vendor={d['vendor']!s} model={d['model']!s} serial={d['serial_number']!s} "
                          f"user_name={d['user_defined_name'] or '-'} id={d['id_']!s} access={status}")
        finally:
            harvester.reset()
    return 0


def grab_frames(args) -> int:
    import cv2

    from edge.sources.base import FrameError, SourceUnavailable
    from edge.sources.genicam import GenicamSource

    if args.count < 1:
        raise ConfigError(f"--count must be >= 1, got {args.count}")
    out: Path = args.out
    if (out / "frames.jsonl").exists():
        raise ConfigError(f"{out} already holds a recording (frames.jsonl); choose an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    source = GenicamSource(device=args.device, cti=args.cti, settings=_parse_settings(args.settings))
    source.open()
    written = 0
    failures = 0
    try:
        with open(out / "frames.jsonl", "w") as index:
            while written < args.count:
                try:
                    frame = source.read(args.timeout)
                except (FrameError, SourceUnavailable) as error:
                    failures += 1
                    log.warning("%s", error)
                    if failures > max(10, args.count):
                        raise SourceError(f"camera grab: gave up after {failures} failed reads: {error}") from error
                    continue
                name = f"frame_{frame.frame_id:08d}.png"
                image = frame.image if frame.image.ndim == 2 else cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR)
                if not cv2.imwrite(str(out / name), image):
                    raise SourceError(f"camera grab: could not write {out / name}")
                record = {
                    "frame_id": frame.frame_id,
                    "device_timestamp_ns": frame.device_timestamp_ns,
                    "receive_ns": frame.receive_ns,
                    "pixel_format": frame.pixel_format,
                    "source_pixel_format": frame.meta.get("source_pixel_format"),
                    "file": name,
                }
                index.write(json.dumps(record) + "\n")
                written += 1
    finally:
        stats = source.stats()
        source.close()
    print(f"wrote {written} frames to {out} ({json.dumps(stats)})")
    return 0
