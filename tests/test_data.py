"""The reader, the split, normalization and augmentation, against the fixture tree's known pixels."""
import functools
import hashlib
import http.server
import os
import pickle
import tarfile
import threading

import numpy as np
import pytest
import torch

from cifar_ablate.augment import BatchAugment, random_crop, random_flip
from cifar_ablate.data import (CIFAR10DataModule, TensorBatches, channel_stats, download_cifar10,
                               read_batch, read_cifar10)
from cifar_ablate.errors import ConfigError, DataError
from conftest import PER_BATCH, TEST_IMAGES, fixture_images, write_cifar_tree


def datamodule(root, **kwargs):
    dm = CIFAR10DataModule(root=str(root), **{"val_size": 50, "batch_size": 32, **kwargs})
    dm.setup()
    return dm


def test_reader_returns_the_known_pixels_and_labels(cifar_root):
    arrays = read_cifar10(cifar_root)
    train_x, train_y = arrays["train"]
    assert train_x.shape == (5 * PER_BATCH, 3, 32, 32) and train_x.dtype == np.uint8
    expected, labels = fixture_images(PER_BATCH, 2 * PER_BATCH)  # data_batch_3
    assert np.array_equal(train_x[2 * PER_BATCH:3 * PER_BATCH].reshape(PER_BATCH, 3072), expected)
    assert train_y[2 * PER_BATCH:3 * PER_BATCH].tolist() == labels
    assert arrays["test"][0].shape == (TEST_IMAGES, 3, 32, 32)


def test_reader_accepts_the_folder_itself_as_root(cifar_root):
    assert read_cifar10(cifar_root / "cifar-10-batches-py")["train"][0].shape[0] == 5 * PER_BATCH


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": Exploit(), "labels": []}))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(DataError, match="refused to load posix.system"):
            read_batch(path)
    finally:
        os.chdir(cwd)
    assert not marker.exists()


@pytest.mark.parametrize("corrupt, message", [
    (lambda b: b[: len(b) // 2], "not a readable CIFAR-10 batch"),
    (lambda b: b"garbage" * 10, "not a readable CIFAR-10 batch"),
    (lambda b: pickle.dumps({"data": np.zeros((4, 1024), np.uint8), "labels": [0] * 4}), r"shape \(N, 3072\)"),
    (lambda b: pickle.dumps({"data": np.zeros((4, 3072), np.float32), "labels": [0] * 4}), "must be uint8"),
    (lambda b: pickle.dumps({"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 2, 10]}), r"labels must lie in 0..9"),
    (lambda b: pickle.dumps({"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1]}), "2 labels for 4 images"),
    (lambda b: pickle.dumps([1, 2, 3]), "expected a dict"),
])
def test_bad_batch_files_give_a_clear_error(tmp_path, corrupt, message):
    folder = write_cifar_tree(tmp_path, per_batch=10, test_images=10)
    path = folder / "data_batch_2"
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(DataError, match=message) as e:
        read_cifar10(tmp_path)
    assert "data_batch_2" in str(e.value)


def test_missing_tree_says_how_to_get_one(tmp_path):
    with pytest.raises(DataError, match="no CIFAR-10 at .*set data.download=true"):
        read_cifar10(tmp_path / "nowhere")


@pytest.fixture
def archive_server(tmp_path):
    """The official archive's layout (cifar-10-batches-py/ at its top) served over HTTP on loopback;
    yields its URL and MD5."""
    served = tmp_path / "served"
    tree = write_cifar_tree(tmp_path / "src", per_batch=10, test_images=10)
    served.mkdir()
    archive = served / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname="cifar-10-batches-py")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/{archive.name}", hashlib.md5(archive.read_bytes()).hexdigest()
    server.shutdown()


def test_download_fetches_unpacks_and_checks_md5(tmp_path, archive_server):
    url, md5 = archive_server
    folder = download_cifar10(tmp_path / "root", url=url, md5=md5)
    assert folder == tmp_path / "root" / "cifar-10-batches-py"
    assert read_cifar10(tmp_path / "root")["train"][0].shape == (50, 3, 32, 32)


def test_download_with_wrong_md5_is_refused(tmp_path, archive_server):
    url, _ = archive_server
    with pytest.raises(DataError, match="MD5"):
        download_cifar10(tmp_path / "root", url=url, md5="0" * 32)
    assert not (tmp_path / "root" / "cifar-10-batches-py").exists()


def test_split_sizes_are_seeded_and_disjoint(cifar_root):
    a, b = datamodule(cifar_root, val_size=50), datamodule(cifar_root, val_size=50)
    assert len(a.splits["train"][0]) == 250 and len(a.splits["val"][0]) == 50
    assert torch.equal(a.splits["val"][0], b.splits["val"][0])
    other = datamodule(cifar_root, val_size=50, split_seed=1)
    assert not torch.equal(a.splits["val"][0], other.splits["val"][0])
    # Every fixture image is unique, so no image may sit in both splits.
    as_bytes = lambda x: {bytes(img.numpy()) for img in x}
    assert not as_bytes(a.splits["train"][0]) & as_bytes(a.splits["val"][0])


def test_val_size_zero_validates_on_the_test_set(cifar_root):
    dm = datamodule(cifar_root, val_size=0)
    assert len(dm.splits["train"][0]) == 300
    assert torch.equal(dm.splits["val"][0], dm.splits["test"][0])


def test_val_size_as_large_as_the_training_set_is_refused(cifar_root):
    with pytest.raises(ConfigError, match=r"data.val_size=300: must be in \[0, 300\)"):
        datamodule(cifar_root, val_size=300)


def test_train_fraction_keeps_that_share(cifar_root):
    assert len(datamodule(cifar_root, train_fraction=0.5).splits["train"][0]) == 125


def test_normalized_batches_have_the_stats_they_were_normalized_with(cifar_root):
    train_x = read_cifar10(cifar_root)["train"][0]
    mean, std = channel_stats(train_x)
    by_hand = train_x.astype(np.float64).transpose(1, 0, 2, 3).reshape(3, -1) / 255
    assert np.allclose(mean, by_hand.mean(1), atol=1e-4) and np.allclose(std, by_hand.std(1), atol=1e-4)
    dm = datamodule(cifar_root, val_size=0, mean=mean, std=std, batch_size=300)
    x, _ = next(iter(dm.train_dataloader()))
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-3)
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3)


def test_unnormalized_batches_are_on_the_unit_scale(cifar_root):
    x, _ = next(iter(datamodule(cifar_root, normalize=False).train_dataloader()))
    assert x.min() >= 0 and x.max() == 1.0


def test_crop_offsets_stay_within_the_padding():
    x = torch.arange(32.0).expand(512, 3, 32, 32).clone()  # pixel value = its column
    out = random_crop(x, 4, torch.Generator().manual_seed(0))
    # A shift of dx moves column j to j + dx - 4, or into the zero padding.
    shifts = set()
    for img in out:
        row = img[0, 16]
        nonzero = row[row > 0]
        shifts.add(int(nonzero[0] - row.nonzero()[0][0]))
    assert shifts <= set(range(-4, 5)) and len(shifts) == 9


def test_about_half_the_images_are_flipped():
    x = torch.arange(32.0).expand(2000, 1, 32, 32).clone()
    flipped = (random_flip(x, torch.Generator().manual_seed(0))[:, 0, 0, 0] == 31).float().mean()
    assert 0.45 < flipped < 0.55


@pytest.mark.parametrize("option", ["crop_flip", "flip_rotate_jitter"])
def test_augmentation_differs_per_image_and_repeats_with_the_seed(compose_config, option):
    cfg = compose_config([f"augment={option}"])
    augment = BatchAugment(**cfg.augment)
    same = torch.rand(1, 3, 32, 32).expand(64, 3, 32, 32).contiguous()  # one image, 64 times
    out = augment(same, torch.Generator().manual_seed(1))
    distinct = {tuple(img.flatten()[:400].tolist()) for img in out}
    assert len(distinct) > 32
    assert torch.equal(out, augment(same, torch.Generator().manual_seed(1)))
    assert out.min() >= 0 and out.max() <= 1


def test_training_batches_are_augmented_and_evaluation_batches_are_not(cifar_root):
    plain = datamodule(cifar_root, normalize=False)
    aug = datamodule(cifar_root, normalize=False, augment=BatchAugment(crop_padding=4, flip=True))
    for loader in ("val_dataloader", "test_dataloader"):
        for (x1, y1), (x2, y2) in zip(getattr(plain, loader)(), getattr(aug, loader)()):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)
    (x1, y1), (x2, y2) = next(iter(plain.train_dataloader())), next(iter(aug.train_dataloader()))
    assert torch.equal(y1, y2)  # same seeded order
    changed = (x1 != x2).flatten(1).any(1).float().mean()
    assert changed > 0.8


def test_same_seed_same_epoch_gives_the_same_batches_and_next_epoch_differs(cifar_root):
    images, labels = read_cifar10(cifar_root)["train"]
    images, labels = torch.from_numpy(images), torch.from_numpy(labels)
    def epoch_batches(seed, epoch):
        batches = TensorBatches(images, labels, 32, shuffle=True, seed=seed, mean=None, std=None,
                                augment=BatchAugment(crop_padding=4, flip=True), epoch=lambda: epoch)
        return [b for b in batches]
    first, again = epoch_batches(0, 0), epoch_batches(0, 0)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert not torch.equal(first[0][1], epoch_batches(0, 1)[0][1])
    assert not torch.equal(first[0][1], epoch_batches(1, 0)[0][1])
    assert sorted(torch.cat([y for _, y in first]).tolist()) == sorted(labels.tolist())


def test_torchvision_path_gives_the_same_batches_without_augmentation(cifar_root):
    tensor_path = datamodule(cifar_root, loader="tensor")
    torch_path = datamodule(cifar_root, loader="torch")
    for name in ("train_dataloader", "val_dataloader"):
        a, b = list(getattr(tensor_path, name)()), list(getattr(torch_path, name)())
        assert len(a) == len(b)
        for (xa, ya), (xb, yb) in zip(a, b):
            assert torch.equal(ya, yb)
            assert torch.allclose(xa, xb, atol=1e-6)


def test_torchvision_path_augments_the_same_with_any_number_of_workers_and_leaves_the_global_rng(cifar_root):
    """Each image's draws come from its own seed: workers or not, the same crops and flips, and dropout's RNG
    (the global one) is where it would be without the loader."""
    def epoch(num_workers):
        dm = datamodule(cifar_root, loader="torch", num_workers=num_workers,
                        augment=BatchAugment(crop_padding=4, flip=True))
        torch.manual_seed(123)
        batches = list(dm.train_dataloader())
        return batches, torch.get_rng_state()
    (in_process, rng_after), (in_workers, _) = epoch(0), epoch(2)
    assert len(in_process) == len(in_workers) == 8
    for (xa, ya), (xb, yb) in zip(in_process, in_workers):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)
    torch.manual_seed(123)
    assert torch.equal(rng_after, torch.get_rng_state())
    plain = list(datamodule(cifar_root, loader="torch").train_dataloader())
    assert not torch.equal(plain[0][0], in_process[0][0])  # it did augment


@pytest.mark.parametrize("loader", ["tensor", "torch"])
def test_a_loader_restored_mid_epoch_serves_the_rest_of_that_epoch_as_it_would_have(cifar_root, loader):
    """What a checkpoint saved after 3 batches holds lets a new loader continue with batch 4, same draws."""
    def train_batches():
        return datamodule(cifar_root, loader=loader, augment=BatchAugment(crop_padding=4, flip=True)).train_dataloader()
    whole = list(train_batches())
    interrupted = train_batches()
    served = iter(interrupted)
    for _ in range(3):
        next(served)
    state = interrupted.state_dict()
    assert state == {"epoch": 0, "batches": 3}
    resumed = train_batches()
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == len(whole) - 3
    for (xa, ya), (xb, yb) in zip(whole[3:], rest):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)
    assert resumed.state_dict() == {"epoch": 0, "batches": len(whole)}
    assert len(list(resumed)) == len(whole)  # the next pass is a whole epoch again


def test_the_stats_command_prints_override_form_and_says_how_to_fetch_missing_data(tmp_path, cifar_root, capsys):
    from conftest import run_cli

    from cifar_ablate.data import main
    ok = run_cli("stats", "--root", str(cifar_root), module="cifar_ablate.data", cwd=tmp_path)
    assert ok.returncode == 0 and ok.stdout.startswith("data.mean=[") and " data.std=[" in ok.stdout
    with pytest.raises(SystemExit) as missing:  # in-process: the command's own exit, without a second torch import
        main(["stats", "--root", "nowhere"])
    assert missing.value.code == 2 and capsys.readouterr().err.strip() == (
        "error: --root nowhere: no CIFAR-10 at nowhere/cifar-10-batches-py; fetch it with "
        "python -m cifar_ablate.data download --root nowhere")
