"""S3 GETs by presigned URL through libcurl and aiohttp (``sdsnodes._s3_direct``), against moto and the
fault proxy in front of it: the same bytes, typed errors, retries, and s3fs where it must."""

from __future__ import annotations

import pytest
import s3fs

from sdsnodes import _curl, _s3_direct
from sdsnodes.storage import fetch_soon

DATA = bytes(range(256)) * 300  # 76,800 bytes: several chunks


def _fs(**options):
    return s3fs.S3FileSystem(
        endpoint_url="http://127.0.0.1:9", key="k", secret="s", skip_instance_cache=True, **options
    )


@pytest.mark.parametrize(
    ("options", "direct"),
    [
        ({}, True),
        ({"client_kwargs": {"region_name": "eu-west-1"}}, True),
        ({"requester_pays": True}, False),
        ({"version_aware": True}, False),
        ({"s3_additional_kwargs": {"SSECustomerAlgorithm": "AES256"}}, False),
        ({"client_kwargs": {"verify": False}}, False),
        ({"config_kwargs": {"proxies": {"https": "http://127.0.0.1:9"}}}, False),
    ],
)
def test_only_plain_filesystems_go_direct(options, direct):
    assert (_s3_direct.getter(_fs(**options)) is not None) is direct


@pytest.fixture(params=["curl", "aiohttp"])
def transport(request, monkeypatch):
    """Both senders of the presigned GET: libcurl (where pycurl imports) and aiohttp."""
    if request.param == "curl" and not _curl.AVAILABLE:
        pytest.skip("pycurl is not installed")
    monkeypatch.setattr(_s3_direct, "TRANSPORT", request.param)
    return request.param


def _get(url, dest, options, **kwargs):
    return fetch_soon(url, dest, storage_options=options, **kwargs).result(timeout=60)


@pytest.fixture
def s3_proxy(s3_server):
    from servers.proxy import FaultProxy

    with FaultProxy(s3_server.url, storage_options=s3_server.storage_options) as proxy:
        yield proxy


def _object(s3_server, s3_bucket, name="a.bin"):
    bucket = s3_bucket.removeprefix("s3://")
    s3_server.fs().pipe(f"{bucket}/{name}", DATA)
    return f"s3://{bucket}/{name}"


def test_same_bytes_as_s3fs_and_a_missing_object_is_file_not_found(
    s3_server, s3_bucket, tmp_path, transport
):
    url = _object(s3_server, s3_bucket)
    options = s3_server.storage_options
    assert _get(url, tmp_path / "direct", options) == len(DATA)
    assert _get(url, tmp_path / "s3fs", options, s3_direct=False) == len(DATA)
    assert (tmp_path / "direct").read_bytes() == (tmp_path / "s3fs").read_bytes() == DATA
    with pytest.raises(FileNotFoundError):
        _get(url + ".missing", tmp_path / "none", options, retries=0)


def test_an_object_stored_gzip_encoded_arrives_as_stored_like_s3fs(
    s3_server, s3_bucket, tmp_path, transport
):
    # S3 serves the bytes it stores with their Content-Encoding; s3fs (aiobotocore) asks for
    # `identity` and never decompresses, so the cached file must be the stored bytes here too
    import gzip

    bucket = s3_bucket.removeprefix("s3://")
    stored = gzip.compress(DATA)
    s3_server.fs().pipe(f"{bucket}/b.json.gz", stored, ContentEncoding="gzip")
    url, options = f"s3://{bucket}/b.json.gz", s3_server.storage_options
    assert _get(url, tmp_path / "direct", options, expected_size=len(stored)) == len(stored)
    assert _get(url, tmp_path / "s3fs", options, s3_direct=False) == len(stored)
    assert (tmp_path / "direct").read_bytes() == (tmp_path / "s3fs").read_bytes() == stored


def test_retries_a_503_and_a_short_body_on_the_direct_path(
    s3_server, s3_bucket, s3_proxy, tmp_path, transport
):
    url = _object(s3_server, s3_bucket)
    options = s3_proxy.storage_options
    assert _s3_direct.getter(s3fs.S3FileSystem(**options, skip_instance_cache=True)) is not None
    s3_proxy.faults(fail_next=1, status=503, retry_after=0)
    assert _get(url, tmp_path / "a", options, backoff_s=0.01) == len(DATA)
    s3_proxy.faults(short_next=1, after_bytes=100)
    assert _get(url, tmp_path / "b", options, backoff_s=0.01) == len(DATA)
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes() == DATA
    statuses = s3_proxy.stats(url)["statuses"]
    assert statuses.count(503) == 1 and s3_proxy.stats()["injected"] == 2


def test_a_refused_presigned_get_falls_back_to_s3fs_for_the_bucket(
    s3_server, s3_bucket, s3_proxy, tmp_path, transport
):
    """A 403 (say, a bucket policy that refuses query-string auth) is fetched again through
    s3fs at once, and the bucket goes through s3fs from then on."""
    url = _object(s3_server, s3_bucket)
    bucket = url.split("/")[2]
    options = s3_proxy.storage_options
    s3_proxy.faults(fail_next=1, status=403)
    try:
        assert _get(url, tmp_path / "a", options, retries=0) == len(DATA)
        assert bucket in _s3_direct._slow_buckets
        assert (tmp_path / "a").read_bytes() == DATA
        assert s3_proxy.stats(url)["statuses"].count(403) == 1
    finally:
        _s3_direct._slow_buckets.discard(bucket)


def test_a_proxy_in_the_environment_carries_the_presigned_get(
    s3_server, s3_bucket, s3_proxy, tmp_path, monkeypatch, transport
):
    """``HTTP_PROXY`` is honoured (the fault proxy serves as a forward proxy: it forwards the
    absolute URL's path to moto), and ``NO_PROXY`` naming the host bypasses it again."""
    url = _object(s3_server, s3_bucket)
    options = s3_server.storage_options  # the endpoint is moto itself, not the proxy
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.setenv("HTTP_PROXY", s3_proxy.url)
    monkeypatch.setattr(_s3_direct, "_proxies", {})
    assert _get(url, tmp_path / "a", options, retries=0) == len(DATA)
    assert (tmp_path / "a").read_bytes() == DATA
    assert s3_proxy.stats(url)["statuses"] == [200]
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setattr(_s3_direct, "_proxies", {})
    assert _get(url, tmp_path / "b", options, retries=0) == len(DATA)
    assert s3_proxy.stats(url)["statuses"] == [200]  # not through the proxy this time


def _same_second(make_ours, make_theirs, tries=5):
    """(ours, theirs) presigned within one second, so that their expiry times agree."""
    import time

    for _ in range(tries):
        start = int(time.time())
        theirs, ours, again = make_theirs(), make_ours(), make_theirs()
        if theirs == again and int(time.time()) == start:
            return ours, theirs
    pytest.fail("could not presign twice within one second")


@pytest.mark.parametrize(
    "options",
    [
        {},  # botocore's default for presigned S3 GETs (SigV2 query auth here)
        {"config_kwargs": {"signature_version": "s3v4"}},
        {
            "config_kwargs": {"signature_version": "s3v4", "s3": {"addressing_style": "path"}},
            "client_kwargs": {"region_name": "eu-west-1"},
        },
    ],
)
def test_the_bucket_signer_gives_the_clients_url_to_the_character(s3_server, s3_bucket, options):
    import fsspec.asyn

    fs = s3fs.S3FileSystem(**{**s3_server.storage_options, **options}, skip_instance_cache=True)
    bucket = s3_bucket.removeprefix("s3://")
    keys = ["first.jpg", "a b/ü~x+y=z&.jpg", "deep/er/path/%41.bin"]

    async def presign(key, ours):
        if ours:
            return await _s3_direct._presign(fs, bucket, key)
        client = await fs.set_session()
        return await client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=_s3_direct._EXPIRES_S
        )

    def run(key, ours):
        return fsspec.asyn.sync(fs.loop, presign, key, ours)

    run(keys[0], True)  # the client's URL, from which the signer is learnt
    client = fsspec.asyn.sync(fs.loop, fs.set_session)
    assert isinstance(_s3_direct._signers[client][bucket], _s3_direct._BucketSigner)
    for key in keys:
        ours, theirs = _same_second(lambda k=key: run(k, True), lambda k=key: run(k, False))
        assert ours == theirs
    if options:
        assert "X-Amz-Signature=" in ours  # SigV4 when asked for
    s3_server.fs().pipe(f"{bucket}/{keys[1]}", DATA)  # and moto serves it
    assert fs.cat(f"{bucket}/{keys[1]}") == DATA


def test_the_bucket_signer_signs_with_the_sessions_credentials(
    s3_server, s3_bucket, monkeypatch, tmp_path
):
    """No key in the storage options: the credentials come from the environment, through the
    session, as the client's do."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-env")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_SECURITY_TOKEN", raising=False)
    options = {k: v for k, v in s3_server.storage_options.items() if k not in ("key", "secret")}
    url = _object(s3_server, s3_bucket)
    assert _get(url, tmp_path / "a", options) == len(DATA)
    assert (tmp_path / "a").read_bytes() == DATA
    import fsspec.asyn

    fs = s3fs.S3FileSystem(**options, skip_instance_cache=True)
    bucket = url.split("/")[2]
    fsspec.asyn.sync(fs.loop, _s3_direct._presign, fs, bucket, "a.bin")  # the client's URL
    ours = fsspec.asyn.sync(fs.loop, _s3_direct._presign, fs, bucket, "a.bin")
    client = fsspec.asyn.sync(fs.loop, fs.set_session)
    assert isinstance(_s3_direct._signers[client][bucket], _s3_direct._BucketSigner)
    assert "AWSAccessKeyId=from-env" in ours


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/bucket/k.jpg",  # unsigned (anonymous access)
        "http://127.0.0.1:9/bucket/other.jpg?AWSAccessKeyId=a&Signature=s&Expires=1",  # moved
        "http://127.0.0.1:9/bucket/k.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=x",
        "http://127.0.0.1:9/bucket/k.jpg?Signature=s&Policy=p",  # a scheme it does not know
    ],
)
def test_no_bucket_signer_is_learnt_from_a_url_it_does_not_understand(url):
    """Then the client presigns every key, as before."""
    import asyncio

    assert asyncio.run(_s3_direct._BucketSigner.learn(_fs(), "k.jpg", url)) is None
