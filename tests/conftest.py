pytest_plugins = ["servers.fixtures"]

import os  # noqa: E402

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` run only with ``SDS_SLOW=1`` (benchmark smoke runs, 10M-row checks)."""
    if os.environ.get("SDS_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with SDS_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


os.environ.setdefault(
    "SDS_CACHE_DIR", os.path.join(os.environ.get("TMPDIR", "/tmp"), "sds-test-cache")
)


@pytest.fixture(scope="session")
def video_index(tmp_path_factory):
    """A small real dataset: 12 H.264 clips of 1 s (mixed sizes and frame rates) + index.parquet."""
    from sdsnodes._synthetic import make_video_dataset

    return str(make_video_dataset(tmp_path_factory.mktemp("videos"), num_videos=12, seconds=1.0))


@pytest.fixture(scope="session")
def image_index(tmp_path_factory):
    """24 small JPEG/PNG/WebP images + index.parquet with captions."""
    from sdsnodes._synthetic import make_image_dataset

    return str(make_image_dataset(tmp_path_factory.mktemp("images"), num_images=24))
