"""The calibration report: PNG plots and one self-contained index.html (images embedded).

Matplotlib with the Agg backend, imported here only: the runtime never needs it.
"""

import base64
import html
import json
from pathlib import Path

import numpy as np

TOP_NORMALS = 6


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_histogram(path: Path, normal_scores, defect_scores, threshold: float, frr_threshold: float | None) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    pooled = np.concatenate([normal_scores, defect_scores if defect_scores is not None else []])
    bins = np.linspace(pooled.min(), pooled.max(), 50)
    ax.hist(normal_scores, bins=bins, alpha=0.6, label=f"normals (n={len(normal_scores)})", color="tab:blue")
    if defect_scores is not None:
        ax.hist(defect_scores, bins=bins, alpha=0.6, label=f"defects (n={len(defect_scores)})", color="tab:red")
    ax.axvline(threshold, color="k", linestyle="-", label=f"threshold {threshold:.4g}")
    if frr_threshold is not None and not np.isclose(frr_threshold, threshold):
        ax.axvline(frr_threshold, color="gray", linestyle="--", label=f"FRR-target threshold {frr_threshold:.4g}")
    ax.set_xlabel("image score (higher = more anomalous)")
    ax.set_ylabel("images")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def plot_roc(path: Path, normal_scores, defect_scores, threshold: float) -> float:
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    labels = np.concatenate([np.zeros(len(normal_scores)), np.ones(len(defect_scores))])
    scores = np.concatenate([normal_scores, defect_scores])
    fpr, tpr, _ = roc_curve(labels, scores)
    auc = float(roc_auc_score(labels, scores))
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(fpr, tpr, label=f"ROC (AUROC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="gray", linestyle=":")
    op_fpr = float(np.mean(np.asarray(normal_scores) > threshold))
    op_tpr = float(np.mean(np.asarray(defect_scores) > threshold))
    ax.plot([op_fpr], [op_tpr], "ko", label=f"operating point (FRR {op_fpr:.2%}, escape {1 - op_tpr:.2%})")
    ax.set_xlabel("false-reject rate (normals rejected)")
    ax.set_ylabel("defects caught")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return auc


def plot_overlays(path: Path, image_paths, scores, maps, region: dict | None) -> list[str]:
    """The highest-scoring normals: the model's input view with its heat map."""
    import cv2

    from edge.imaging.files import read_image
    from edge.imaging.preprocess import resize_rgb8

    plt = _pyplot()
    order = np.argsort(scores)[::-1][:TOP_NORMALS]
    fig, axes = plt.subplots(1, len(order), figsize=(3 * len(order), 3.3), squeeze=False)
    vmax = float(np.max(maps[order])) if len(order) else 1.0
    names = []
    for ax, index in zip(axes[0], order):
        image = resize_rgb8(read_image(image_paths[index]), maps.shape[1:])
        ax.imshow(image)
        ax.imshow(maps[index], cmap="jet", alpha=0.45, vmin=float(np.min(maps)), vmax=vmax)
        if region:
            mask = (maps[index] > region["pixel_threshold"]).astype(np.uint8)
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            for contour in contours:
                ax.plot(contour[:, 0, 0], contour[:, 0, 1], color="white", linewidth=0.8)
        ax.set_title(f"{Path(image_paths[index]).name}\nscore {scores[index]:.4g}", fontsize=8)
        ax.axis("off")
        names.append(str(image_paths[index]))
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return names


def _embed(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'


def _row(name: str, value) -> str:
    if isinstance(value, float):
        value = f"{value:.6g}"
    elif isinstance(value, (list, tuple)):
        value = ", ".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in value)
    return f"<tr><th>{html.escape(name)}</th><td>{html.escape(str(value))}</td></tr>"


def _quality_rows(thresholds: dict) -> list[str]:
    """The frame-quality gate: each statistic's range and the normals' extremes it was fitted on."""
    ranges, details = thresholds.get("quality"), thresholds["details"].get("quality")
    if not ranges:
        return [_row("frame-quality gate", "off (no ranges fitted)")]
    rows = [_row("frame-quality gate rule", details["rule"]),
            _row("frame-quality gate: calibration normals faulted", details["calibration_faults"])]
    for name, (low, high) in ranges.items():
        fitted = details["statistics"].get(name, {})
        rows.append(_row(f"frame quality: {name}", f"range [{low:.6g}, {high:.6g}]; normals "
                                                   f"{fitted.get('min', float('nan')):.6g} … "
                                                   f"{fitted.get('max', float('nan')):.6g}, "
                                                   f"median {fitted.get('median', float('nan')):.6g}"))
    if "defects" in details:
        summary = details["defects"]
        rows.append(_row("frame-quality gate: defect images faulted", f"{summary['faulted']}/{summary['n']}"))
    return rows


def write_report(folder: Path, thresholds: dict, normal, defect=None) -> Path:
    """Write hist.png, roc.png (with defects), top_normals.png and index.html into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    details = thresholds["details"]
    image = details["image"]
    policy = details["policy"]
    threshold = thresholds["image_threshold"]
    plots = []
    plot_histogram(folder / "hist.png", normal.scores, None if defect is None else defect.scores, threshold,
                   image["threshold"])
    plots.append(("Score histograms", folder / "hist.png"))
    auc = None
    if defect is not None:
        auc = plot_roc(folder / "roc.png", normal.scores, defect.scores, threshold)
        plots.append(("ROC", folder / "roc.png"))
    plot_overlays(folder / "top_normals.png", normal.paths, normal.scores, normal.maps, details["region"]
                  if thresholds.get("region") else None)
    plots.append((f"The {TOP_NORMALS} highest-scoring normals (white: region-rule pixels)",
                  folder / "top_normals.png"))
    rows = [_row("model hash", thresholds["model_hash"]), _row("version", thresholds["version"]),
            _row("engine sha256", thresholds.get("engine_sha256") or "-"),
            _row("policy", thresholds["policy"]), _row("image threshold", threshold),
            _row("normals", image["n_normals"]), _row("target FRR", image["target_frr"]),
            _row("confidence", image["confidence"]), _row("FRR-target method", image["method"]),
            _row("why", image["reason"]), _row("FRR-target threshold", image["threshold"]),
            _row("FRR point estimate", image["frr_point"]), _row("FRR interval", image["frr_ci"]),
            _row("FRR upper bound", image["frr_upper"]),
            _row("normals needed for the distribution-free bound", image["normals_needed"]),
            _row("chosen threshold: FRR on normals", policy["frr"]),
            _row("chosen threshold: FRR interval", policy["frr_ci"])]
    if defect is not None:
        rows += [_row("defects", len(defect.scores)), _row("AUROC", auc),
                 _row("escape rate", policy["escape_rate"]), _row("escape interval", policy["escape_ci"]),
                 _row("F1", policy["f1"])]
        rows += [_row(f"escape rate, {name}", f"{c['escapes']}/{c['n']} = {c['escape_rate']:.2%}")
                 for name, c in policy.get("escape_by_class", {}).items()]
    region = thresholds.get("region")
    if region:
        rows += [_row("region pixel threshold", region["pixel_threshold"]),
                 _row("region min area (px)", region["min_area_px"]),
                 _row("normals rejected by the region rule alone", details["region"]["calibration_rejects"])]
    else:
        rows.append(_row("region rule", details["region"].get("dropped", "none")))
    rows.append(_row("normals rejected by either rule", details["combined_calibration_rejects"]))
    rows += _quality_rows(thresholds)
    warn = "".join(f'<p class="warn">WARNING: {html.escape(w)}</p>' for w in details.get("warnings", []))
    figures = "".join(f"<h2>{html.escape(title)}</h2>{_embed(path)}" for title, path in plots)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>hlgfa calibration</title><style>"
            f"body{{font-family:sans-serif;margin:2em}}th{{text-align:left;padding-right:1em}}"
            f".warn{{color:#a00;font-weight:bold}}img{{max-width:100%}}</style></head><body>"
            f"<h1>hlgfa calibration report</h1>{warn}<table>{''.join(rows)}</table>{figures}"
            f"<h2>Thresholds file</h2><pre>{html.escape(json.dumps(thresholds, indent=2, sort_keys=True))}</pre>"
            f"</body></html>")
    (folder / "index.html").write_text(page)
    return folder / "index.html"
