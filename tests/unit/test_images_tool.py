"""framescale.local.images: the pieces decided without an engine (mirror, wheel platforms,
engine settings, labels), and the operator's start-up check for a cluster."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

from framescale import kubeconfig
from framescale.local import images


def test_the_mirror_comes_from_deb822_sources(tmp_path: Path) -> None:
    (tmp_path / "debian.sources").write_text(
        "Types: deb\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\n"
        "URIs: http://mirror.example/debian\nSuites: bookworm\nComponents: main\n"
    )
    (tmp_path / "other.list").write_text("deb https://packages.example.com/apt cloud-sdk main\n")
    assert images.apt_mirror([tmp_path]) == "http://mirror.example/debian"


def test_the_mirror_comes_from_a_one_line_list_and_skips_other_repositories(tmp_path: Path) -> None:
    listing = tmp_path / "sources.list"
    listing.write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb https://deb.nodesource.com/node_20.x nodistro main\n"
        "deb [signed-by=/usr/share/keyrings/k.gpg] http://ftp.example.org/debian/ bookworm main\n"
    )
    assert images.apt_mirror([listing]) == "http://ftp.example.org/debian"


def test_without_sources_the_mirror_is_debians_own(tmp_path: Path) -> None:
    assert images.apt_mirror([tmp_path / "missing"]) == images.DEBIAN_MIRROR


def test_wheel_platforms_cover_every_older_glibc_and_no_newer() -> None:
    tags = images.pip_platforms("2.36", "x86_64")
    assert tags[0] == "manylinux_2_36_x86_64" and "manylinux_2_17_x86_64" in tags
    assert "manylinux2014_x86_64" in tags and "manylinux_2_37_x86_64" not in tags
    assert "manylinux_2_28_aarch64" in images.pip_platforms("2.31", "aarch64")


def test_containers_conf_uses_runc_and_never_exceeds_the_hosts_limits(tmp_path: Path) -> None:
    text = images.containers_conf(tmp_path).read_text()
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert 'runtime = "runc"' in text
    assert f'"nofile={nofile}:{nofile}"' in text
    nproc = int(text.split('"nproc=')[1].split(":")[0])
    assert nproc <= images.NPROC_CAP
    hard = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    assert hard == resource.RLIM_INFINITY or nproc <= hard


def test_labels_say_version_revision_and_source() -> None:
    labels = images.oci_labels()
    assert labels["VERSION"] == "0.1.0"
    assert labels["REVISION"] and labels["SOURCE"]


def test_an_unknown_image_is_refused_before_anything_runs() -> None:
    with pytest.raises(images.ImageError, match="unknown image nginx: choose from worker"):
        images.build(["nginx"])


def test_an_unknown_engine_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAMESCALE_IMAGE_ENGINE", "lxc")
    with pytest.raises(images.ImageError, match="use podman or docker"):
        images.find_engine(install=False)


def point_kubeconfig_at(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """KUBECONFIG as the kubernetes package reads it: once, when it is imported."""
    from kubernetes.config import kube_config

    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))


def test_no_cluster_is_named_in_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    point_kubeconfig_at(monkeypatch, tmp_path / "absent")
    problem = kubeconfig.missing_cluster()
    assert problem is not None and problem.startswith("no Kubernetes cluster configured")
    assert "KUBECONFIG" in problem


def test_a_kubeconfig_is_a_cluster(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text(
        '{"apiVersion": "v1", "kind": "Config", "current-context": "c",'
        ' "clusters": [{"name": "k", "cluster": {"server": "http://127.0.0.1:1"}}],'
        ' "users": [{"name": "u", "user": {"token": "t"}}],'
        ' "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}'
    )
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    point_kubeconfig_at(monkeypatch, path)
    assert kubeconfig.missing_cluster() is None


def test_the_context_key_follows_every_byte_mode_and_argument(tmp_path: Path) -> None:
    (tmp_path / "wheelhouse").mkdir()
    wheel = tmp_path / "wheelhouse" / "a.whl"
    wheel.write_bytes(b"one")
    first = images.context_key(tmp_path, ["build", "--build-arg", "REVISION=1"])
    assert images.context_key(tmp_path, ["build", "--build-arg", "REVISION=1"]) == first
    assert images.context_key(tmp_path, ["build", "--build-arg", "REVISION=2"]) != first
    wheel.write_bytes(b"two")
    second = images.context_key(tmp_path, ["build", "--build-arg", "REVISION=1"])
    assert second != first
    wheel.chmod(0o600)
    assert images.context_key(tmp_path, ["build", "--build-arg", "REVISION=1"]) != second
    wheel.rename(tmp_path / "wheelhouse" / "b.whl")
    assert images.context_key(tmp_path, ["build", "--build-arg", "REVISION=1"]) != second
