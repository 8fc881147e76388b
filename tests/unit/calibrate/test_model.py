import numpy as np
import pytest

torch = pytest.importorskip("torch")

from calibrate.augment import add_point_noise, add_stripe_noise  # noqa: E402
from calibrate.model.backbones import build_backbone  # noqa: E402
from calibrate.model.gaussian import ERROR_SHRINKAGE, whitened_distance  # noqa: E402
from calibrate.model.hlgfa import HLGFA, HLGFAConfig  # noqa: E402
from calibrate.model.io import load_model  # noqa: E402
from calibrate.train import fit_position_statistics, to_batch, train  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return HLGFA(build_backbone("efficientnet-lite0", HLGFAConfig().strides), HLGFAConfig(input_size=128))


def test_forward_gives_one_map_and_one_score_per_image(model):
    maps, scores = model.eval()(torch.zeros(2, 3, 128, 128))
    assert maps.shape == (2, 128, 128) and maps.dtype == torch.float32
    assert scores.shape == (2,) and scores.dtype == torch.float32
    assert torch.isfinite(maps).all()


def test_backbone_is_frozen_and_stays_in_eval_mode(model):
    model.train()
    assert not model.backbone.training
    assert all(not p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.learned_parameters())


def test_a_training_step_changes_only_the_module(model):
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    module_before = [p.clone() for p in model.learned_parameters()]
    optimizer = torch.optim.Adam(model.learned_parameters(), lr=1e-2)
    hr, lr = model.features(torch.randn(2, 3, 128, 128))
    assert not any(f.requires_grad for f in hr + lr)
    refined, _ = model.align(hr, lr)
    loss = model.alignment_loss(refined, hr)
    loss.backward()
    optimizer.step()
    assert all(torch.equal(backbone_before[k], v) for k, v in model.backbone.state_dict().items())
    assert any(not torch.equal(a, b) for a, b in zip(module_before, model.learned_parameters()))


def test_untrained_module_is_the_identity_so_good_views_align():
    # FiLM and the residual branch start at zero: the refined LR features are the LR features.
    model = HLGFA(build_backbone("efficientnet-lite0", HLGFAConfig().strides), HLGFAConfig(input_size=128))
    hr, lr = model.features(torch.randn(1, 3, 128, 128))
    refined, _ = model.align(hr, lr)
    assert all(torch.allclose(r, l) for r, l in zip(refined, lr))


def test_point_noise_injects_sparse_specks(elpv_images):
    import cv2

    image = cv2.imread(str(elpv_images["good"][0]), cv2.IMREAD_GRAYSCALE)
    noisy = add_point_noise(image, np.random.default_rng(0), count_range=(20, 21))
    changed = noisy != image
    count, _ = cv2.connectedComponents(changed.astype(np.uint8))
    assert 0 < changed.mean() < 0.01  # sparse
    assert count - 1 >= 10  # many isolated specks (a few may touch)


def test_stripe_noise_injects_thin_elongated_lines(elpv_images):
    import cv2

    image = cv2.imread(str(elpv_images["good"][0]), cv2.IMREAD_GRAYSCALE)
    noisy = add_stripe_noise(image, np.random.default_rng(3), count_range=(1, 2))
    changed = (np.abs(noisy.astype(int) - image) > 10).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(changed)
    largest = stats[1:, cv2.CC_STAT_AREA].argmax() + 1
    width, height = stats[largest, cv2.CC_STAT_WIDTH], stats[largest, cv2.CC_STAT_HEIGHT]
    assert max(width, height) > 50  # long
    assert stats[largest, cv2.CC_STAT_AREA] < 0.2 * width * height + 4 * max(width, height)  # thin


def test_training_is_deterministic_for_a_seed(tmp_path, elpv_good_dir):
    first = train(elpv_good_dir, tmp_path / "a", epochs=1, image_size=64, seed=3, max_images=8, progress=False)
    second = train(elpv_good_dir, tmp_path / "b", epochs=1, image_size=64, seed=3, max_images=8, progress=False)
    assert first.model_hash == second.model_hash


def test_model_directory_round_trips(tiny_model_dir):
    model, info = load_model(tiny_model_dir)
    assert info.description["architecture"]["input_size"] == [128, 128]
    assert info.description["training"]["train_files"]
    with torch.no_grad():
        maps, scores = model(torch.zeros(1, 3, 128, 128))
    assert maps.shape == (1, 128, 128)


def test_whitened_distance_is_the_mahalanobis_norm_at_each_position():
    rng = np.random.default_rng(0)
    batch, channels, height, width = 3, 5, 2, 4
    error = rng.normal(size=(batch, channels, height, width))
    mean = rng.normal(size=(channels, height, width))
    factors = rng.normal(size=(height * width, channels, channels))
    precision = factors @ factors.transpose(0, 2, 1) + np.eye(channels)
    got = whitened_distance(*(torch.from_numpy(a).float() for a in (error, mean, precision))).numpy()
    for n in range(batch):
        for y in range(height):
            for x in range(width):
                v = error[n, :, y, x] - mean[:, y, x]
                assert np.isclose(got[n, y, x], np.sqrt(v @ precision[y * width + x] @ v), rtol=1e-4)


def shrunk_covariance_at(vectors: np.ndarray, row: int, column: int) -> np.ndarray:
    """N×C×h×w → the shrunk covariance of the vectors at one position."""
    covariance = np.cov(vectors[:, :, row, column], rowvar=False)
    return covariance + ERROR_SHRINKAGE * np.trace(covariance) / covariance.shape[0] * np.eye(covariance.shape[0])


def test_position_statistics_are_the_mean_and_shrunk_inverse_covariance_of_normal_vectors(elpv_images):
    from calibrate.dataset import read_image
    from edge.imaging.preprocess import PreprocessSpec, resize_rgb8

    config = HLGFAConfig(input_size=64, appearance_levels="per-level")
    model = HLGFA(build_backbone("efficientnet-lite0", config.strides), config).eval()
    spec = PreprocessSpec(64)
    images = np.stack([resize_rgb8(read_image(p), (64, 64)) for p in elpv_images["good"][:12]])
    fit_position_statistics(model, images, spec, batch_size=5)
    with torch.no_grad():
        hr, lr = model.features(to_batch(images, spec))
        refined, _ = model.align(hr, lr)
    for aligner, h, r in zip(model.aligners, hr, refined):
        # The alignment error (whitened discrepancy) and the HR features (appearance term).
        for kind, vectors_of_level in (("error", h - r), ("appearance", h)):
            vectors = vectors_of_level.double().numpy()  # N × C × h × w
            assert np.allclose(getattr(aligner, f"{kind}_mean").numpy(), vectors.mean(axis=0), atol=1e-4)
            position = 1 * vectors.shape[3] + 2  # one position: row 1, column 2
            precision = getattr(aligner, f"{kind}_precision")[position].numpy()
            assert np.allclose(precision, np.linalg.inv(shrunk_covariance_at(vectors, 1, 2)), rtol=1e-3, atol=1e-3), kind


def test_the_joint_appearance_term_is_one_gaussian_per_position_over_every_level_projected(elpv_images):
    # Both levels' HR features on the finer grid, projected onto the leading principal directions
    # of good parts' vectors: the Gaussian at a position is that of the projected vectors.
    import torch.nn.functional as F

    from calibrate.dataset import read_image
    from edge.imaging.preprocess import PreprocessSpec, resize_rgb8

    config = HLGFAConfig(input_size=64, appearance_levels="joint", appearance_channels=24)
    model = HLGFA(build_backbone("efficientnet-lite0", config.strides), config).eval()
    spec = PreprocessSpec(64)
    images = np.stack([resize_rgb8(read_image(p), (64, 64)) for p in elpv_images["good"][:40]])
    fit_position_statistics(model, images, spec, batch_size=16)
    holder = model.aligners[0]
    assert not hasattr(model.aligners[1], "appearance_mean")
    projection = holder.appearance_projection.double().numpy()
    assert projection.shape == (24, 40 + 112)
    assert np.allclose(projection @ projection.T, np.eye(24), atol=1e-5)  # orthonormal directions
    with torch.no_grad():
        hr, _ = model.features(to_batch(images, spec))
    joint = torch.cat([hr[0], F.interpolate(hr[1], size=hr[0].shape[-2:], mode="bilinear", align_corners=False)], 1)
    vectors = np.einsum("dc,nchw->ndhw", projection, joint.double().numpy())
    assert np.allclose(holder.appearance_mean.numpy(), vectors.mean(axis=0), atol=1e-4)
    precision = holder.appearance_precision[1 * vectors.shape[3] + 2].numpy()
    assert np.allclose(precision, np.linalg.inv(shrunk_covariance_at(vectors, 1, 2)), rtol=1e-3, atol=1e-3)
    # The leading directions carry more of the good vectors' variance than any other 24.
    pooled = joint.double().numpy().transpose(0, 2, 3, 1).reshape(-1, 40 + 112)
    pooled = pooled - pooled.mean(axis=0)
    kept = np.square(pooled @ projection.T).sum()
    rng = np.random.default_rng(0)
    random = np.linalg.qr(rng.standard_normal((40 + 112, 24)))[0].T
    assert kept > 1.5 * np.square(pooled @ random.T).sum()


def test_the_low_frequency_term_is_a_gaussian_per_cell_of_pooled_projected_vectors(elpv_images):
    import torch.nn.functional as F

    from calibrate.dataset import read_image
    from edge.core.errors import ConfigError
    from edge.imaging.preprocess import PreprocessSpec, resize_rgb8

    with pytest.raises(ConfigError, match="lowfreq_pool=3"):
        HLGFAConfig(input_size=64, lowfreq_pool=3)  # an 8×8 grid has no cells of 3
    with pytest.raises(ConfigError, match="needs appearance=true"):
        HLGFAConfig(input_size=64, lowfreq_pool=2, appearance_levels="per-level")
    config = HLGFAConfig(input_size=64, appearance_channels=16, lowfreq_pool=2)
    model = HLGFA(build_backbone("efficientnet-lite0", config.strides), config).eval()
    spec = PreprocessSpec(64)
    images = np.stack([resize_rgb8(read_image(p), (64, 64)) for p in elpv_images["good"][:30]])
    fit_position_statistics(model, images, spec, batch_size=16)
    holder = model.aligners[0]
    with torch.no_grad():
        hr, _ = model.features(to_batch(images, spec))
        projected = F.conv2d(model.appearance_vectors(hr)[0], holder.appearance_projection[:, :, None, None])
    cells = F.avg_pool2d(projected, 2).double().numpy()  # 30 × 16 × 4 × 4
    assert np.allclose(holder.lowfreq_mean.numpy(), cells.mean(axis=0), atol=1e-4)
    precision = holder.lowfreq_precision[1 * 4 + 2].numpy()
    assert np.allclose(precision, np.linalg.inv(shrunk_covariance_at(cells, 1, 2)), rtol=1e-3, atol=1e-3)
    with torch.no_grad():
        raw = model.raw_maps(to_batch(images[:2], spec))
    assert set(model.term_maps(raw, 0.0)) == {"alignment", "appearance", "lowfreq"}
    assert raw.lowfreq[0].shape == (2, 1, 64, 64)


def test_whitened_map_is_low_on_the_normals_it_was_fitted_on_and_high_on_defects(tiny_model_dir, elpv_images):
    from calibrate.dataset import read_image
    from edge.imaging.preprocess import preprocess

    model, info = load_model(tiny_model_dir)
    assert info.description["architecture"]["discrepancy"] == "whitened"
    trained = set(info.description["training"]["train_files"])
    good = [p for p in elpv_images["good"] if p.name in trained][:8]
    with torch.no_grad():
        _, good_scores = model(torch.from_numpy(preprocess([read_image(p) for p in good], info.preprocess)))
        _, defect_scores = model(torch.from_numpy(preprocess([read_image(p) for p in elpv_images["defect"][:8]],
                                                             info.preprocess)))
    assert float(defect_scores.median()) > float(good_scores.median())


@pytest.mark.parametrize("section, edit", [
    ("architecture", lambda table: table.pop("appearance")),
    ("architecture", lambda table: table.update(image_size=64)),
    ("fitted", lambda table: table.update(feature_mean=[0.0])),
])
def test_a_model_directory_of_another_layout_is_refused_with_the_fix(tmp_path, tiny_model_dir, section, edit):
    import json
    import shutil

    from edge.artifacts.model_dir import compute_model_hash
    from edge.core.errors import ModelFileError

    model_dir = tmp_path / "other"
    shutil.copytree(tiny_model_dir, model_dir)
    description = json.loads((model_dir / "model.json").read_text())
    edit(description[section])
    description["hash"] = compute_model_hash(description, model_dir / "module.pt")
    (model_dir / "model.json").write_text(json.dumps(description))
    with pytest.raises(ModelFileError, match=f"model.json {section}: written by another version of hlgfa .*"
                                             f"retrain with `hlgfa train`"):
        load_model(model_dir)


def test_an_unknown_discrepancy_is_refused_by_name(tmp_path, elpv_good_dir):
    from edge.core.errors import ConfigError

    with pytest.raises(ConfigError, match="discrepancy='mahalanobis': expected one of whitened, cosine"):
        train(elpv_good_dir, tmp_path / "bad", epochs=1, image_size=64, max_images=4, progress=False,
              config_overrides={"discrepancy": "mahalanobis"})


def test_uniform_frames_score_above_every_good_cell_the_model_was_fitted_on(tiny_model_dir, elpv_images):
    # A failed light, a lens cap, an empty fixture: nothing like a part. The appearance term sees
    # that the features are unlike a good part's at every position; the alignment term alone
    # would not (a blank frame looks the same at both resolutions).
    from calibrate.dataset import read_image
    from edge.imaging.preprocess import preprocess

    model, info = load_model(tiny_model_dir)
    trained = set(info.description["training"]["train_files"])
    good = [read_image(p) for p in elpv_images["good"] if p.name in trained]
    blank = [np.full((300, 300), level, np.uint8) for level in (0, 80, 128, 170, 255)] + [np.full((1, 1), 128, np.uint8)]
    with torch.no_grad():
        _, good_scores = model(torch.from_numpy(preprocess(good, info.preprocess)))
        _, blank_scores = model(torch.from_numpy(preprocess(blank, info.preprocess)))
    assert float(blank_scores.min()) > float(good_scores.max())


def test_the_fusion_puts_each_term_on_the_scale_of_its_good_quantiles(tiny_model_dir):
    model, _ = load_model(tiny_model_dir)
    assert set(model.fitted.fusion) == {"alignment", "appearance"}
    for low, high in model.fitted.fusion.values():
        assert 0 < low < high
    terms = {"alignment": torch.full((1, 1, 4, 4), model.fitted.fusion["alignment"][1]),
             "appearance": torch.full((1, 1, 4, 4), model.fitted.fusion["appearance"][0])}
    assert torch.allclose(model.fuse(terms), torch.ones(1, 1, 4, 4), atol=1e-4)


def test_training_chooses_smoothing_and_score_on_held_out_good_and_synthetic_images(tmp_path, elpv_images):
    import shutil

    from calibrate.train import SCORE_CHOICES, SMOOTHING_CHOICES, WEIGHT_CHOICES

    folder = tmp_path / "good"
    folder.mkdir()
    for path in elpv_images["good"][:56]:
        shutil.copy(path, folder / path.name)
    info = train(folder, tmp_path / "model", epochs=1, image_size=64, seed=0, progress=False)
    training = info.description["training"]
    assert len(training["validation_files"]) == 8
    assert not set(training["validation_files"]) & set(training["train_files"])
    chosen = training["validation"]["chosen"]
    architecture = info.description["architecture"]
    assert chosen["smoothing_sigma"] == architecture["smoothing_sigma"] in SMOOTHING_CHOICES
    assert chosen["score"] == architecture["score"] in {rule for rule, _ in SCORE_CHOICES}
    validation = training["validation"]
    trials = validation["trials"]
    # Two terms: every weight choice but the low-frequency term's, which this model does not have.
    weights = [w for w in WEIGHT_CHOICES if "lowfreq" not in w]
    assert len(trials) == len(SMOOTHING_CHOICES) * len(SCORE_CHOICES) * len(weights)
    best = max(trials, key=lambda t: (t["image_auroc"], t["pixel_auroc"]))
    default = next(t for t in trials if (t["smoothing_sigma"], t["score"]) == (4.0, "max") and not t["term_weights"])
    # The default stays unless the best is better beyond the paired interval of 8 + 32 images.
    low, high = validation["best_minus_default_interval95"]
    assert low <= high
    expected = best if low > 0 else default
    assert (expected["smoothing_sigma"], expected["score"], expected["term_weights"]) == \
        (chosen["smoothing_sigma"], chosen["score"], chosen["term_weights"])
    assert info.description["fitted"]["term_weights"] == chosen["term_weights"]


def test_the_paired_interval_excludes_zero_only_for_a_consistent_difference():
    from calibrate.train import paired_auroc_interval

    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(40), np.ones(160)]
    sources = np.r_[np.arange(40), np.arange(160) // 4]
    first = rng.normal(size=200) + labels
    better = first + 0.5 * labels  # every anomaly scores higher, no good image does
    low, high = paired_auroc_interval(labels, sources, first, better, seed=0)
    assert 0 < low <= high
    low, high = paired_auroc_interval(labels, sources, first, first + rng.normal(scale=0.01, size=200), seed=0)
    assert low <= 0 <= high


def test_a_term_weighs_in_the_fusion_by_its_chosen_weight(tiny_model_dir):
    model, _ = load_model(tiny_model_dir)
    (_, high_a), (_, high_b) = model.fitted.fusion["alignment"], model.fitted.fusion["appearance"]
    terms = {"alignment": torch.full((1, 1, 2, 2), high_a), "appearance": torch.full((1, 1, 2, 2), high_b)}
    model.fitted.term_weights = {"alignment": 0.5}
    assert torch.allclose(model.fuse(terms), torch.full((1, 1, 2, 2), 1.5), atol=1e-4)
    model.fitted.term_weights = {"alignment": 0.0}
    terms["alignment"] = torch.full((1, 1, 2, 2), float("nan"))  # a term at weight 0 is not even added
    assert torch.allclose(model.fuse(terms), torch.ones(1, 1, 2, 2), atol=1e-4)


def test_blind_spot_taps_stay_zero_through_training_with_the_denoising_target(tmp_path, elpv_good_dir):
    # The detail prior at a position must never see that position's own HR feature, however long
    # the module trains; the denoising target's copy index is logged for every epoch.
    info = train(elpv_good_dir, tmp_path / "blind", epochs=2, image_size=64, seed=0, max_images=12, progress=False,
                 denoise_fraction=0.5, config_overrides={"blind_spot": True})
    model, _ = load_model(info.directory)
    for aligner in model.aligners:
        weight = aligner.detail_align.weight
        assert torch.count_nonzero(weight[:, :, 1, 1]) == 0
        assert torch.count_nonzero(weight) == weight.numel() - weight.shape[0]  # every other tap trained
    training = info.description["training"]
    assert training["training_kinds"] == ["texture", "scar"]
    assert len(training["copy_index_history"]) == 2
    assert all(value is None or 0 <= value < 5 for value in training["copy_index_history"])
