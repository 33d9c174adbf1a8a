"""The DVC remote as production sets it: S3 on an S3-compatible store needs its endpoint."""

from __future__ import annotations

import configparser

from pipelines.dataset.versioning import DataVersioning


def test_an_s3_compatible_remote_is_written_with_its_endpoint(tmp_path):
    versions = DataVersioning(
        tmp_path, tmp_path / "data", "s3://cme-dvc/data", remote_endpoint="http://minio:9000"
    )
    with versions._repository():  # creates the DVC project and writes the remote
        pass
    config = configparser.ConfigParser()
    config.read(tmp_path / ".dvc" / "config.local")
    assert dict(config["'remote \"cme\"'"]) == {
        "url": "s3://cme-dvc/data",
        "endpointurl": "http://minio:9000",
    }


def test_without_an_endpoint_the_remote_is_the_url_alone(tmp_path):
    with DataVersioning(tmp_path, tmp_path / "data", "s3://bucket/cme")._repository():
        pass
    assert "endpointurl" not in (tmp_path / ".dvc" / "config.local").read_text()
