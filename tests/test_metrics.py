"""sparsr.metrics against analytic cases and a direct (slow) implementation."""

import math

import numpy as np
import pytest

from sparsr import metrics

Y_WEIGHT_SUM = (65.738 + 129.057 + 25.064) / 256.0


def _random_pair(seed, shape=(40, 52, 3), noise=6.0):
    rng = np.random.default_rng(seed)
    hr = rng.integers(0, 256, size=shape).astype(np.uint8)
    sr = np.clip(hr + rng.normal(0.0, noise, size=shape), 0, 255).round().astype(np.uint8)
    return sr, hr


def _slow_ssim_y(sr, hr, border):
    """Wang et al.'s ssim_index.m written out pixel by pixel with an explicit 2-D window."""
    def luma(img):
        img = img.astype(np.float64)
        return 16.0 + (65.738 * img[..., 0] + 129.057 * img[..., 1] + 25.064 * img[..., 2]) / 256.0

    a = luma(sr)[border:-border, border:-border]
    b = luma(hr)[border:-border, border:-border]
    coords = np.arange(11) - 5
    window = np.exp(-(coords[:, None] ** 2 + coords[None, :] ** 2) / (2 * 1.5 ** 2))
    window /= window.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for i in range(a.shape[0] - 10):
        for j in range(a.shape[1] - 10):
            pa, pb = a[i:i + 11, j:j + 11], b[i:i + 11, j:j + 11]
            mu_a, mu_b = (window * pa).sum(), (window * pb).sum()
            var_a = (window * pa * pa).sum() - mu_a ** 2
            var_b = (window * pb * pb).sum() - mu_b ** 2
            cov = (window * pa * pb).sum() - mu_a * mu_b
            values.append(((2 * mu_a * mu_b + c1) * (2 * cov + c2))
                          / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)))
    return float(np.mean(values))


def test_quantize_clamps_and_rounds_half_to_even():
    img = np.array([-3.0, 0.4, 0.5, 1.5, 2.5, 254.5, 254.6, 300.0], dtype=np.float32)
    out = metrics.quantize(img)
    assert out.dtype == np.uint8
    assert out.tolist() == [0, 0, 0, 2, 2, 254, 255, 255]


def test_psnr_of_identical_images_is_inf():
    _, hr = _random_pair(0)
    assert metrics.psnr_y(hr, hr.copy(), 2) == math.inf


def test_psnr_of_a_one_level_offset_is_analytic():
    hr = np.full((30, 34, 3), 100, dtype=np.uint8)
    sr = hr + 1
    expected = -20.0 * math.log10(Y_WEIGHT_SUM / 255.0)  # 49.4527 dB
    assert metrics.psnr_y(sr, hr, 2) == pytest.approx(expected, abs=1e-9)
    assert expected == pytest.approx(49.4527, abs=1e-4)


def test_psnr_weights_the_channels_by_bt601():
    hr = np.full((20, 20, 3), 50, dtype=np.uint8)
    sr = hr.copy()
    sr[..., 1] += 4  # only green differs
    expected = -20.0 * math.log10(4 * 129.057 / 256.0 / 255.0)
    assert metrics.psnr_y(sr, hr, 1) == pytest.approx(expected, abs=1e-9)


def test_psnr_ignores_the_border_of_scale_pixels():
    _, hr = _random_pair(1)
    sr = hr.copy()
    for scale in (2, 3, 4):
        damaged = sr.copy()
        damaged[:scale] = 255 - damaged[:scale]
        damaged[-scale:] = 0
        damaged[:, :scale] = 0
        damaged[:, -scale:] = 255
        assert metrics.psnr_y(damaged, hr, scale) == math.inf
        assert metrics.ssim_y(damaged, hr, scale) == pytest.approx(1.0, abs=1e-12)
        assert metrics.psnr_y(damaged, hr, scale - 1) < 30.0


def test_psnr_matches_a_direct_formula_on_the_cropped_interior():
    sr, hr = _random_pair(2)
    diff = (sr.astype(np.float64) - hr.astype(np.float64)) / 255.0
    y_diff = (65.738 * diff[..., 0] + 129.057 * diff[..., 1] + 25.064 * diff[..., 2]) / 256.0
    mse = np.mean(y_diff[3:-3, 3:-3] ** 2)
    assert metrics.psnr_y(sr, hr, 3) == pytest.approx(10.0 * math.log10(1.0 / mse), abs=1e-9)


def test_greyscale_hr_is_replicated_to_three_channels():
    rng = np.random.default_rng(3)
    grey_hr = rng.integers(0, 256, size=(36, 40)).astype(np.uint8)
    sr = np.repeat(grey_hr[:, :, None], 3, axis=2)
    sr[10, 10] += 3
    rgb_hr = np.repeat(grey_hr[:, :, None], 3, axis=2)
    assert metrics.psnr_y(sr, grey_hr, 2) == metrics.psnr_y(sr, rgb_hr, 2)
    assert metrics.psnr_y(sr, grey_hr[:, :, None], 2) == metrics.psnr_y(sr, rgb_hr, 2)
    assert metrics.ssim_y(sr, grey_hr, 2) == metrics.ssim_y(sr, rgb_hr, 2)
    # One pixel off by 3 grey levels in every channel: MSE is (3 * sum(w) / 255)^2 / N.
    pixels = (36 - 4) * (40 - 4)
    expected = -10.0 * math.log10((3 * Y_WEIGHT_SUM / 255.0) ** 2 / pixels)
    assert metrics.psnr_y(sr, grey_hr, 2) == pytest.approx(expected, abs=1e-9)


def test_hr_larger_than_sr_is_cropped_to_the_sr_size():
    sr, hr = _random_pair(4, shape=(40, 52, 3))
    bigger_hr = np.zeros((41, 53, 3), dtype=np.uint8)
    bigger_hr[:40, :52] = hr
    assert metrics.psnr_y(sr, bigger_hr, 2) == metrics.psnr_y(sr, hr, 2)
    assert metrics.ssim_y(sr, bigger_hr, 2) == metrics.ssim_y(sr, hr, 2)
    with pytest.raises(ValueError, match="larger than HR"):
        metrics.psnr_y(bigger_hr, sr, 2)


def test_ssim_of_identical_images_is_one():
    _, hr = _random_pair(5)
    assert metrics.ssim_y(hr, hr.copy(), 2) == pytest.approx(1.0, abs=1e-12)


def test_ssim_drops_as_the_image_degrades():
    _, hr = _random_pair(6, noise=0.0)
    slightly = _random_pair(6, noise=2.0)[0]
    badly = _random_pair(6, noise=20.0)[0]
    s_slight = metrics.ssim_y(slightly, hr, 2)
    s_bad = metrics.ssim_y(badly, hr, 2)
    assert 0.0 < s_bad < s_slight < 1.0


@pytest.mark.parametrize("seed,shape,border", [(7, (30, 27, 3), 2), (8, (25, 33, 3), 4), (9, (23, 21, 3), 1)])
def test_ssim_matches_a_direct_implementation(seed, shape, border):
    sr, hr = _random_pair(seed, shape=shape, noise=12.0)
    assert metrics.ssim_y(sr, hr, border) == pytest.approx(_slow_ssim_y(sr, hr, border), abs=1e-10)


def test_ssim_of_a_constant_offset_is_analytic():
    # Equal variances and zero covariance-change: SSIM = (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1).
    hr = np.full((30, 30, 3), 100, dtype=np.uint8)
    sr = hr + 10
    mu_a = 16.0 + 110 * Y_WEIGHT_SUM
    mu_b = 16.0 + 100 * Y_WEIGHT_SUM
    c1 = (0.01 * 255) ** 2
    expected = (2 * mu_a * mu_b + c1) / (mu_a ** 2 + mu_b ** 2 + c1)
    assert metrics.ssim_y(sr, hr, 2) == pytest.approx(expected, abs=1e-9)


def test_too_small_images_are_refused_with_a_clear_error():
    img = np.zeros((14, 14, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="SSIM window"):
        metrics.ssim_y(img, img, 2)
    with pytest.raises(ValueError, match="too small"):
        metrics.psnr_y(img, img, 7)
