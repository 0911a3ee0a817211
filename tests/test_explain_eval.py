"""Patch affinity, explanation evaluation (perturbation, segmentation test, gtsegs .mat loader), pictures, CLI."""
from __future__ import annotations

import os

import cv2
import h5py
import numpy as np
import pytest
import torch

from vim_wsss.explain import patch_affinity
from vim_wsss.explain.evaluation import (
    ImagenetSegmentation, SegmentationMeter, average_precision, black_fill, perturb, perturbation_test,
    segmentation_test,
)
from vim_wsss.explain.implicit_attention import mamba_attention
from vim_wsss.explain.visualize import (
    attention_matrices_grid, attention_matrix_image, denormalize, overlay_grid, overlay_heatmap, save_png,
)
from vim_wsss.models import create_model


@pytest.fixture(scope='module')
def vim():
    torch.manual_seed(0)
    return create_model('vim_test_patch8_64', num_classes=4).eval()


@pytest.fixture(scope='module')
def deit():
    torch.manual_seed(1)
    return create_model('deit_test_patch8_64', num_classes=4).eval()


def images(n, seed):
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------------------
# affinity
# ----------------------------------------------------------------------------------------------------------------
def test_patch_affinity_vim_matches_full_matrices(vim):
    x = images(2, seed=1)
    aff = patch_affinity(vim, x, layers=[0, -1], channel_chunk=7)
    assert aff.shape == (2, 64, 64)
    with torch.no_grad():
        out = vim.forward_explain(x)
    keep = [i for i in range(65) if i != vim.cls_index]
    ref = 0
    for layer in (0, 1):
        H = mamba_attention(None, None, internals=out['internals'][layer])  # (B, E, L, L)
        ref = ref + H.clamp(min=0).mean(1)[:, keep][:, :, keep] / 2
    torch.testing.assert_close(aff, ref, rtol=1e-5, atol=1e-7)
    default = patch_affinity(vim, x)  # last third of 2 blocks = block 1
    H = mamba_attention(None, None, internals=out['internals'][1])
    torch.testing.assert_close(default, H.clamp(min=0).mean(1)[:, keep][:, :, keep], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(patch_affinity(vim, x, mode='abs'), H.abs().mean(1)[:, keep][:, :, keep],
                               rtol=1e-5, atol=1e-7)


def test_patch_affinity_deit(deit):
    x = images(2, seed=2)
    aff = patch_affinity(deit, x, layers=[0, 1])
    with torch.no_grad():
        attn = deit.forward_explain(x)['attn']
    ref = sum(a.mean(1)[:, 1:, 1:] for a in attn) / 2
    torch.testing.assert_close(aff, ref)
    with pytest.raises(ValueError, match='out of range'):
        patch_affinity(deit, x, layers=[5])


# ----------------------------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------------------------
def brute_force_ap(scores, targets):
    """AP = sum over distinct thresholds (descending) of (recall gain) * precision at that threshold."""
    ap, prev_recall = 0.0, 0.0
    for thr in sorted(set(scores.tolist()), reverse=True):
        pred = scores >= thr
        tp = float((pred & targets).sum())
        precision = tp / pred.sum()
        recall = tp / targets.sum()
        ap += (recall - prev_recall) * precision
        prev_recall = recall
    return ap


def test_average_precision():
    rng = np.random.default_rng(0)
    for _ in range(5):
        scores = rng.integers(0, 6, 40) / 5.0  # many ties
        targets = rng.random(40) > 0.6
        assert average_precision(scores, targets) == pytest.approx(brute_force_ap(scores, targets))
    assert average_precision(np.array([0.9, 0.8, 0.1]), np.array([1, 1, 0])) == pytest.approx(1.0)
    assert average_precision(np.array([0.1, 0.8, 0.9]), np.array([1, 0, 0])) == pytest.approx(1 / 3)
    assert average_precision(np.array([0.1, 0.2]), np.array([0, 0])) == 0.0


def test_segmentation_meter_by_hand():
    res = torch.tensor([[0.9, 0.8], [0.1, 0.0]])  # mean 0.45 -> top row foreground
    fg = torch.tensor([[True, False], [False, False]])
    meter = SegmentationMeter()
    meter.update(res, fg)
    out = meter.result()
    assert out['pixel_accuracy'] == pytest.approx(3 / 4)
    assert out['iou_fg'] == pytest.approx(1 / 2) and out['iou_bg'] == pytest.approx(2 / 3)
    assert out['miou'] == pytest.approx((1 / 2 + 2 / 3) / 2)
    scores = np.r_[1 - res.flatten().numpy(), res.flatten().numpy()]
    targets = np.r_[~fg.flatten().numpy(), fg.flatten().numpy()]
    assert out['map'] == pytest.approx(brute_force_ap(scores, targets))
    meter.update(res, fg, valid=torch.tensor([[True, True], [False, False]]))  # ignored pixels leave counts
    assert meter.labeled == 6 and meter.correct == 4


def test_segmentation_test_end_to_end(vim):
    x = images(3, seed=4)
    masks = torch.zeros(3, 64, 64, dtype=torch.long)
    masks[:, 16:48, 16:48] = 1
    masks[1, 20:30, 20:30] = 3
    masks[2, :4] = 255
    loader = [(x[:2], masks[:2]), {'img': x[2:], 'mask': masks[2:]}]
    for targets in ('pred', 'mask_classes'):
        out = segmentation_test(vim, loader, 'ours', targets=targets)
        assert 0 <= out['pixel_accuracy'] <= 1 and 0 <= out['miou'] <= 1 and 0 <= out['map'] <= 1
        assert out['num_samples'] == (3 if targets == 'pred' else 4)


def test_perturb_and_perturbation_test(vim, deit):
    x = images(2, seed=6)
    maps = torch.rand(2, 64, 64, generator=torch.Generator().manual_seed(0))
    out = perturb(x, maps, 0.25, positive=True)
    dropped = (out != x).any(dim=1)
    assert int(dropped[0].sum()) == 1024
    assert maps[0][dropped[0]].min() >= maps[0][~dropped[0]].max()
    neg = (perturb(x, maps, 0.25, positive=False) != x).any(dim=1)
    assert maps[0][neg[0]].max() <= maps[0][~neg[0]].min()
    torch.testing.assert_close(out[0][:, dropped[0]], black_fill(x.device)[0, :, :, 0].expand(-1, 1024))
    torch.testing.assert_close(perturb(x, maps, 0.0, True), x)

    labels = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 0]], dtype=torch.float32)
    for model, method in ((vim, 'ours'), (deit, 'transformer_attr')):
        res = perturbation_test(model, [(x, labels)], method, fractions=(0.1, 0.5, 0.9))
        assert res['num_samples'] == 3
        for key in ('positive', 'negative'):
            acc = np.asarray(res[key]['accuracy'])
            assert acc.shape == (3,) and ((acc >= 0) & (acc <= 100)).all()
            assert res[key]['auc'] == pytest.approx(np.trapezoid(acc, [0.1, 0.5, 0.9]))
    top1 = perturbation_test(vim, [(x, torch.tensor([1, 2]))], 'rollout', targets='labels', criterion='top1')
    assert top1['num_samples'] == 2


# ----------------------------------------------------------------------------------------------------------------
# gtsegs_ijcv.mat loader
# ----------------------------------------------------------------------------------------------------------------
def write_tiny_mat(path, images_hw3, masks_hw):
    """Same layout as gtsegs_ijcv.mat: /value/img and /value/gt hold (n, 1) object references; an image is stored
    (3, W, H); a gt reference points to a (1, 1) reference to the (W, H) mask."""
    ref_dtype = h5py.special_dtype(ref=h5py.Reference)
    with h5py.File(path, 'w') as f:
        refs = f.create_group('#refs#')
        img_refs = f.create_dataset('value/img', (len(images_hw3), 1), dtype=ref_dtype)
        gt_refs = f.create_dataset('value/gt', (len(masks_hw), 1), dtype=ref_dtype)
        for i, (img, mask) in enumerate(zip(images_hw3, masks_hw)):
            img_ds = refs.create_dataset(f'img{i}', data=img.transpose(2, 1, 0))
            mask_ds = refs.create_dataset(f'mask{i}', data=mask.transpose(1, 0))
            inner = refs.create_dataset(f'gtcell{i}', (1, 1), dtype=ref_dtype)
            inner[0, 0] = mask_ds.ref
            img_refs[i, 0] = img_ds.ref
            gt_refs[i, 0] = inner.ref


def test_imagenet_segmentation_loader(tmp_path):
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), rng.integers(0, 256, (50, 20, 3), dtype=np.uint8)]
    masks = [np.zeros((30, 40), np.uint8), np.zeros((50, 20), np.uint8)]
    masks[0][5:20, 10:30] = 1
    masks[1][:25] = 1
    path = str(tmp_path / 'gtsegs_tiny.mat')
    write_tiny_mat(path, imgs, masks)
    ds = ImagenetSegmentation(path, size=32)
    assert len(ds) == 2
    raw_img, raw_mask = ds.read_raw(1)
    assert np.array_equal(raw_img, imgs[1]) and np.array_equal(raw_mask, masks[1])
    image, mask = ds[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert mask.shape == (32, 32) and mask.dtype == torch.int64 and set(mask.unique().tolist()) == {0, 1}
    np.testing.assert_allclose(denormalize(image).astype(int),
                               np.asarray(__import__('PIL.Image', fromlist=['Image']).fromarray(imgs[0])
                                          .resize((32, 32), 2)).astype(int), atol=1)
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    batch = next(iter(loader))
    assert batch[0].shape == (2, 3, 32, 32)


def test_imagenet_segmentation_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='gtsegs_ijcv.mat'):
        ImagenetSegmentation(str(tmp_path / 'missing.mat'))
    bad = tmp_path / 'bad.mat'
    with h5py.File(bad, 'w') as f:
        f.create_dataset('other', data=np.zeros(3))
    with pytest.raises(ValueError, match='/value/img'):
        ImagenetSegmentation(str(bad))
    text = tmp_path / 'text.mat'
    text.write_text('not hdf5')
    with pytest.raises(ValueError, match='HDF5'):
        ImagenetSegmentation(str(text))


# ----------------------------------------------------------------------------------------------------------------
# pictures and CLI
# ----------------------------------------------------------------------------------------------------------------
def test_overlays_and_matrix_images(tmp_path):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    rel = torch.zeros(6, 8)
    rel[2, 3] = 1.0
    over = overlay_heatmap(image, rel, alpha=0.4)
    assert over.shape == image.shape and over.dtype == np.uint8
    assert not np.array_equal(over, image)
    grid = overlay_grid([over, over, over], ncols=2, pad=3)
    assert grid.shape == (48 * 2 + 3, 64 * 2 + 3, 3)
    mat = torch.tensor([[-4.0, 0.0], [2.0, 1.0]])
    img = attention_matrix_image(mat, size=8)
    assert img.shape == (8, 8, 3)
    ref = cv2.cvtColor(cv2.applyColorMap(np.array([[255, 0], [128, 64]], np.uint8), cv2.COLORMAP_VIRIDIS),
                       cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(img[::4, ::4], ref)  # |H| min-max: 4 -> 1, 0 -> 0, 2 -> .5, 1 -> .25
    tiles = attention_matrices_grid(torch.randn(3, 5, 5), size=10, ncols=3)
    assert tiles.shape == (10, 3 * 10 + 2 * 4, 3)
    path = str(tmp_path / 'sub' / 'x.png')
    save_png(path, over)
    back = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(back, over)
    assert os.listdir(tmp_path / 'sub') == ['x.png']


def test_explain_command(tmp_path, vim, run_cli):
    rng = np.random.default_rng(2)
    paths = []
    for i in range(2):
        p = str(tmp_path / f'im{i}.png')
        cv2.imwrite(p, rng.integers(0, 256, (70, 90, 3), dtype=np.uint8))
        paths.append(p)
    ckpt = str(tmp_path / 'cls.pth')
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in vim.state_dict().items()}}, ckpt)
    out = str(tmp_path / 'out')
    result = run_cli('explain', '--model', 'vim_test_patch8_64', '--checkpoint', ckpt, '--topk', '2', '--out', out,
                     *paths)
    assert result.returncode == 0, result.stderr
    files = sorted(os.listdir(out))
    assert len(files) == 5 and 'grid_ours.png' in files
    overlays = [f for f in files if f.startswith('im')]
    assert len(overlays) == 4 and cv2.imread(os.path.join(out, overlays[0])).shape == (64, 64, 3)
    result = run_cli('explain', '--model', 'vim_test_patch8_64', '--checkpoint', ckpt, '--classes', '3', '--method',
                     'rollout', '--out', out, paths[0])
    assert result.returncode == 0, result.stderr
    assert os.path.isfile(os.path.join(out, 'im0_rollout_c3.png'))
    result = run_cli('explain', '--model', 'vim_test_patch8_64', '--checkpoint', ckpt, '--out', out,
                     str(tmp_path / 'nope.png'))
    assert result.returncode == 1 and 'Traceback' not in result.stderr
    assert f'image {tmp_path}/nope.png does not exist; check the path' in result.stderr, result.stderr
    (tmp_path / 'text.png').write_text('not an image')
    result = run_cli('explain', '--model', 'vim_test_patch8_64', '--checkpoint', ckpt, '--out', out,
                     str(tmp_path / 'text.png'))
    assert result.returncode == 1 and 'Traceback' not in result.stderr
    assert 'cannot decode image' in result.stderr and 'pass an image file' in result.stderr, result.stderr
    assert 'split' not in result.stderr
