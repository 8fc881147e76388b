"""Where a recorded part's picture is: the folder or `hlgfa camera grab` recording each camera's
daemon replays, given per camera (`--frames CAMERA=DIR`). The wire carries no frame, so this is how
the view shows a part and how the review export copies it.

**The hash.** When a decision arrives, the recorder stores the SHA-256 of the file its frame id names
(`frame_sha256`); the view and the export serve or copy a file only while it still has that hash.
A replay folder rewritten or re-recorded after the fact (a file replaced, one added, which shifts
every later id) then shows as "changed", never as the wrong picture in `good/` or `defect/`. The
hash is taken here, on the record's side, and not by the daemon: hashing every frame's pixels costs
the daemon CPU on the hot path on every line (BENCHMARKS.md, "Operator's view"), while frames exist as
files only where a folder is replayed, which is exactly where the view can hash them. Files are
hashed once per (size, mtime): a looped replay costs one `stat` per decision.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from edge.core.errors import ConfigError
from edge.transport import wire


class FrameFolder:
    """The frames of one folder replay or recording, by frame id."""

    def __init__(self, path: str | Path):
        from edge.sources.folder import FolderSource

        source = FolderSource(path)
        source.open()
        self.path = Path(path)
        self.files = source.frame_files()
        self.span = max(self.files) + 1
        self._hashes: dict[Path, tuple[int, int, str]] = {}
        self._lock = threading.Lock()

    def find(self, frame_id: int) -> Path | None:
        # a looped replay shifts ids by one pass per loop
        return self.files.get(frame_id) or self.files.get(frame_id % self.span)

    def sha256(self, path: Path) -> str | None:
        try:
            stat = path.stat()
            with self._lock:
                cached = self._hashes.get(path)
            if cached is not None and cached[:2] == (stat.st_size, stat.st_mtime_ns):
                return cached[2]
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            return None
        with self._lock:
            self._hashes[path] = (stat.st_size, stat.st_mtime_ns, digest)
        return digest


class Frames:
    """Camera → its FrameFolder. `find` answers only for a file that still has the recorded hash."""

    def __init__(self, folders: dict[str, str | Path]):
        self.folders = {wire.check_camera(camera): FrameFolder(path) for camera, path in folders.items()}

    @staticmethod
    def parse(specs: list[str], what: str = "--frames") -> dict[str, Path]:
        """`CAMERA=DIR` strings (flags) → {camera: folder}."""
        out: dict[str, Path] = {}
        for spec in specs:
            camera, equals, folder = spec.partition("=")
            if not equals or not camera or not folder:
                raise ConfigError(f"{what} {spec!r}: expected CAMERA=DIR, e.g. line1=/srv/line1/recording (one per "
                                  "camera: each camera's frames are its own)")
            try:
                wire.check_camera(camera)
            except wire.WireError as error:
                raise ConfigError(f"{what} {spec!r}: {error}") from None
            if camera in out:
                raise ConfigError(f"{what}: camera {camera!r} given twice")
            out[camera] = Path(folder)
        return out

    def file(self, camera: str, frame_id: int) -> Path | None:
        folder = self.folders.get(camera)
        return None if folder is None else folder.find(frame_id)

    def sha256(self, camera: str, frame_id: int) -> str | None:
        """The hash of the file frame `frame_id` of `camera` names now (the recorder's, at decision time)."""
        path = self.file(camera, frame_id)
        return None if path is None else self.folders[camera].sha256(path)

    def find(self, camera: str, frame_id: int, sha256: str | None) -> tuple[Path | None, str]:
        """(the file, "") when it is there and still has the hash recorded with the decision; else
        (None, why)."""
        folder = self.folders.get(camera)
        if folder is None:
            return None, f"no frames folder for camera {camera!r} (give --frames {camera}=DIR)"
        path = folder.find(frame_id)
        if path is None:
            return None, f"frame {frame_id} of {camera}: no file for it in {folder.path}"
        if sha256 is None:
            return None, (f"frame {frame_id} of {camera}: no hash was recorded with the decision (the view had no "
                          f"--frames {camera}=DIR then), so {path.name} cannot be shown to be the frame judged")
        if folder.sha256(path) != sha256:
            return None, (f"frame {frame_id} of {camera}: {path} changed since the decision (its SHA-256 differs "
                          "from the one recorded): the folder was rewritten")
        return path, ""
