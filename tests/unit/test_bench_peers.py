"""bench/detection/peers.py: the peers' backbone carries HLGFA's Lite0 weights under timm's names."""

import importlib.util

import pytest

from bench.detection.peers import check_lite0_logits, import_anomalib, lite0_timm_state_dict

if importlib.util.find_spec("anomalib") is None or importlib.util.find_spec("timm") is None:
    pytest.skip("the peers' bench extra is not installed (pip install -c constraints.txt -e '.[peers]')",
                allow_module_level=True)


def test_converted_lite0_weights_give_timm_the_reference_logits():
    import_anomalib()
    import timm
    import torch

    network = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    weights = lite0_timm_state_dict(network)
    assert len(weights) == len(network.state_dict()) == 296
    network.load_state_dict(weights)
    assert check_lite0_logits(network) < 1e-4
    # The check can fail: one permuted tensor moves the logits far beyond its tolerance.
    with torch.no_grad():
        network.blocks[3][0].conv_pwl.weight.copy_(network.blocks[3][0].conv_pwl.weight.flip(0))
    with pytest.raises(ValueError, match="logits differ"):
        check_lite0_logits(network)
