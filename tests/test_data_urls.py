"""``data.path`` as an object-store URL (``s3://``): read through fsspec with the SDK's own
credentials (environment), recorded as the URL and a content fingerprint (ETag, size).

The object store is moto's S3 server on a free loopback port (a real HTTP server speaking S3;
no mock of the code under test), started in this process for the module.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import dask
import numpy as np
import pandas as pd
import pytest
from _servers import free_port

from toolkit.config import DataConfig
from toolkit.data import load_dataset
from toolkit.errors import DataError

pytest.importorskip("s3fs", reason="s3:// data needs s3fs: pip install s3fs")
moto_server = pytest.importorskip("moto.server", reason='the S3 stand-in: pip install "moto[server]"')

SECRET = "s3-secret-" + "9f" * 8


@pytest.fixture(scope="module")
def s3() -> Iterator[object]:
    """A moto S3 server with bucket ``data``; the environment holds its endpoint and keys."""
    import boto3

    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    mp = pytest.MonkeyPatch()
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {"AWS_ACCESS_KEY_ID": "AKIATEST", "AWS_SECRET_ACCESS_KEY": SECRET,
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": endpoint}.items():
        mp.setenv(key, value)
    mp.delenv("AWS_PROFILE", raising=False)
    # Reads run in this process: the keys are in its environment only, and a session client of
    # another module (its worker processes started before them) would otherwise be dask's default.
    local = dask.config.set(scheduler="sync")
    try:
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket="data")
        with local:
            yield client
    finally:
        mp.undo()
        server.stop()


def _put_frame(client: object, key: str, frame: pd.DataFrame) -> None:
    buf = io.BytesIO()
    if key.endswith(".csv"):
        buf.write(frame.to_csv(index=False).encode())
    else:
        frame.to_parquet(buf, index=False)
    client.put_object(Bucket="data", Key=key, Body=buf.getvalue())  # type: ignore[attr-defined]


def test_s3_parquet_and_csv_are_read_and_fingerprinted_by_content(s3: object) -> None:
    rng = np.random.default_rng(0)
    a = pd.DataFrame(rng.normal(size=(40, 3)), columns=["a", "b", "c"])
    b = pd.DataFrame(rng.normal(size=(25, 3)), columns=["c", "a", "b"])  # other column order
    _put_frame(s3, "t/p1.parquet", a)
    _put_frame(s3, "t/p2.parquet", b)
    _put_frame(s3, "csv/one.csv", a)

    ds = load_dataset(DataConfig(source="file", path="s3://data/t/*.parquet"))
    assert ds.files == ["s3://data/t/p1.parquet", "s3://data/t/p2.parquet"]
    assert ds.source == "s3://data/t/*.parquet" and ds.feature_names == ["a", "b", "c"]
    want = np.vstack([a.to_numpy(), b[["a", "b", "c"]].to_numpy()]).astype(np.float32)
    assert np.array_equal(np.asarray(ds.X), want)
    # Out of core, each object is read by one pyarrow task through the URL's filesystem.
    ooc = load_dataset(DataConfig(source="file", path="s3://data/t/*.parquet", persist=False))
    assert next(iter(ooc.X.dask.layers)).startswith("parquet-block-") and ooc.X.chunks[0] == (40, 25)
    assert np.array_equal(np.asarray(ooc.X), want)
    first = ds.digest()
    # A "directory" prefix reads the same objects.
    assert load_dataset(DataConfig(source="file", path="s3://data/t/")).digest() != first  # source differs
    csv = load_dataset(DataConfig(source="file", path="s3://data/csv/one.csv"))
    assert np.allclose(np.asarray(csv.X), a.to_numpy().astype(np.float32))

    # The fingerprint follows the content (ETag), not the name: same key, new bytes -> new digest.
    _put_frame(s3, "t/p2.parquet", b * 2)
    assert load_dataset(DataConfig(source="file", path="s3://data/t/*.parquet")).digest() != first
    assert SECRET not in repr(ds) and SECRET not in ds.digest()


def test_a_missing_object_or_bucket_is_one_line(s3: object) -> None:
    with pytest.raises(DataError, match=r"does not exist") as exc:
        load_dataset(DataConfig(source="file", path="s3://data/nope.parquet"))
    assert "\n" not in str(exc.value)
    with pytest.raises(DataError, match=r"matches no file"):
        load_dataset(DataConfig(source="file", path="s3://data/none/*.csv"))
    with pytest.raises(DataError) as exc:
        load_dataset(DataConfig(source="file", path="s3://no-such-bucket/x.parquet"))
    assert "\n" not in str(exc.value) and SECRET not in str(exc.value)


def test_credentials_in_the_url_are_not_recorded(s3: object) -> None:
    with pytest.raises(DataError) as exc:
        load_dataset(DataConfig(source="file", path=f"https://u:{SECRET}@127.0.0.1:1/x.csv"))
    assert SECRET not in str(exc.value)
