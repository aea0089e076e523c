"""Image fetching (Label Studio paths, presign, tokens, SSRF guard, byte limit) and decoding (EXIF, modes,
pixel limit, corrupt files), against a real HTTP server on 127.0.0.1 that plays Label Studio."""

import base64
import gzip
import hashlib
import io
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

from backend.errors import (
    BadRequestError,
    ConfigurationError,
    ForbiddenURLError,
    PayloadTooLargeError,
    UpstreamError,
)
from backend.images import HostPolicy, ImageFetcher, decode_image
from backend.labelstudio.auth import jwt_payload
from backend.labelstudio.client import LabelStudioClient
from backend.settings import Secret, Settings
from tests.backend_support import (
    LEGACY_TOKEN,
    FakeLabelStudio,
    closed_port,
    exif_rotated_jpeg,
    fake_jwt,
    png_bytes,
)

PNG = png_bytes(333, 517)


@pytest.fixture
def ls():
    server = FakeLabelStudio(pat=fake_jwt({"token_type": "refresh", "exp": 4102444800}))
    yield server
    server.close()


def make_fetcher(ls_url, key=LEGACY_TOKEN, **overrides):
    settings = Settings(
        label_studio_url=ls_url, label_studio_api_key=Secret(key) if key else None, **overrides
    )
    return ImageFetcher(settings, LabelStudioClient(settings))


def make_client(ls_url, key=LEGACY_TOKEN):
    return LabelStudioClient(Settings(label_studio_url=ls_url, label_studio_api_key=Secret(key) if key else None))


def test_upload_with_legacy_token(ls):
    ls.add("/data/upload/3/abc-photo.png", PNG)
    fetched = make_fetcher(ls.url).fetch("/data/upload/3/abc-photo.png", 7)
    assert fetched.data == PNG and fetched.sha256 == hashlib.sha256(PNG).hexdigest()
    assert ls.requests[-1] == ("GET", "/data/upload/3/abc-photo.png", f"Token {LEGACY_TOKEN}")


def test_local_files_keep_their_query(ls):
    ls.add("/data/local-files/?d=imgs/1.png", PNG)
    assert make_fetcher(ls.url).fetch("/data/local-files/?d=imgs/1.png").data == PNG


def test_personal_access_token_is_exchanged_and_reused(ls):
    ls.add("/data/upload/1/a.png", PNG)
    fetcher = make_fetcher(ls.url, key=ls.pat)
    for _ in range(3):
        fetcher.fetch("/data/upload/1/a.png")
    refreshes = [r for r in ls.requests if r[1] == "/api/token/refresh/"]
    assert len(refreshes) == 1
    image_requests = [r for r in ls.requests if r[1] == "/data/upload/1/a.png"]
    assert all(r[2] == f"Bearer {ls.issued_access[0]}" for r in image_requests)
    assert all(ls.pat not in (r[2] or "") for r in ls.requests)  # the PAT itself is never a Bearer token


def test_access_token_is_refreshed_before_it_expires(ls):
    ls.access_lifetime_s = 10  # less than the refresh margin: every use needs a fresh one
    ls.add("/data/upload/1/a.png", PNG)
    fetcher = make_fetcher(ls.url, key=ls.pat)
    fetcher.fetch("/data/upload/1/a.png")
    fetcher.fetch("/data/upload/1/a.png")
    assert len(ls.issued_access) == 2


def test_a_rejected_access_token_is_replaced_once(ls):
    ls.add("/data/upload/1/a.png", PNG)
    fetcher = make_fetcher(ls.url, key=ls.pat)
    fetcher.fetch("/data/upload/1/a.png")
    ls.issued_access.clear()  # Label Studio forgot the token (e.g. restarted with a new key)
    assert fetcher.fetch("/data/upload/1/a.png").data == PNG
    assert len([r for r in ls.requests if r[1] == "/api/token/refresh/"]) == 2


def test_an_invalid_pat_is_a_clear_502(ls):
    fetcher = make_fetcher(ls.url, key=fake_jwt({"token_type": "refresh", "exp": 4102444800, "x": 1}))
    ls.add("/data/upload/1/a.png", PNG)
    with pytest.raises(UpstreamError, match="answered 401 to the token exchange"):
        fetcher.fetch("/data/upload/1/a.png")


def test_an_access_token_given_as_the_key_is_sent_as_bearer(ls):
    access = fake_jwt({"token_type": "access", "exp": 4102444800})
    ls.issued_access.append(access)
    ls.add("/data/upload/1/a.png", PNG)
    assert make_fetcher(ls.url, key=access).fetch("/data/upload/1/a.png").data == PNG
    assert not [r for r in ls.requests if r[1] == "/api/token/refresh/"]


def test_jwt_payload():
    assert jwt_payload(fake_jwt({"token_type": "refresh"})) == {"token_type": "refresh"}
    assert jwt_payload(LEGACY_TOKEN) is None
    assert jwt_payload("a.b.c") is None


def test_cloud_uri_goes_through_presign_and_its_redirect(ls):
    uri = "s3://bucket/dir/k.png"
    encoded = base64.urlsafe_b64encode(uri.encode()).decode()
    ls.add(f"/tasks/42/presign/?fileuri={encoded}", status=303, Location="/signed/k.png?X-Amz-Signature=abc")
    ls.add("/signed/k.png?X-Amz-Signature=abc", PNG, auth=False)
    assert make_fetcher(ls.url).fetch(uri, 42).data == PNG
    with pytest.raises(BadRequestError, match="needs the task id"):
        make_fetcher(ls.url).fetch(uri, None)


def test_redirects_are_limited(ls):
    ls.add("/data/upload/1/loop.png", status=302, Location="/data/upload/1/loop.png")
    with pytest.raises(UpstreamError, match="too many redirects"):
        make_fetcher(ls.url).fetch("/data/upload/1/loop.png")


def test_absolute_url_on_the_label_studio_host_gets_the_key(ls):
    ls.add("/data/upload/1/a.png", PNG)
    make_fetcher(ls.url).fetch(f"{ls.url}/data/upload/1/a.png")
    assert ls.requests[-1][2] == f"Token {LEGACY_TOKEN}"


def test_other_hosts_must_be_allowed(ls):
    ls.add("/img.png", PNG, auth=False)
    with pytest.raises(ForbiddenURLError, match="neither Label Studio's host"):
        make_fetcher(ls.url).fetch("http://images.example.org/img.png")


def test_allowed_hosts_that_resolve_to_private_addresses_are_refused(ls):
    port = ls.url.rsplit(":", 1)[1]
    ls.add("/img.png", PNG, auth=False)
    fetcher = make_fetcher(ls.url, allowed_hosts=("localhost",))
    with pytest.raises(ForbiddenURLError, match="non-public address 127.0.0.1"):
        fetcher.fetch(f"http://localhost:{port}/img.png")
    assert not [r for r in ls.requests if r[1] == "/img.png"]


def test_a_redirect_to_another_port_of_the_label_studio_host_is_refused(ls):
    other = closed_port()
    ls.add("/data/upload/1/hop.png", status=302, Location=f"http://127.0.0.1:{other}/admin")
    with pytest.raises(ForbiddenURLError, match="non-public address 127.0.0.1"):
        make_fetcher(ls.url).fetch("/data/upload/1/hop.png")


def test_presigned_redirect_to_a_private_host_is_refused(ls):
    port = ls.url.rsplit(":", 1)[1]
    ls.add("/data/upload/1/redirect.png", status=302, Location=f"http://localhost:{port}/internal")
    ls.add("/internal", PNG, auth=False)
    with pytest.raises(ForbiddenURLError, match="non-public address"):
        make_fetcher(ls.url).fetch("/data/upload/1/redirect.png")
    assert not [r for r in ls.requests if r[1] == "/internal"]


def test_dns_rebinding_is_caught_at_connect_time(ls, monkeypatch):
    """The host resolves to a public address when checked and to 127.0.0.1 when connecting."""
    port = int(ls.url.rsplit(":", 1)[1])
    ls.add("/img.png", PNG, auth=False)
    real = socket.getaddrinfo
    calls = []

    def rebinding(host, *args, **kwargs):
        if host != "rebind.example.org":
            return real(host, *args, **kwargs)
        calls.append(host)
        ip = "93.184.216.34" if len(calls) == 1 else "127.0.0.1"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    fetcher = make_fetcher(ls.url, allowed_hosts=("*.example.org",))
    with pytest.raises(ForbiddenURLError, match="non-public address 127.0.0.1"):
        fetcher.fetch(f"http://rebind.example.org:{port}/img.png")
    assert len(calls) == 2
    assert not [r for r in ls.requests if r[1] == "/img.png"]


def test_the_key_is_not_sent_to_a_redirect_target_on_another_host(ls, monkeypatch):
    port = int(ls.url.rsplit(":", 1)[1])
    real = socket.getaddrinfo

    def resolve(host, *args, **kwargs):
        if host == "cdn.example.org":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    # treat the CDN as public for this test: the address check is what keeps it from connecting otherwise
    monkeypatch.setattr(HostPolicy, "check_address", lambda self, host, port, ip: None)
    ls.add("/data/upload/1/a.png", status=302, Location=f"http://cdn.example.org:{port}/a.png")
    ls.add("/a.png", PNG, auth=False)
    assert make_fetcher(ls.url).fetch("/data/upload/1/a.png").data == PNG
    assert ls.requests[-2][2] == f"Token {LEGACY_TOKEN}"
    assert ls.requests[-1] == ("GET", "/a.png", None)


@pytest.mark.parametrize(
    "ip",
    [
        "10.1.2.3",
        "172.17.0.2",
        "192.168.1.1",
        "127.0.0.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "::1",
        "fe80::1",
        "fd00::1",
        "::ffff:127.0.0.1",
        "224.0.0.1",
    ],
)
def test_non_public_addresses_are_refused(ip):
    policy = HostPolicy("http://label-studio:8080", ("*",))
    with pytest.raises(ForbiddenURLError):
        policy.check_address("images.example.org", 80, ip)
    policy.check_address("label-studio", 8080, ip)  # Label Studio itself may live on a private network
    with pytest.raises(ForbiddenURLError):
        policy.check_address("label-studio", 22, ip)  # …but not another service on its host


def test_public_addresses_and_host_patterns():
    policy = HostPolicy("http://label-studio:8080", ("cdn.example.org", "*.img.example.com"))
    policy.check_address("cdn.example.org", 443, "93.184.216.34")
    policy.check_address("cdn.example.org", 443, "2606:2800:220:1::1")
    assert policy.is_allowed_host("cdn.example.org") and policy.is_allowed_host("a.img.example.com")
    assert not policy.is_allowed_host("evil.example.org") and not policy.is_allowed_host(
        "img.example.com.evil"
    )
    assert policy.is_label_studio("http://label-studio:8080/data/upload/1/a.png")
    assert not policy.is_label_studio("http://label-studio:9090/x") and not policy.is_label_studio(
        "https://label-studio:8080/x"
    )


@pytest.mark.parametrize(
    "uri", ["ftp://host/a.png", "file:///etc/passwd", "data:image/png;base64,AAAA", "img.png", "", 5, None]
)
def test_unsupported_uris_are_400(ls, uri):
    with pytest.raises(BadRequestError):
        make_fetcher(ls.url).fetch(uri)


def test_relative_uri_without_label_studio_url_names_the_setting():
    with pytest.raises(ConfigurationError, match="LABEL_STUDIO_URL is not set"):
        make_fetcher(None).fetch("/data/upload/1/a.png")


def test_upstream_errors_are_502_with_hints(ls):
    ls.add("/data/upload/1/secret.png", PNG)
    with pytest.raises(UpstreamError, match="answered 401 .* check LABEL_STUDIO_API_KEY") as info:
        make_fetcher(ls.url, key="wrong-key").fetch("/data/upload/1/secret.png")
    assert "wrong-key" not in str(info.value)
    with pytest.raises(UpstreamError, match="answered 404 .* file exists"):
        make_fetcher(ls.url).fetch("/data/upload/1/missing.png")
    ls.add("/data/upload/1/boom.png", status=500)
    with pytest.raises(UpstreamError, match="answered 500"):
        make_fetcher(ls.url).fetch("/data/upload/1/boom.png")


def test_unreachable_label_studio_is_502():
    port = closed_port()
    with pytest.raises(UpstreamError, match="could not download"):
        make_fetcher(f"http://127.0.0.1:{port}").fetch("/data/upload/1/a.png")


def test_byte_limit_from_the_header_and_while_streaming(ls):
    ls.add("/data/upload/1/declared.png", PNG)
    ls.add("/data/upload/1/streamed.png", PNG, declare_length=False)
    fetcher = make_fetcher(ls.url, max_image_bytes=1000)
    with pytest.raises(PayloadTooLargeError, match="limit is 1000"):
        fetcher.fetch("/data/upload/1/declared.png")
    with pytest.raises(PayloadTooLargeError, match="larger than 1000 bytes"):
        fetcher.fetch("/data/upload/1/streamed.png")
    assert make_fetcher(ls.url).fetch("/data/upload/1/streamed.png").data == PNG


# -- decoding ----------------------------------------------------------------------------------------------


def test_odd_sized_png():
    pixels = decode_image(PNG, 10**8)
    assert pixels.shape == (517, 333, 3) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels, np.asarray(Image.open(io.BytesIO(PNG)).convert("RGB")))


def test_exif_orientation_is_applied():
    pixels = decode_image(exif_rotated_jpeg(40, 30, orientation=6), 10**8)
    assert pixels.shape == (40, 30, 3)  # stored 40 wide × 30 high, shown 30 wide × 40 high
    assert pixels[5, 15, 0] > 200 and pixels[35, 15, 0] < 50  # the stored left half is now the top half


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "CMYK"])
def test_other_modes_become_rgb(mode):
    buffer = io.BytesIO()
    image = Image.fromarray(np.full((20, 30, 3), 128, np.uint8)).convert(mode)
    image.save(buffer, "TIFF" if mode == "CMYK" else "PNG")
    pixels = decode_image(buffer.getvalue(), 10**8)
    assert pixels.shape == (20, 30, 3) and pixels.dtype == np.uint8


def test_16_bit_grayscale_keeps_the_high_byte():
    buffer = io.BytesIO()
    Image.fromarray(np.full((10, 12), 0xABCD, np.uint16)).save(buffer, "PNG")
    pixels = decode_image(buffer.getvalue(), 10**8)
    assert pixels.shape == (10, 12, 3) and (pixels == 0xAB).all()


def test_pixel_limit_is_checked_before_decoding():
    buffer = io.BytesIO()
    Image.new("L", (4000, 3000)).save(buffer, "PNG")  # a few KB on disk, 12 MP decoded
    assert len(buffer.getvalue()) < 100_000
    with pytest.raises(PayloadTooLargeError, match="4000×3000 = 12000000 pixels; the limit is 1000000"):
        decode_image(buffer.getvalue(), 1_000_000)


@pytest.mark.parametrize(
    "data", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, PNG[: len(PNG) // 2]]
)
def test_corrupt_images_are_400(data):
    with pytest.raises(BadRequestError):
        decode_image(data, 10**8)


# -- review regressions: the SSRF guard and the key follow the URL requests actually sends ------------------


@pytest.fixture
def evil():
    """A second server that must never see a request (let alone Label Studio's key)."""
    server = FakeLabelStudio()
    server.add("/data/upload/1/a.png", PNG, auth=False)
    yield server
    server.close()


def _route_to_evil(monkeypatch, evil_server):
    """evil.example.org resolves to the second server, and is treated as public (see the rebinding tests)."""
    port = int(evil_server.url.rsplit(":", 1)[1])
    real = socket.getaddrinfo

    def resolve(host, *args, **kwargs):
        if host == "evil.example.org":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    monkeypatch.setattr(HostPolicy, "check_address", lambda self, host, port, ip: None)
    return port


@pytest.mark.parametrize(
    "template",
    [
        # urllib.parse reads Label Studio's host, urllib3 connects to evil.example.org
        "http://evil.example.org:{evil}\\@{ls}/data/upload/1/a.png",
        "http://evil.example.org:{evil}\\\\@{ls}/data/upload/1/a.png",
        "http://evil.example.org:{evil};@{ls}/data/upload/1/a.png",
        "http://evil.example.org:{evil}\t@{ls}/data/upload/1/a.png",
        "http://evil.example.org:{evil} @{ls}/data/upload/1/a.png",
        "http://user:secret@{ls}/data/upload/1/a.png",
        "http://{ls}@evil.example.org:{evil}/data/upload/1/a.png",
    ],
)
def test_odd_host_parts_are_refused_and_the_key_stays_home(ls, evil, monkeypatch, template):
    evil_port = _route_to_evil(monkeypatch, evil)
    ls.add("/data/upload/1/a.png", PNG)
    url = template.format(evil=evil_port, ls=ls.url.split("://", 1)[1])
    with pytest.raises(ForbiddenURLError, match="backslash, whitespace or user info") as info:
        make_fetcher(ls.url, allowed_hosts=("*",)).fetch(url)
    assert "secret" not in str(info.value)
    assert evil.requests == [] and ls.requests == []


def test_a_redirect_to_an_odd_host_part_is_refused(ls, evil, monkeypatch):
    evil_port = _route_to_evil(monkeypatch, evil)
    host = ls.url.split("://", 1)[1]
    ls.add("/data/upload/1/r.png", status=302, Location=f"http://evil.example.org:{evil_port}\\@{host}/x.png")
    with pytest.raises(ForbiddenURLError, match="backslash"):
        make_fetcher(ls.url).fetch("/data/upload/1/r.png")
    assert evil.requests == []
    assert [r[2] for r in ls.requests] == [f"Token {LEGACY_TOKEN}"]


def test_the_key_goes_only_where_requests_connects(ls, evil, monkeypatch):
    """An allowed host that looks like Label Studio to urllib.parse gets no key (decided on the sent URL)."""
    evil_port = _route_to_evil(monkeypatch, evil)
    evil.add("/data/upload/1/b.png", PNG, auth=False)
    fetcher = make_fetcher(ls.url, allowed_hosts=("evil.example.org",))
    assert fetcher.fetch(f"http://evil.example.org:{evil_port}/data/upload/1/b.png").data == PNG
    assert evil.requests == [("GET", "/data/upload/1/b.png", None)]


def test_the_policy_reads_hosts_as_urllib3_does():
    policy = HostPolicy("http://label-studio:8080", ())
    assert not policy.is_label_studio("http://evil.com\\@label-studio:8080/x.jpg")
    for url in (
        "http://evil.com\\@label-studio:8080/x.jpg",
        "http://a;@label-studio:8080/x",
        "http://u@label-studio:8080/",
    ):
        with pytest.raises(ForbiddenURLError, match="backslash, whitespace or user info"):
            policy.check_url(url, redirected_by_label_studio=False)
    assert policy.check_url("http://LABEL-studio:8080/a/../x.jpg", False) == "http://label-studio:8080/x.jpg"


@pytest.mark.parametrize(
    "uri",
    [
        "/api/projects/",
        "/api/current-user/token",
        "/data/upload/../../api/projects/",
        "/data/upload/%2e%2e/%2e%2e/api/projects/",
        "/data/upload%2F..%2F..%2Fapi/projects/",
        "/tasks/1/presign/../../api/projects/",
        "/tasks/x/presign/",
        "/user/login/",
        "{ls}/api/projects/",
    ],
)
def test_only_label_studio_image_paths_are_fetched_with_the_key(ls, uri):
    ls.add("/api/projects/", b"{}")
    with pytest.raises(ForbiddenURLError, match="images are read only from /data/upload/") as info:
        make_fetcher(ls.url).fetch(uri.format(ls=ls.url))
    assert info.value.status == 403
    assert ls.requests == []


def test_label_studio_image_paths_are_fetched(ls):
    fetcher = make_fetcher(ls.url)
    paths = ("/data/upload/2/x-a.png", "/data/local-files/?d=dir/a.png", "/storage-data/up/?filepath=a.png")
    for path in paths:
        ls.add(path, PNG)
        assert fetcher.fetch(path).data == PNG


def test_image_paths_under_a_label_studio_base_path(ls):
    ls.add("/ls/data/upload/1/a.png", PNG)
    ls.add("/api/x", PNG)
    fetcher = make_fetcher(ls.url + "/ls")
    assert fetcher.fetch("/data/upload/1/a.png").data == PNG
    with pytest.raises(ForbiddenURLError, match="images are read only"):
        fetcher.fetch(f"{ls.url}/api/x")


def test_an_allowed_host_cannot_redirect_to_a_label_studio_api_path(ls, evil, monkeypatch):
    evil_port = _route_to_evil(monkeypatch, evil)
    evil.add("/a.png", status=302, auth=False, Location=f"{ls.url}/api/projects/")
    ls.add("/api/projects/", b"{}")
    fetcher = make_fetcher(ls.url, allowed_hosts=("evil.example.org",))
    with pytest.raises(ForbiddenURLError, match="images are read only"):
        fetcher.fetch(f"http://evil.example.org:{evil_port}/a.png")
    assert ls.requests == []


def test_only_plain_uploads_are_immutable():
    client = make_client("http://label-studio:8080")
    plain = "/data/upload/3/abc-photo.png"
    assert client.immutable_source(plain) == "http://label-studio:8080" + plain
    a = client.immutable_source("/data/upload/../local-files/?d=a.jpg")
    b = client.immutable_source("/data/upload/../local-files/?d=b.jpg")
    assert a is None and b is None  # never one alias for two different files
    for uri in (
        "/data/upload/3/a.png?x=1",
        "/data/upload/3/a.png#f",
        "/data/upload/3/..",
        "/data/upload/3/%2e%2e",
        "/data/upload/3/%2E%2E",
        "/data/upload/3/a..png/../b.png",
        "/data/upload/x/a.png",
        "/data/upload/3/sub/a.png",
        "/data/upload/3/a\\..\\b.png",
        "/data/upload/3/a.png\n",
        " /data/upload/3/a.png",
        "/data/upload/3/",
        "/data/local-files/?d=a.jpg",
        "http://label-studio:8080/data/upload/3/a.png",
    ):
        assert client.immutable_source(uri) is None, uri
    assert make_client(None).immutable_source("/data/upload/3/a.png") is None


@pytest.mark.parametrize(
    "ip",
    [
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b:1::a00:1",  # local-use NAT64
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2002:a00:1::1",  # 6to4 of 10.0.0.1
        "::7f00:1",  # IPv4-compatible 127.0.0.1
        "::a9fe:a9fe",
        "::ffff:10.0.0.1",
    ],
)
def test_ipv6_addresses_embedding_a_private_ipv4_are_refused(ip):
    policy = HostPolicy("http://label-studio:8080", ("*",))
    with pytest.raises(ForbiddenURLError, match="non-public address"):
        policy.check_address("images.example.org", 80, ip)


def test_ipv6_addresses_embedding_a_public_ipv4_pass():
    policy = HostPolicy("http://label-studio:8080", ("*",))
    for ip in ("64:ff9b::5db8:d822", "2002:5db8:d822::1", "2606:2800:220:1::1"):
        policy.check_address("images.example.org", 80, ip)


@pytest.fixture
def trickling_server():
    """Answers 200 with a 100 kB Content-Length, then sends one byte every 50 ms (for 5 s at most)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
                end = time.monotonic() + 5
                try:
                    while time.monotonic() < end and not stop.is_set():
                        conn.sendall(b"x")
                        time.sleep(0.05)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(6)
    listener.close()


def test_a_trickling_host_hits_the_overall_deadline(trickling_server):
    fetcher = make_fetcher(trickling_server, fetch_timeout=0.5)  # each read gets a byte well within 0.5 s
    started = time.monotonic()
    with pytest.raises(UpstreamError, match=r"took longer than 1 s \(twice LITESAM_FETCH_TIMEOUT\)"):
        fetcher.fetch("/data/upload/1/slow.png")
    assert 0.9 < time.monotonic() - started < 3


def test_a_gzip_encoded_body_is_decoded_while_streaming(ls):
    ls.add("/data/upload/1/z.png", gzip.compress(PNG), **{"Content-Encoding": "gzip"})
    assert make_fetcher(ls.url).fetch("/data/upload/1/z.png").data == PNG
